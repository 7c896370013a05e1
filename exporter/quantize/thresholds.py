"""Activation thresholds from |x| histograms: ``minmax``, ``percentile``, ``entropy`` (TensorRT's
KL search) and ``mse`` (the amax minimising the expected squared int8 error). A range is
``(low, high, amax)``; see :mod:`.calibration` for how the histograms are collected."""
from __future__ import annotations

import numpy as np

from ..defaults import CALIBRATION_METHODS
from ..errors import CalibrationError

METHODS = CALIBRATION_METHODS
PERCENTILE = 99.99
BINS = 2048
UNSIGNED_STEPS = 254  # steps of a quantizer spending its levels on [0, high] (int8 zero-centred: -127..127)


def sparse_hist(hist: np.ndarray) -> list[list[int]]:
    nz = np.nonzero(hist)[0]
    return [nz.tolist(), hist[nz].tolist()]


def dense_hist(sparse: list) -> np.ndarray:
    hist = np.zeros(BINS, np.float64)
    hist[np.asarray(sparse[0], dtype=np.int64)] = sparse[1]
    return hist


def compute_ranges(stats: dict, method: str) -> dict[str, tuple[float, float, float]]:
    """tensor -> (low, high, symmetric amax) chosen by ``method``."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method '{method}'", fix=f"use one of {METHODS}")
    ranges = {}
    for name, t in stats["tensors"].items():
        lo, hi = float(t["min"]), float(t["max"])
        top = max(abs(lo), abs(hi), 1e-12)
        if method == "minmax":
            ranges[name] = (lo, hi, top)
            continue
        pos, neg = dense_hist(t["pos"]), dense_hist(t["neg"])
        width = top / BINS
        if method == "percentile":
            amax = percentile_threshold(pos + neg, PERCENTILE, width)
            up = percentile_threshold(pos, PERCENTILE, width) if hi > 0 else hi
            down = -percentile_threshold(neg, PERCENTILE, width) if lo < 0 else lo
        elif method == "mse":
            amax = mse_threshold(pos + neg, width)
            up, down = min(hi, amax), max(lo, -amax)
            if lo >= 0:  # all levels on [0, high]: uint8, or int8 zero-centred (2 x 127 steps)
                up = min(hi, mse_threshold(pos, width, levels=UNSIGNED_STEPS))
        else:
            amax = entropy_threshold(pos + neg, width)
            up, down = min(hi, amax), max(lo, -amax)
        ranges[name] = (min(down, 0.0) if lo < 0 else lo, up, max(amax, 1e-12))
    return ranges


def percentile_threshold(hist: np.ndarray, pct: float, width: float) -> float:
    total = hist.sum()
    if total == 0:
        return width
    idx = int(np.searchsorted(np.cumsum(hist), total * pct / 100.0))
    return (min(idx, BINS - 1) + 1) * width


def entropy_threshold(hist: np.ndarray, width: float, levels: int = 128, stride: int = 16) -> float:
    """TensorRT-style threshold: minimise KL(P || Q) of the clipped vs 128-level histogram."""
    hist = hist.copy()
    hist[0] = 0  # exact zeros (post-ReLU) carry no information about the scale
    if hist.sum() == 0:
        return BINS * width
    best, best_i = np.inf, BINS
    for i in range(levels, BINS + 1, stride):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        base, extra = divmod(i, levels)
        lengths = np.full(levels, base) + (np.arange(levels) < extra)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        mass = np.add.reduceat(hist[:i], starts)
        used = np.add.reduceat(nz.astype(np.float64), starts)
        per = np.divide(mass, used, out=np.zeros(levels), where=used > 0)
        q = np.repeat(per, lengths) * nz
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-30)
        ok = nz & (qs > 0)
        kl = float(np.sum(ps[ok] * np.log(ps[ok] / qs[ok]))) + (np.inf if (nz & (qs == 0)).any() else 0)
        if kl < best:
            best, best_i = kl, i
    return best_i * width


def mse_threshold(hist: np.ndarray, width: float, levels: int = 127, candidates: int = 256) -> float:
    """amax minimising the expected squared int8 error (clipping + rounding) over the histogram."""
    centers = (np.arange(BINS) + 0.5) * width
    amaxes = np.linspace(BINS * width / candidates, BINS * width, candidates)
    step = amaxes / levels
    clip = np.maximum(centers[None, :] - amaxes[:, None], 0.0) ** 2
    rounding = np.where(centers[None, :] <= amaxes[:, None], (step ** 2 / 12.0)[:, None], 0.0)
    cost = ((clip + rounding) * hist[None, :]).sum(axis=1)
    return float(amaxes[int(np.argmin(cost))])
