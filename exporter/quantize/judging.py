"""Judging INT8 against FP32: the budget's criterion, its measurement of a candidate on the held-out
samples (top-1 agreement with its Wilson interval, accuracy drop where labels exist, mean KL), and
the checks on the judging labels."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import CalibrationError, UsageError
from ..metrics import accuracy, compare_outputs
from ..validate import two_budgets

DEFAULT_DROP = 1.0
DEFAULT_AGREEMENT = 0.95


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z=1.96)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_tail(successes: int, n: int, p: float) -> float:
    """P(X <= successes) for X ~ Binomial(n, p): how surprising so few successes are at rate p."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return float(successes >= n)
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p) for k in range(0, int(successes) + 1)]
    return min(1.0, sum(math.exp(v) for v in logs))


@dataclass
class Criterion:
    kind: str  # "accuracy_drop" | "agreement"
    threshold: float  # max drop in points, or min agreement
    source_exhausted: bool = False  # the judging source gave fewer samples than requested

    @classmethod
    def make(cls, labels: np.ndarray | None, max_accuracy_drop: float | None,
             min_agreement: float | None = None, unlabelled: str = "",
             source_exhausted: bool = False) -> "Criterion":
        """Labelled judging data default to an accuracy drop, unless ``min_agreement`` was asked
        for; ``unlabelled``: why the judging folder's subfolders gave no labels (said if that
        refuses); ``source_exhausted``: more samples cannot come from the same source."""
        made = cls._make(labels, max_accuracy_drop, min_agreement, unlabelled)
        made.source_exhausted = source_exhausted
        return made

    @classmethod
    def _make(cls, labels, max_accuracy_drop, min_agreement, unlabelled) -> "Criterion":
        both = two_budgets(max_accuracy_drop, min_agreement)
        if both:
            raise UsageError(both[0], fix=both[1])
        if labels is not None and (max_accuracy_drop is not None or min_agreement is None):
            return cls("accuracy_drop", DEFAULT_DROP if max_accuracy_drop is None else max_accuracy_drop)
        if max_accuracy_drop is not None and min_agreement is None:
            raise UsageError(
                f"--max-accuracy-drop {max_accuracy_drop:g} needs labelled held-out images, and the "
                f"judging set has no labels{f' ({unlabelled})' if unlabelled else ''}",
                fix="pass --eval-images DIR whose images all lie in class subfolders named by the "
                    "model's class index (0, 1, ...), or judge by agreement with FP32: "
                    "--min-agreement 0.95")
        return cls("agreement", DEFAULT_AGREEMENT if min_agreement is None else min_agreement)

    def describe(self) -> str:
        if self.kind == "accuracy_drop":
            return f"top-1 accuracy drop <= {self.threshold:g} points"
        shown = f"{self.threshold:.3f}"  # 0.950; more digits where three would round (0.9999)
        if abs(float(shown) - self.threshold) > 1e-12:
            shown = f"{self.threshold:.6g}"
        return f"top-1 agreement with FP32 >= {shown}"

    def warning(self, metrics: dict) -> str:
        """Why the verdict on these measured ``metrics`` says little ("" when nothing does): too
        few samples for the budget's margin, or labels that FP32 itself does not predict."""
        notes = [self.coarse_warning(int(metrics.get("samples", 0)))]
        fp32, guess = metrics.get("fp32_top1"), metrics.get("most_common_label_share", 0.0)
        if self.kind == "accuracy_drop" and fp32 is not None and fp32 <= guess + 1e-9:
            notes.append(
                f"FP32 itself reaches only top-1 accuracy {fp32:.3f} on the {metrics.get('samples', 0)} "
                f"labelled judging sample(s), no better than always naming their most common class "
                f"({guess:.3f}), so an accuracy drop between it and INT8 says little; check that the "
                "class subfolders are named by the model's class index and that the weights are "
                "trained (--weights/--checkpoint), or judge by agreement with FP32: "
                f"--min-agreement {DEFAULT_AGREEMENT:.2f}")
        return "; ".join(n for n in notes if n)

    def coarse_warning(self, samples: int) -> str:
        """Why a verdict on ``samples`` says little, when one changed prediction alone moves the
        metric past the budget's margin (it then passes only if none changes); "" otherwise."""
        margin = self.threshold if self.kind == "accuracy_drop" else 100.0 * (1.0 - self.threshold)
        step = 100.0 / max(samples, 1)
        if margin <= 1e-9 or step <= margin + 1e-9:
            return ""
        metric = "top-1 accuracy" if self.kind == "accuracy_drop" else "top-1 agreement"
        need = math.ceil(100.0 / margin - 1e-9)
        how = (f"its source holds no more, so add images to it or pass --eval-images DIR with at "
               f"least {need}" if self.source_exhausted
               else f"judge on at least {need} (--eval-samples N, or --eval-images DIR)")
        return (f"the INT8 budget was judged on only {samples} sample(s): one changed prediction moves "
                f"the {metric} by {step:.1f} points, more than the {margin:.1f} it allows, so it "
                f"passes only if none changes; {how}")


def classes_beyond(labels: np.ndarray | None, classes: int, class_names: Sequence[str] = ()) -> list[int]:
    """The class indices, of the labels drawn and of the folder's class subfolders, that a model
    with ``classes`` outputs does not have (none when unlabelled or the width is unknown)."""
    if labels is None or not classes:
        return []
    named = {int(n) for n in class_names if n.isdigit()}
    return sorted({int(v) for v in labels if v >= classes} | {n for n in named if n >= classes})


