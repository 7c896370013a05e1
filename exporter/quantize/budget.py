"""Accuracy budget: judge INT8 against FP32 on held-out samples, fall the most sensitive layers back.

Criterion (judged on a held-out set, never on the calibration samples):
  * labels available (class subfolders named by class index): top-1 accuracy may drop at most
    ``max_accuracy_drop`` points (default 1.0) below the FP32 model's;
  * no labels: top-1 agreement with FP32 >= ``min_agreement`` (default 0.95). Every agreement is
    reported with its Wilson 95% interval and the sample count.

Sensitivity of a layer = mean KL(FP32 softmax || softmax with *only that layer* in INT8) on the
calibration samples and their horizontal flips (an error of the whole network, measured on
hundreds of samples: stable where top-1 on a few dozen is noise; and cheap, since a model with
one int8 layer runs at FP32 speed). Layers leave INT8 in ranked groups of growing size
(1, 2, 3, 4, 6, 8, ...), each group judged on the held-out set; the first that meets the budget
wins. More than ``max_kept_fraction`` (1/4) of the convolutions -> :class:`BudgetRefused`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import numpy as np
import onnx

from ..errors import PrecisionError
from ..summary import timings_note
from . import int8 as q8
from .calibration import tensor_maxima
from .judging import Criterion, Measurement, floor_sentence, mean_kl, measure
from .placement import plan as make_plan


class BudgetRefused(PrecisionError):
    """The budget cannot be met within its cap (or, on ``cpu``, only by a model slower than FP32).
    ``best``: the best it reached, in words ("14 layer(s) out: top-1 agreement 0.935 ...")."""

    def __init__(self, message: str, fix: str = "", best: str = ""):
        super().__init__(message, fix=fix)
        self.best = best

MAX_KEPT_FRACTION = 0.25
# cpu: a budget model with kept layers must run at least this much faster than FP32 as measured
# (a margin for the timing's noise: one model timed 1.05x in the loop ran 0.95x in the benchmark)
MIN_SPEEDUP = 1.1
# a model under MIN_SPEEDUP is timed again, up to this many times in all, before it is refused: on
# a shared 2-core machine one timing of the same model ranged 1.08-1.59x FP32 (p50 of 60 runs)
SPEED_TRIES = 3
SENSITIVITY_SAMPLES = 128  # calibration samples (x2 with flips) the ranking is measured on


# what a refused budget suggests instead of INT8, per placement: FP16 where the runtime computes
# in it (TensorRT); ONNX Runtime's x86 CPU runs an FP16 graph in fp32 arithmetic with Casts,
# 0.76x FP32's speed on MobileNetV2 (benchmarks/FP16_CPU_FIDELITY.md)
INSTEAD_OF_INT8 = {"tensorrt": "use --precision fp16",
                   "cpu": "deploy FP32 (--precision fp32: ONNX Runtime's x86 CPU runs FP16 graphs "
                          "in fp32 arithmetic, slower than FP32)"}


def sensitivity_inputs(calibration: np.ndarray, count: int = SENSITIVITY_SAMPLES) -> np.ndarray:
    """The first ``count`` calibration samples and their horizontal flips."""
    x = np.asarray(calibration[:count], np.float32)
    return np.concatenate([x, x[..., ::-1]])


def sensitivity(fp32: onnx.ModelProto, target: str, ranges: dict, bias: dict, x: np.ndarray,
                ref: np.ndarray, candidates: list[str], always_kept: set[str] = frozenset(),
                log: Callable[[str], None] = lambda _m: None,
                weights: dict | None = None, fp32_layers: Collection[str] = ()) -> list[tuple[str, float]]:
    """[(layer, KL with only that layer in INT8)], most sensitive (highest KL) first.

    "Only that layer": its int8 weight and the Q/DQ of its input. The ``cpu`` placement quantizes
    every op's input, kept layers' too, so its plan is cut down to the layer's own input edges:
    otherwise every score carries the whole network's activation error and the ranking is noise
    (benchmarks/INT8_ERROR_BUDGET.md)."""
    linear = set(make_plan(fp32, target).quantized) | set(always_kept)
    scores = []
    for i, name in enumerate(candidates, 1):
        alone = make_plan(fp32, target, linear - {name}, demote=False)
        if target == "cpu":
            alone.edges = {t: [e for e in es if e[0] == name] for t, es in alone.edges.items()}
            alone.edges = {t: es for t, es in alone.edges.items() if es}
        model = q8.build_qdq(fp32, alone, ranges, bias, weights=weights, fp32_layers=fp32_layers)
        scores.append((name, mean_kl(ref, q8.run(model, x))))
        if i % 10 == 0 or i == len(candidates):
            log(f"int8 budget: sensitivity {i}/{len(candidates)} layers")
    return sorted(scores, key=lambda s: -s[1])


COVERAGE_FACTOR = 1.5  # judging samples past this many times the calibration's largest |value|


def coverage_gaps(model: onnx.ModelProto, ranges: dict, tensors: list[str], x_cal: np.ndarray,
                  x_eval: np.ndarray) -> tuple[list[dict], str]:
    """Quantized tensors the judging samples drive past ``COVERAGE_FACTOR`` x the calibration
    samples' largest |value| (worst first), and a sentence naming them ("" when none): such a
    tensor is clipped on the judging data whatever layers the budget moves out of INT8."""
    tensors = [t for t in tensors if t in ranges]
    cal, judged = (tensor_maxima(model, tensors, x) for x in (x_cal, x_eval))
    gaps = sorted(({"tensor": t, "calibrated_amax": float(ranges[t][2]), "calibration_max": cal[t],
                    "judged_max": judged[t]} for t in tensors
                   if judged[t] > COVERAGE_FACTOR * max(cal[t], 1e-12)),
                  key=lambda g: -g["judged_max"] / max(g["calibration_max"], 1e-12))
    if not gaps:
        return [], ""
    w = gaps[0]
    return gaps, (f"the judging samples drive {len(gaps)} of the {len(tensors)} quantized "
                  f"activation(s) past {COVERAGE_FACTOR:g}x the largest value the calibration "
                  f"samples reached (worst: {w['tensor']} reaches {w['judged_max']:.3g}, "
                  f"calibration {w['calibration_max']:.3g}, calibrated range +-{w['calibrated_amax']:.3g}): "
                  "the calibration data do not cover the data the model is judged on")


def group_sizes(limit: int) -> list[int]:
    """Growing group sizes 1, 2, 3, 4, 6, 8, 11, 15, ... up to and including ``limit``."""
    sizes, k = [], 1
    while k < limit:
        sizes.append(k)
        k = max(k + 1, int(round(k * 1.35)))
    return sizes + [limit] if limit > 0 else []


@dataclass
class BudgetResult:
    model: onnx.ModelProto
    kept: list[str]
    measurement: Measurement
    history: list[dict] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    latency: dict | None = None  # ``speed``'s timing of ``model``, when it was timed


def fit_budget(fp32: onnx.ModelProto, target: str, ranges: dict, bias: dict, x_eval: np.ndarray,
               labels: np.ndarray | None, criterion: Criterion, x_rank: np.ndarray,
               max_kept_fraction: float = MAX_KEPT_FRACTION, force_kept: list[str] | None = None,
               log: Callable[[str], None] = lambda _m: None,
               weights: dict | None = None,
               speed: Callable[[onnx.ModelProto], dict] | None = None,
               untried: str = "", fp32_layers: Collection[str] = (),
               floor: dict | None = None, ref: np.ndarray | None = None) -> BudgetResult:
    """All INT8 (but ``force_kept``) if it meets ``criterion`` on ``x_eval``; else keep the most
    sensitive layers (ranked on ``x_rank``) out of INT8, in growing groups. ``weights``: int8
    weights chosen per layer (GPTQ's), else round-to-nearest. ``speed(model)`` (the ``cpu``
    target: INT8 vs FP32 latency) times a model that meets the criterion with layers kept; one
    under ``MIN_SPEEDUP`` x FP32 is refused (more kept layers would only be slower). ``untried``:
    the opt-in levers the refusal suggests (the flags not given). ``floor``: the judging samples'
    :func:`~.judging.noise_floor`, said in a refusal; ``ref``: FP32's logits on ``x_eval``, when
    the caller has them."""
    ref = q8.run(fp32, x_eval) if ref is None else ref
    full_plan = make_plan(fp32, target)
    convs = [n for n in full_plan.quantized if _op(fp32, n) == "Conv"]
    base = list(force_kept or [])
    max_kept = conv_cap(max_kept_fraction, len(convs))
    history: list[dict] = []
    timed: list[dict] = []  # speed's timing of the last model that met the criterion

    def attempt(kept_now: list[str]) -> tuple[onnx.ModelProto, Measurement]:
        model = q8.build_qdq(fp32, make_plan(fp32, target, set(kept_now)), ranges, bias,
                             weights=weights, fp32_layers=fp32_layers)
        result = measure(ref, q8.run(model, x_eval), labels, criterion)
        history.append({"kept": len(kept_now), "added": kept_now[len(base):][-1:] or None,
                        **{k: v for k, v in result.metrics.items() if k != "samples"}})
        log(f"int8 budget: {len(kept_now)} layer(s) out of int8 -> {result.describe()} "
            f"[{'met' if result.ok else 'not met'}: {criterion.describe()}]")
        if result.ok and speed is not None and len(kept_now) > len(base):
            latency = best_speed(speed, model)
            timed.append(latency)
            history[-1]["int8_vs_fp32"] = latency["speedup"]
            note = timings_note(latency)
            log(f"int8 budget: {len(kept_now)} layer(s) out of int8 run at {latency['speedup']:.2f}x FP32"
                + (f" ({note})" if note else ""))
            if latency["speedup"] < MIN_SPEEDUP:
                raise too_slow(criterion, result, len(kept_now), latency)
        return model, result

    model, result = attempt(base)
    if result.ok:
        return BudgetResult(model, base, result, history)
    log(f"int8 budget: ranking {len(full_plan.quantized) - len(base)} layers by sensitivity "
        f"on {len(x_rank)} calibration samples (with flips)")
    fixed = q8.fixed_batch(fp32)
    if fixed:
        x_rank = x_rank[:len(x_rank) - len(x_rank) % fixed]
    ref_rank = q8.run(fp32, x_rank)
    ranking = sensitivity(fp32, target, ranges, bias, x_rank, ref_rank,
                          [n for n in full_plan.quantized if n not in base], set(base), log, weights,
                          fp32_layers)
    ranked = [n for n, _ in ranking]
    cap = _largest_prefix(fp32, base, ranked, max_kept)  # the cap itself is the last group tried
    k, model, result, met = climb(ranked, cap, lambda prefix: attempt(base + prefix), result)
    if met:
        return BudgetResult(model, base + ranked[:k], result, history, ranking,
                            timed[-1] if timed else None)
    best_kept = base + ranked[:k]
    unflipped = x_rank[:len(x_rank) // 2]
    unflipped = unflipped[:len(unflipped) - len(unflipped) % fixed] if fixed else unflipped
    _, coverage = coverage_gaps(fp32, ranges, list(full_plan.edges), unflipped, x_eval)
    raise refusal(criterion, result, len(best_kept), max_kept, len(convs), max_kept_fraction,
                  fp16=INSTEAD_OF_INT8[target], untried=untried,
                  best_convs=sum(_op(fp32, n) == "Conv" for n in best_kept),
                  coverage=coverage, rule_convs=sum(_op(fp32, n) == "Conv" for n in base),
                  uncounted=len(full_plan.quantized) - len(convs), floor=floor)


def conv_cap(fraction: float, convs: int) -> int:
    """How many of ``convs`` convs may be out of INT8 at ``--max-kept-fraction fraction``: never
    all of them (a model with no INT8 conv left is an FP16/FP32 model, not an INT8 one)."""
    return max(0, min(int(math.floor(fraction * convs)), convs - 1))


def climb(ranked: list[str], cap: int, attempt: Callable[[list[str]], tuple[Any, Measurement]],
          start: Measurement) -> tuple[int, Any, Measurement, bool]:
    """Try the prefixes ``ranked[:k]`` for the growing ``group_sizes`` up to ``cap`` (the cap
    itself last) with ``attempt(prefix) -> (made, measurement)``: (k, made, measurement, True) of
    the first that meets the criterion, else (k, None, measurement, False) of the best one
    (k = 0: ``start``, the attempt before any layer left INT8)."""
    best, tried = (start.score(), 0, start), 0
    for k in group_sizes(len(ranked)):
        k = min(k, cap)
        if k <= tried:
            break
        tried = k
        made, result = attempt(ranked[:k])
        if result.score() > best[0]:
            best = (result.score(), k, result)
        if result.ok:
            return k, made, result, True
    return best[1], None, best[2], False


def refusal(criterion: Criterion, best: Measurement, best_kept: int, max_convs: int, convs: int,
            fraction: float, runtime: str = "", kept_as: str = "out of INT8",
            fp16: str = "use --precision fp16", untried: str = "",
            best_convs: int | None = None, coverage: str = "", rule_convs: int = 0,
            uncounted: int = 0, floor: dict | None = None) -> BudgetRefused:
    """The budget's :class:`BudgetRefused`: the cap it hit, the best it reached, the levers.
    ``kept_as`` says where a kept layer runs ("out of INT8", "in float"); ``untried`` names the
    opt-in accuracy lever not used; ``coverage`` (:func:`coverage_gaps`' sentence) puts the data
    lever first; ``rule_convs``: convs out by rule before the budget (they count toward the cap);
    ``uncounted``: the quantized layers that are not convs (the budget may move them too, uncapped);
    ``floor``: the judging samples' :func:`~.judging.noise_floor`."""
    loosen = ("--max-accuracy-drop N (points of top-1 accuracy)" if criterion.kind == "accuracy_drop"
              else "--min-agreement A (top-1 agreement with FP32)")
    short = "out" if kept_as == "out of INT8" else kept_as
    if best_convs is not None and best_convs != best_kept:  # the cap counts convs, not layers
        short += f", {best_convs} of them convs"
    return BudgetRefused(
        f"the {runtime + ' ' if runtime else ''}INT8 accuracy budget ({criterion.describe()}) "
        f"cannot be met keeping at most {max(max_convs, rule_convs)} of the {convs} convs {kept_as} "
        f"(--max-kept-fraction {fraction:g}"
        + (f"; never all {convs}" if max_convs == convs - 1 and fraction * convs >= convs else "")
        + (("; the conv kept out by rule counts toward it" if rule_convs == 1 else
            f"; the {rule_convs} convs kept out by rule count toward it") if rule_convs else "")
        + (f"; the {uncounted} other layer(s), not convs, are not counted" if uncounted else "")
        + f"): the best ({best_kept} layer(s) {short}) reached "
        f"{best.describe()}" + (f"; {coverage}" if coverage else "") + _floor_clause(floor, criterion),
        fix=("calibrate with data like the judging data (--calibration DIR of deployment images), "
             if coverage else "")
            + f"{fp16}, loosen the budget with {loosen}, "
            + (f"allow more layers {kept_as} with --max-kept-fraction {min(1.0, 2 * fraction) or 0.25:g}, "
               if max_convs < convs - 1 else "")
            + (f"try the slower opt-in lever {untried}, " if untried else "")
            + ("or calibrate with more of it (--calibration-samples N)" if coverage else
               "or calibrate with more or closer-to-deployment data (--calibration DIR, "
               "--calibration-samples N)")
            + ("" if criterion.kind == "accuracy_drop" else
               "; agreement on unlabelled crops flips on near-ties, so where labelled images exist "
               "judge by accuracy instead (--eval-images DIR with class subfolders named by class index)"),
        best=f"{best_kept} layer(s) {short}: {best.describe()}")


def _floor_clause(floor: dict | None, criterion: Criterion) -> str:
    """'; FP32 itself keeps its top-1 on 0.945 of these samples under ... noise[, below the 0.95
    asked: ...]' of a refusal ('' without a floor)."""
    if not floor:
        return ""
    below = floor.get("below_budget")
    return (f"; {floor_sentence(floor)}" + (
        f", below the {criterion.threshold:.3f} asked: some of these samples are near-ties, and INT8 "
        "is asked to flip fewer of them than that noise does" if below else ""))


def best_speed(speed: Callable[[onnx.ModelProto], dict], model: onnx.ModelProto,
               tries: int = SPEED_TRIES) -> dict:
    """``speed(model)``, timed again while under ``MIN_SPEEDUP`` (up to ``tries`` in all): a
    refusal must not rest on one slow moment of a shared machine. The fastest timing is kept;
    ``speedups`` lists every one."""
    timings: list[dict] = []
    while len(timings) < max(1, tries):
        timings.append(speed(model))
        if timings[-1]["speedup"] >= MIN_SPEEDUP:
            break
    best = max(timings, key=lambda t: t["speedup"])
    return {**best, "speedups": [t["speedup"] for t in timings]}


def too_slow(criterion: Criterion, met: Measurement, kept: int, latency: dict) -> BudgetRefused:
    """The ``cpu`` budget met, but by a model slower than FP32: INT8 would defeat its purpose."""
    return BudgetRefused(
        f"the INT8 accuracy budget ({criterion.describe()}) is met with {kept} layer(s) kept in "
        f"FP32 ({met.describe()}), but that model runs at {latency['speedup']:.2f}x FP32 on ONNX "
        f"Runtime CPU ({latency['int8_ms']:.2f} vs {latency['fp32_ms']:.2f} ms, batch "
        f"{latency['batch']}{'; ' + timings_note(latency) if timings_note(latency) else ''}): each float layer between int8 ones costs layout conversions and "
        "Q/DQ, more than INT8 saves",
        fix="deploy FP32 (--precision fp32) on this CPU, loosen the budget with --min-agreement A "
            "or --max-accuracy-drop N, or calibrate with closer-to-deployment data (--calibration DIR)",
        best=f"{kept} layer(s) kept in FP32: {met.describe()} at {latency['speedup']:.2f}x FP32")


def largest_prefix(ranked: list[str], is_conv: Callable[[str], bool], max_convs: int,
                   already: int = 0) -> int:
    """The longest prefix of ``ranked`` that, with ``already`` convs out, keeps at most
    ``max_convs`` convs out."""
    for k, name in enumerate(ranked):
        already += is_conv(name)
        if already > max_convs:
            return k
    return len(ranked)


def _largest_prefix(model: onnx.ModelProto, base: list[str], ranked: list[str], max_convs: int) -> int:
    """:func:`largest_prefix` of ONNX node names, with ``base`` out already."""
    return largest_prefix(ranked, lambda n: _op(model, n) == "Conv", max_convs,
                          sum(_op(model, n) == "Conv" for n in base))


def _op(model: onnx.ModelProto, name: str) -> str:
    for node in model.graph.node:
        if node.name == name:
            return node.op_type
    return ""
