"""LiteRT backend (format ``tflite``): ``litert_torch.convert`` -> ``<stem>.tflite``, run by
ai-edge-litert's ``Interpreter`` with a fixed thread count (its default XNNPACK delegate on CPU).

* Layout: the converter keeps the PyTorch signature, so the ``.tflite`` takes the same NCHW float
  input as every other artifact (it inserts the NHWC transposes inside the graph); no transpose
  in the runner. The manifest records ``layout: NCHW``.
* INT8: PT2E with litert-torch's ``PT2EQuantizer`` (symmetric, per-channel weights), calibrated
  on the export's calibration data and judged with the ONNX path's budget (``backends.pt2e``).
  The model's input and output are int8: the runner quantizes inputs with the model's own
  scale/zero-point and dequantizes the outputs.
* FP16: not offered (litert-torch converts float models to fp32; fp16 there is a weight-storage
  option the CPU runs in fp32): a PrecisionError, never a silent FP32 file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExporterError, PrecisionError
from . import pt2e
from ..console import native_log_hidden
from .base import converter_output_hidden
from .registry import get, package_versions, require_module

FORMAT = "tflite"
RUNTIME = "LiteRT (litert-torch)"


def _backend():
    return get(FORMAT)


def export(ctx) -> list[dict[str, Any]]:
    """``<stem>.tflite`` (fp32) or ``<stem>.int8.tflite``."""
    from ..artifacts import artifact_entry

    if ctx.precision not in ("fp32", "int8"):
        raise PrecisionError(f"--format {FORMAT} does not produce {ctx.precision}: litert-torch "
                             "converts float models to fp32 (its fp16 is weight storage only)",
                             fix=f"use --precision fp32 or int8 with --format {FORMAT}, or "
                                 f"--format onnx/executorch for {ctx.precision}")
    with native_log_hidden():  # torch's _pytree deprecation warning as torchao registers its enums
        converter = require_module(_backend(), "litert_torch")
        require_module(_backend(), "ai_edge_litert.interpreter")
    example = pt2e.example_batch(ctx)
    batch = int(example.shape[0])
    suffix = "" if ctx.precision == "fp32" else f".{ctx.precision}"
    path = ctx.stage / f"{ctx.stem}{suffix}.tflite"
    details: dict[str, Any] = {"batch": batch, "layout": "NCHW (the converter transposes inside "
                               "the graph; the runner feeds NCHW as for every artifact)"}
    try:
        # its progress lines would break --json's one document; absl/XNNPACK log lines are noise
        with converter_output_hidden(), native_log_hidden():
            if ctx.precision == "int8":
                from litert_torch.quantize import pt2e_quantizer

                quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
                runner, quantized = pt2e.int8_within_budget(
                    ctx, FORMAT, quantizer,
                    lambda graph: _build_int8(converter, quantizer, graph, example, path),
                    fuse_clamps=False)  # measured: no gain here (pt2e)
            else:
                model = converter.convert(ctx.deploy.eval(), (example,))
                model.export(str(path))
                runner = LiteRTRunner(path, precision=ctx.precision)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - every converter failure becomes one typed error
        path.unlink(missing_ok=True)
        if isinstance(err, ExporterError):
            raise
        raise pt2e.conversion_error(RUNTIME, FORMAT, err) from err
    details.update(ops=runner.op_counts(), io_dtype=runner.io_dtype,
                   runtime_packages=package_versions("tflite"))
    entry = artifact_entry(path, FORMAT, ctx.precision, **details)
    if ctx.precision == "int8":
        entry["details"].update(
            quantizer="litert-torch PT2EQuantizer (torchao PT2E), symmetric int8, per-channel weights",
            **quantized)
    return [entry]


def _build_int8(converter, quantizer, graph, example, path: Path):
    """(runner, runner) of a converted PT2E graph written to ``path``: litert-torch converts the
    q/dq pairs around float weights (folded int8 weights are rejected by its converter:
    stablehlo.uniform_dequantize)."""
    import copy

    from litert_torch.quantize import quant_config

    graph = copy.deepcopy(graph)
    for module in graph.modules():  # inference mode (an exported graph's eval() raises)
        module.training = False
    model = converter.convert(graph, (example,),
                              quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
    model.export(str(path))
    runner = LiteRTRunner(path, precision="int8")
    return runner, runner



class LiteRTRunner:
    """One LiteRT ``Interpreter`` on NCHW float32 batches -> float32 logits (int8 I/O handled)."""

    def __init__(self, path: str | Path, *, precision: str = "fp32", threads: int | None = None):
        import torch

        lite = require_module(_backend(), "ai_edge_litert.interpreter")
        self.path = Path(path)
        self.file = self.path.name
        self.precision = precision
        self.threads = int(threads or torch.get_num_threads())
        with native_log_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = lite.Interpreter(model_path=str(self.path), num_threads=self.threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = int(self.input["shape"][0])
        self.io_dtype = f"{np.dtype(self.input['dtype']).name} in, {np.dtype(self.output['dtype']).name} out"
        self.notes: list[str] = []
        if np.dtype(self.input["dtype"]) != np.float32:
            scale, zero = self.input["quantization"]
            self.notes.append(f"{np.dtype(self.input['dtype']).name} input: quantized with the "
                              f"model's scale {scale:.6g} / zero-point {zero}; output dequantized")
        self.name = f"tflite {precision}"
        self.runtime = f"ai-edge-litert {package_versions('tflite').get('ai-edge-litert', '?')}"
        self.provider = "LiteRT Interpreter (cpu)"
        self.output_name = "logits"

    def op_counts(self) -> dict[str, int]:
        from collections import Counter

        return dict(sorted(Counter(d["op_name"] for d in self.interpreter._get_ops_details()).items()))

    def _feed(self, chunk: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.input["dtype"])
        if dtype == np.float32:
            return np.ascontiguousarray(chunk, dtype=np.float32)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(chunk / scale + zero), info.min, info.max).astype(dtype)

    def _read(self) -> np.ndarray:
        out = self.interpreter.get_tensor(self.output["index"])
        if np.dtype(self.output["dtype"]) == np.float32:
            return out.copy()
        scale, zero = self.output["quantization"]
        return ((out.astype(np.float32) - zero) * scale).astype(np.float32)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], self._feed(chunk))
        self.interpreter.invoke()
        return self._read()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return pt2e.run_batched(self._run, np.asarray(batch, dtype=np.float32), self.batch)

    def timed_call(self, batch: np.ndarray):
        """(fn, clock): set the (already quantized) input and invoke, per chunk of the batch."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        n = max(1, len(x) // self.batch)
        chunks = [self._feed(np.resize(x[i * self.batch:(i + 1) * self.batch],
                                       (self.batch, *x.shape[1:]))) for i in range(n)]

        def run() -> None:
            for chunk in chunks:
                self.interpreter.set_tensor(self.input["index"], chunk)
                self.interpreter.invoke()
                self.interpreter.get_tensor(self.output["index"])
        return run, "perf_counter"


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None) -> LiteRTRunner:
    """Runner for one manifest entry of format ``tflite`` (CPU, fixed num_threads)."""
    return LiteRTRunner(Path(directory) / artifact["file"], precision=artifact.get("precision", "fp32"),
                        threads=threads)