def check_labels(labels: np.ndarray | None, classes: int, source: str,
                 class_names: Sequence[str] = ()) -> None:
    """Labels (class subfolders named by index) all name one of the model's ``classes`` outputs:
    every class subfolder of the folder, not only those the seeded sample happened to draw from."""
    bad = classes_beyond(labels, classes, class_names)
    if not bad:
        return
    raise CalibrationError(
        f"the images the INT8 budget judges on ({source}) have class subfolder(s) "
        f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}, classes the model does "
        f"not have (its output has {classes}: 0..{classes - 1}); accuracy judged on them would be wrong",
        fix=f"name each class subfolder by the model's class index (0..{classes - 1}), or judge by "
            "agreement with FP32: put the images in a folder without class subfolders")


@dataclass
class Measurement:
    metrics: dict
    ok: bool

    def score(self) -> float:
        m = self.metrics
        return -m["accuracy_drop_points"] if "accuracy_drop_points" in m else m["top1_agreement"]

    def describe(self) -> str:
        m = self.metrics
        lo, hi = m["top1_agreement_ci95"]
        text = f"top-1 agreement {m['top1_agreement']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={m['samples']})"
        if "accuracy_drop_points" in m:
            text += f", accuracy {m['int8_top1']:.3f} vs FP32 {m['fp32_top1']:.3f}"
        return text


def measure(ref_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray | None,
            criterion: Criterion) -> Measurement:
    cmp = compare_outputs(ref_logits, logits)
    n = int(len(logits))
    agree = cmp["top1_agreement"]
    lo, hi = wilson_interval(round(agree * n), n)
    metrics = {"top1_agreement": agree, "top1_agreement_ci95": [round(lo, 4), round(hi, 4)],
               "top5_agreement": cmp["top5_agreement"], "cosine_min": cmp["cosine"],
               "kl_mean": mean_kl(ref_logits, logits), "samples": n}
    if labels is not None:
        fp, iq = accuracy(ref_logits, labels)["top1"], accuracy(logits, labels)["top1"]
        metrics.update(fp32_top1=fp, int8_top1=iq, accuracy_drop_points=100.0 * (fp - iq),
                       most_common_label_share=float(np.bincount(labels).max() / max(len(labels), 1)))
        ok = metrics["accuracy_drop_points"] <= criterion.threshold + 1e-9
    else:
        ok = agree >= criterion.threshold - 1e-9
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


FLOOR_PIXEL_LEVELS = 1  # the input noise a judging floor is measured at, in 8-bit pixel levels


def noise_floor(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, std: Sequence[float],
                ref: np.ndarray | None = None, criterion: "Criterion | None" = None,
                levels: float = FLOOR_PIXEL_LEVELS, seed: int = 0) -> dict | None:
    """How often FP32 (``run``) keeps its own top-1 on the judging samples ``x`` when every input
    value moves by up to ``levels`` 8-bit pixel level(s), uniform (about what re-saving a photo
    does): near-ties flip under that, so top-1 agreement above it asks INT8 to change fewer
    predictions than the noise does (benchmarks/INT8_AGREEMENT_FLOOR.md). ``x`` is normalized by
    ``std`` per channel; None when ``std`` does not fit its channels or ``x`` is empty. ``run`` reads
    its input by ``len`` and slices (a batched runner): the noisy samples are made one slice at a
    time, so memory does not grow with ``len(x)``."""
    std = np.asarray(std, np.float32).reshape(-1)
    if x.ndim != 4 or not len(x) or len(std) not in (1, x.shape[1]) or not (std > 0).all():
        return None
    ref = run(x) if ref is None else ref
    logits = run(_Noised(x, (levels / 255.0) / std.reshape(1, -1, 1, 1), seed))
    agree = compare_outputs(ref, logits)["top1_agreement"]
    floor = {"pixel_levels": levels, "top1_agreement": agree, "kl_mean": mean_kl(ref, logits),
             "samples": int(len(x))}
    if criterion is not None and criterion.kind == "agreement":
        floor["below_budget"] = bool(agree < criterion.threshold - 1e-9)
    return floor


class _Noised:
    """``x`` plus seeded uniform noise of up to ``step`` (per channel), made slice by slice as a
    runner reads it (``len`` and ``x[i:j]``): memory holds one slice, whatever ``len(x)``."""

    def __init__(self, x: np.ndarray, step: np.ndarray, seed: int):
        self.x, self.step, self.seed = x, step.astype(np.float32), seed

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, part: slice) -> np.ndarray:
        start, stop, _ = part.indices(len(self.x))
        chunk = np.asarray(self.x[start:stop], dtype=np.float32)
        noise = np.random.default_rng([self.seed, start]).uniform(-1.0, 1.0, chunk.shape)
        return chunk + noise.astype(np.float32) * self.step


def floor_sentence(floor: dict | None) -> str:
    """'FP32 itself keeps its top-1 on 0.952 of these samples under +-1 pixel level of input
    noise' ('' without a floor)."""
    if not floor:
        return ""
    levels = floor["pixel_levels"]
    return (f"FP32 itself keeps its top-1 on {floor['top1_agreement']:.3f} of these samples under "
            f"+-{levels:g} pixel level{'' if levels == 1 else 's'} of input noise")
