"""Defaults and choices the command line shows, in a module that imports nothing heavy: the parser
(``--help``, ``--version``) is built without importing torch or onnx (benchmarks/cli_startup.py)."""
from __future__ import annotations

# ONNX export (exporter/export.py). The TorchScript-based exporter is the default: faster and,
# after simplification, graphs of the same size with the same parity over the zoo (docs/zoo.md).
EXPORTERS = ("torchscript", "dynamo")
SIMPLIFIERS = ("onnxsim", "onnxslim", "none")
DEFAULT_OPSET = 18
DEFAULT_EXPORTER = "torchscript"
DEFAULT_SIMPLIFIER = "onnxsim"

# INT8 weight rounding (exporter/quantize/gptq.py): nearest (the default), or the opt-in levers
WEIGHT_ROUNDING = ("nearest", "exact", "gptq")
# INT8 placements (exporter/quantize/placement.py) and calibration methods (.../calibration.py)
INT8_TARGETS = ("tensorrt", "cpu")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "mse")

# parity inputs (exporter/parity/inputs.py) and latency (exporter/latency.py)
DEFAULT_SAMPLES = 16
DEFAULT_RANDOM = 8
DEFAULT_WARMUP = 5
DEFAULT_RUNS = 30
DEFAULT_ROUNDS = 3

# the request fields that define the eager model (recorded in the manifest, compared on re-use)
MODEL_OPTION_KEYS = ("model", "weights", "checkpoint", "seed", "input_size", "channels", "mean",
                     "std", "num_classes", "batch", "output_index", "output_name")
