"""Peer runner: Intel Neural Compressor for ONNX (onnx-neural-compressor) static INT8 (interface:
peer_common.py).

Install beside the project's environment (its metadata pins numpy<2, hence --no-deps; it runs with
our numpy 2.x, onnx, onnxruntime, pydantic, psutil, py-cpuinfo and transformers):

    pip install --target DIR --no-deps onnx-neural-compressor==1.0 prettytable wcwidth
    python benchmarks/int8_peers.py --peers inc --site inc=DIR

All configs go through `onnx_neural_compressor.quantization.quantize` with a `StaticQuantConfig`
(uint8 asymmetric activations, int8 symmetric weights, ops = its CPU list). The toolkit has no
bias correction / CLE / AdaRound for static INT8; its SmoothQuant targets LLM MatMuls and its
autotune loop needs an accuracy metric, so neither is run here. On CPUs without VNNI the toolkit
warns to set reduce_range=True (7-bit weights), but in 1.0 `quantize()` never hands that flag to
its quantizer (the weights stay 8-bit); config `reduce_range` passes it to the toolkit's own
StaticQuantizer, which supports it. Its Entropy calibrator is built with 128 histogram bins and 128
quantized bins (not settable), which leaves a single candidate threshold: `kl` reproduces MinMax.
"""
from __future__ import annotations

import time

from peer_common import parse_args, report

CONFIGS = {
    "default": "documented default StaticQuantConfig(reader): MinMax calibration, per-tensor weights, "
               "QOperator format (QLinearConv), u8 act asym / s8 weight sym",
    "qdq": "default but QDQ format (MinMax, per-tensor)",
    "qdq_pc": "QDQ format, per-channel weights, MinMax calibration",
    "kl": "QDQ, per-channel, Entropy (KL) calibration as shipped: 128 histogram bins = 128 quantized bins, "
          "so one candidate threshold and the ranges equal MinMax",
    "percentile": "QDQ, per-channel, Percentile activation calibration (99.999, 2048 bins)",
    "reduce_range": "QDQ, per-channel, MinMax, reduce_range=True: 7-bit weights, INC's advice for CPUs "
                    "without VNNI (flag forwarded to its quantizer; quantize() drops it in 1.0)",
    "percentile_rr": "QDQ, per-channel, Percentile calibration and reduce_range=True (7-bit weights)",
}

# name -> StaticQuantConfig keyword overrides (enum members are resolved inside main())
_KW = {
    "default": {},
    "qdq": {"quant_format": "QDQ"},
    "qdq_pc": {"quant_format": "QDQ", "per_channel": True},
    "kl": {"quant_format": "QDQ", "per_channel": True, "calibrate_method": "Entropy"},
    "percentile": {"quant_format": "QDQ", "per_channel": True, "calibrate_method": "Percentile"},
    "reduce_range": {"quant_format": "QDQ", "per_channel": True, "reduce_range": True},
    "percentile_rr": {"quant_format": "QDQ", "per_channel": True, "calibrate_method": "Percentile",
                      "reduce_range": True},
}


def _weights_reduce_range() -> None:
    """Make StaticQuantConfig(reduce_range=True) reach the weight quantizer (dropped in 1.0)."""
    from onnx_neural_compressor.algorithms.post_training_quant import quantizer

    base = quantizer.StaticQuantizer

    class StaticQuantizer7(base):
        def __init__(self, *args, **kwargs):
            kwargs["reduce_range"] = True
            super().__init__(*args, **kwargs)

    quantizer.StaticQuantizer = StaticQuantizer7


def main() -> None:
    args = parse_args(CONFIGS, __doc__)
    if args is None:
        return
    import numpy as np
    import onnx
    from importlib.metadata import version
    from onnxruntime import quantization as ortq

    from onnx_neural_compressor import data_reader
    from onnx_neural_compressor.quantization import config as inc_config
    from onnx_neural_compressor.quantization import quantize

    cal = np.load(args.cal).astype(np.float32)
    in_name = onnx.load(str(args.model), load_external_data=False).graph.input[0].name

    class Reader(data_reader.CalibrationDataReader):
        """One calibration crop per step (batch 1, as the toolkit's image examples do)."""

        def __init__(self, x):
            self.x = x
            self.i = 0

        def get_next(self):
            if self.i >= len(self.x):
                return None
            self.i += 1
            return {in_name: self.x[self.i - 1 : self.i]}

        def rewind(self):
            self.i = 0

    kw = dict(_KW[args.config])
    if "quant_format" in kw:
        kw["quant_format"] = getattr(ortq.QuantFormat, kw["quant_format"])
    if "calibrate_method" in kw:
        kw["calibrate_method"] = getattr(ortq.CalibrationMethod, kw["calibrate_method"])
    if kw.get("reduce_range"):
        _weights_reduce_range()

    q_path = args.work / f"inc_{args.config}.int8.onnx"

    t0 = time.perf_counter()
    qcfg = inc_config.StaticQuantConfig(
        calibration_data_reader=Reader(cal),
        execution_provider="CPUExecutionProvider",
        calibration_sampling_size=len(cal),
        **kw,
    )
    quantize(str(args.model), q_path.as_posix(), qcfg)
    seconds = time.perf_counter() - t0

    report(args.config, seconds, q_path, f"onnx-neural-compressor {version('onnx-neural-compressor')}",
           CONFIGS[args.config])


if __name__ == "__main__":
    main()
