"""Peer runner: Qualcomm AIMET (aimet-onnx) post-training INT8 (interface: peer_common.py).

Install beside the project's environment (torch, onnx, onnxruntime, pandas... come from it; bokeh
is imported by aimet_onnx.common.utils, and tornado/xyzservices are what bokeh lacks there):

    pip install --target DIR --no-deps aimet-onnx==2.42.0 bokeh tornado xyzservices
    python benchmarks/int8_peers.py --peers aimet --site aimet=DIR

Every config builds an aimet_onnx.QuantizationSimModel (W8A8, config_file "default" = per-channel
symmetric Conv/Gemm weights, asymmetric per-tensor activations, float bias), calibrates on the
calibration crops only and writes it with sim.to_onnx_qdq() (plain QuantizeLinear/DequantizeLinear,
int8 weights).
"""
from __future__ import annotations

import os
import sys
import time

from peer_common import parse_args, report

ADAROUND_ITERS = 200
ADAROUND_BATCH = 4  # samples per AdaRound step (64 cal samples in 16 batches); keeps one core under ~10 min
SEQ_MSE_CANDIDATES = 20

CONFIGS = {
    "default": "QuantizationSimModel defaults: W8A8, quant_scheme min_max (= post_training_tf), "
               "config 'default' (per-channel symmetric weights, asymmetric per-tensor activations)",
    "tfe": "as default but quant_scheme post_training_tf_enhanced (SQNR-searched ranges)",
    "cle": "cross-layer equalization (equalize_model: ReLU6->ReLU, cross-layer scaling, high-bias fold) "
           "then default quantsim",
    "seqmse": f"apply_seq_mse (num_candidates={SEQ_MSE_CANDIDATES}, weight-range grid search per layer) "
              "then default quantsim activation calibration",
    "adaround": f"apply_adaround (num_iterations={ADAROUND_ITERS} per layer, batch {ADAROUND_BATCH} of 64 cal samples) "
                "then default quantsim activation calibration",
}
BATCH = 16


def _batches(x, n=BATCH):
    return [{"input": x[i:i + n]} for i in range(0, len(x), n)]


def main():
    args = parse_args(CONFIGS, __doc__)
    if args is None:
        return 0
    import numpy as np
    import onnx
    import torch
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    import aimet_onnx
    from aimet_onnx import QuantizationSimModel, apply_adaround, apply_seq_mse
    from aimet_onnx.common.defs import QuantScheme
    from aimet_onnx.common.quantsim_config import quantsim_config as qc
    # The "default" alias is looked up in the cwd first; pass its absolute path instead.
    config = os.path.join(os.path.dirname(qc.__file__), qc._config_file_aliases["default"])

    model = onnx.load(str(args.model))
    cal = np.load(args.cal).astype(np.float32)
    cal_in = _batches(cal)
    np.random.seed(0)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    if args.config == "cle":
        from aimet_onnx.cross_layer_equalization import equalize_model
        equalize_model(model)  # in place
    scheme = QuantScheme.post_training_tf_enhanced if args.config == "tfe" else QuantScheme.min_max
    sim = QuantizationSimModel(
        model, param_type=aimet_onnx.int8, activation_type=aimet_onnx.int8, quant_scheme=scheme,
        config_file=config, path=os.path.join(str(args.work), "sim"),
        session_options_kwargs={"intra_op_num_threads": threads, "inter_op_num_threads": 1})
    if args.config == "seqmse":
        apply_seq_mse(sim, cal_in, num_candidates=SEQ_MSE_CANDIDATES)  # freezes weight encodings
    elif args.config == "adaround":
        apply_adaround(sim, _batches(cal, ADAROUND_BATCH), num_iterations=ADAROUND_ITERS)  # freezes weight encodings
    sim.compute_encodings(cal_in)
    qdq = sim.to_onnx_qdq(prequantize_constants=True)
    seconds = time.perf_counter() - t0

    path = args.work / f"aimet_{args.config}.qdq.onnx"
    onnx.save(qdq, str(path))
    from importlib.metadata import version
    report(args.config, seconds, path, f"aimet-onnx {version('aimet-onnx')}", CONFIGS[args.config])
    return 0


if __name__ == "__main__":
    sys.exit(main())
