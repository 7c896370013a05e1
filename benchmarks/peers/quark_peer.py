"""Peer runner: AMD Quark (quark.onnx) post-training INT8 (interface: peer_common.py).

Install beside the project's environment (Quark pins onnx<=1.22; it runs with ours; its declared
evaluate/plotly/zstandard are not imported on this path):

    pip install --target DIR --no-deps amd-quark==0.13
    python benchmarks/int8_peers.py --peers quark --site quark=DIR

On first import Quark compiles its custom-op library into torch's extension cache; the models it
writes here use standard Q/DQ only.

All configs use Quark's current QConfig API. Quark's spec defaults are per-tensor everywhere
(QuantGranularity.Tensor; the legacy QuantizationConfig has per_channel=False), so weights are
per-tensor here. The default is the U8S8_AAWS preset written as QConfig: UInt8Spec activations
(asymmetric, percentile calibration) + Int8Spec weights (symmetric, min/max), standard QDQ.
Each other config adds one algorithm from quark.onnx's algo_config (cle_relu: CLE plus Quark's
ReplaceClip6Relu option, without which CLE finds only 3 pairs in this Conv+Clip graph). (Legacy
QConfig.get_default_config() presets silently turn CLE on via QuantizationConfig.include_cle=True;
the QConfig API applies only the algorithms listed.)
"""

import os
import time

from peer_common import parse_args, report

ADAROUND_ITERS = 200

CONFIGS = {
    "default": "U8S8_AAWS as QConfig: uint8 asym activations (percentile calib) + int8 sym "
    "per-tensor weights (min/max), ORT QDQ, no algorithms",
    "per_channel": "default with per-channel int8 weights (QuantGranularity.Channel)",
    "cle": "default + cross-layer equalization (CLEConfig defaults: 1 step, max balance)",
    "cle_relu": "default + CLE with ReplaceClip6Relu (Clip(0,6) -> Relu first, so CLE reaches the "
    "Conv-ReLU6-Conv pairs; changes the float graph)",
    "bc": "default + bias correction (BiasCorrectionConfig, on the 64 calibration crops)",
    "adaround": f"default + AdaRound fast finetune (AdaRoundConfig, lr 0.1, {ADAROUND_ITERS} "
    "iterations per layer, batch 1, CPU)",
}


def build_qconfig(name):
    from quark.onnx import (
        AdaRoundConfig,
        BiasCorrectionConfig,
        CLEConfig,
        Int8Spec,
        QConfig,
        QLayerConfig,
        QuantGranularity,
        UInt8Spec,
    )

    algos = {
        "default": [],
        "per_channel": [],
        "cle": [CLEConfig()],
        "cle_relu": [CLEConfig()],
        "bc": [BiasCorrectionConfig()],
        "adaround": [AdaRoundConfig(learning_rate=0.1, num_iterations=ADAROUND_ITERS)],
    }[name]
    extra = {"ForceQuantizeNoInputCheck": True}
    if name == "cle_relu":
        extra["ReplaceClip6Relu"] = True
    granularity = QuantGranularity.Channel if name == "per_channel" else QuantGranularity.Tensor
    return QConfig(
        global_config=QLayerConfig(input_tensors=UInt8Spec(), weight=Int8Spec(quant_granularity=granularity)),
        algo_config=algos,
        extra_options=extra,
    )


def main():
    args = parse_args(CONFIGS, __doc__)
    if args is None:
        return
    import numpy as np
    from importlib.metadata import version

    from quark.onnx import CalibrationDataReader, ModelQuantizer

    cal = np.load(args.cal).astype(np.float32)
    os.chdir(args.work)  # Quark drops scratch files into the working directory
    qpath = args.work / f"mobilenet_v2.quark_{args.config}.onnx"

    class CalReader(CalibrationDataReader):
        """One calibration crop per call (64 calls); only the calibration crops reach Quark."""

        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(cal):
                return None
            self.i += 1
            return {"input": cal[self.i - 1 : self.i]}

        def rewind(self):
            self.i = 0

        def reset_iter(self):
            self.i = 0

    qconfig = build_qconfig(args.config)
    qconfig.extra_options["TmpDir"] = str(args.work)
    t0 = time.perf_counter()
    ModelQuantizer(qconfig).quantize_model(str(args.model), str(qpath), CalReader())
    report(args.config, time.perf_counter() - t0, qpath, f"amd-quark {version('amd-quark')}",
           CONFIGS[args.config])


if __name__ == "__main__":
    main()
