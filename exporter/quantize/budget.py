"""Accuracy budget: measure INT8 against FP32, rank layer sensitivity, fall layers back to fp16.

Criterion:
  * labels available (evaluation folder with integer class subfolders): top-1 accuracy may drop
    at most ``max_accuracy_drop`` points (default 1.0) below the FP32 model's;
  * no labels: top-1 agreement with FP32 >= ``min_agreement`` (default 0.97); an explicit
    ``max_accuracy_drop`` X then means agreement >= 1 - X/100.

Sensitivity of a layer = how much the INT8 model's output distribution (mean KL divergence to
FP32 softmax) improves when only that layer is left out of int8 (kept fp16). The loop keeps
layers in that order, one at a time, re-measuring after each, and stops at the first set that
meets the budget (the fewest layers in sensitivity order). More than ``max_kept_fraction`` (1/4)
of the convolutions would be needed -> :class:`PrecisionError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import PrecisionError
from ..metrics import accuracy, compare_outputs
from . import int8 as q8
from .placement import plan as make_plan

DEFAULT_DROP = 1.0
DEFAULT_AGREEMENT = 0.97
MAX_KEPT_FRACTION = 0.25
SENSITIVITY_SAMPLES = 32


@dataclass
class Criterion:
    kind: str  # "accuracy_drop" | "agreement"
    threshold: float  # max drop in points, or min agreement

    @classmethod
    def make(cls, labels: np.ndarray | None, max_accuracy_drop: float | None,
             min_agreement: float | None = None) -> "Criterion":
        if labels is not None:
            return cls("accuracy_drop", DEFAULT_DROP if max_accuracy_drop is None else max_accuracy_drop)
        if min_agreement is not None:
            return cls("agreement", min_agreement)
        if max_accuracy_drop is None:
            return cls("agreement", DEFAULT_AGREEMENT)
        return cls("agreement", 1.0 - max_accuracy_drop / 100.0)

    def describe(self) -> str:
        if self.kind == "accuracy_drop":
            return f"top-1 accuracy drop <= {self.threshold:g} points"
        return f"top-1 agreement with FP32 >= {self.threshold:.3f}"


@dataclass
class Measurement:
    metrics: dict
    ok: bool

    def score(self) -> float:
        m = self.metrics
        return -m["accuracy_drop_points"] if "accuracy_drop_points" in m else m["top1_agreement"]


def measure(ref_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray | None,
            criterion: Criterion) -> Measurement:
    cmp = compare_outputs(ref_logits, logits)
    metrics = {"top1_agreement": cmp["top1_agreement"], "top5_agreement": cmp["top5_agreement"],
               "cosine_min": cmp["cosine"], "samples": int(len(logits))}
    if labels is not None:
        fp, iq = accuracy(ref_logits, labels)["top1"], accuracy(logits, labels)["top1"]
        metrics.update(fp32_top1=fp, int8_top1=iq, accuracy_drop_points=100.0 * (fp - iq))
        ok = metrics["accuracy_drop_points"] <= criterion.threshold + 1e-9
    else:
        ok = cmp["top1_agreement"] >= criterion.threshold - 1e-9
    return Measurement(metrics, ok)


def mean_kl(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean KL(softmax(ref) || softmax(cand)) over the batch."""
    ref = ref.astype(np.float64)
    cand = cand.astype(np.float64)
    lp = ref - ref.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lq = cand - cand.max(1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def sensitivity(fp32: onnx.ModelProto, target: str, ranges: dict, bias: dict, x: np.ndarray,
                ref: np.ndarray, candidates: list[str]) -> list[tuple[str, float]]:
    """[(layer, KL with only that layer kept in fp16)], most sensitive (lowest KL) first."""
    scores = []
    for name in candidates:
        model = q8.build_qdq(fp32, make_plan(fp32, target, {name}), ranges, bias)
        scores.append((name, mean_kl(ref, q8.run(model, x))))
    return sorted(scores, key=lambda s: s[1])


@dataclass
class BudgetResult:
    model: onnx.ModelProto
    kept: list[str]
    measurement: Measurement
    history: list[dict] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)


def fit_budget(fp32: onnx.ModelProto, target: str, ranges: dict, bias: dict, x: np.ndarray,
               labels: np.ndarray | None, criterion: Criterion,
               max_kept_fraction: float = MAX_KEPT_FRACTION, force_kept: list[str] | None = None,
               log=lambda msg: None) -> BudgetResult:
    """Fully INT8 if it meets ``criterion`` on ``x``; else keep the most sensitive layers in fp16."""
    ref = q8.run(fp32, x)
    full_plan = make_plan(fp32, target)
    linear = full_plan.quantized
    convs = [n for n in linear if _op(fp32, n) == "Conv"]
    max_kept = int(math.floor(max_kept_fraction * len(convs)))
    kept: list[str] = list(force_kept or [])
    history: list[dict] = []

    def attempt(kept_now: list[str]) -> tuple[onnx.ModelProto, Measurement]:
        model = q8.build_qdq(fp32, make_plan(fp32, target, set(kept_now)), ranges, bias)
        result = measure(ref, q8.run(model, x), labels, criterion)
        history.append({"kept": len(kept_now), "layer": kept_now[-1] if kept_now else None,
                        **{k: v for k, v in result.metrics.items() if k != "samples"}})
        log(f"int8 with {len(kept_now)} layer(s) in fp16: {result.metrics}")
        return model, result

    model, result = attempt(kept)
    if result.ok:
        return BudgetResult(model, kept, result, history)
    sub = slice(0, min(len(x), SENSITIVITY_SAMPLES))
    ranking = sensitivity(fp32, target, ranges, bias, x[sub], ref[sub],
                          [n for n in linear if n not in kept])
    best = (result.score(), model, list(kept), result)
    for name, _ in ranking:
        if sum(_op(fp32, n) == "Conv" for n in kept + [name]) > max_kept:
            break
        kept.append(name)
        model, result = attempt(kept)
        if result.score() > best[0]:
            best = (result.score(), model, list(kept), result)
        if result.ok:
            return BudgetResult(model, kept, result, history, ranking)
    reached = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in best[3].metrics.items())
    loosen = ("--max-accuracy-drop N (points of top-1 accuracy)" if criterion.kind == "accuracy_drop"
              else "--max-accuracy-drop N (without labels: top-1 agreement >= 1 - N/100)")
    raise PrecisionError(
        f"the INT8 accuracy budget ({criterion.describe()}) cannot be met: the best of keeping up to "
        f"a quarter of the {len(convs)} convs out of INT8 ({len(best[2])} most sensitive layer(s)) "
        f"reached {reached}",
        fix=f"use --precision fp16, loosen the budget with {loosen}, or calibrate with more or "
            "closer-to-deployment data (--calibration DIR, --calibration-samples N)")


def _op(model: onnx.ModelProto, name: str) -> str:
    for node in model.graph.node:
        if node.name == name:
            return node.op_type
    return ""
