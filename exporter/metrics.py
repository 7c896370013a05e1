"""Parity metrics between a reference (eager PyTorch) and a candidate output, batch of logits."""
from __future__ import annotations

import numpy as np


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    k = min(k, x.shape[1])
    return np.argsort(-x, axis=1)[:, :k]


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Compare two (N, classes) logit arrays.

    Returns max_abs, rel_max_abs (max_abs / max|reference|), mean_abs, cosine (minimum over
    samples), top1_agreement (fraction of equal argmax) and top5_agreement (fraction of samples
    whose reference top-1 is in the candidate's top-5).
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    diff = np.abs(ref - cand)
    scale = float(np.max(np.abs(ref))) or 1.0
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.sum(ref * cand, axis=1) / np.where(norms == 0, 1.0, norms)
    ref_top1 = np.argmax(ref, axis=1)
    cand_top5 = _topk(cand, 5)
    return {
        "max_abs": float(diff.max()),
        "rel_max_abs": float(diff.max() / scale),
        "mean_abs": float(diff.mean()),
        "cosine": float(cosine.min()),
        "top1_agreement": float(np.mean(ref_top1 == np.argmax(cand, axis=1))),
        "top5_agreement": float(np.mean([r in row for r, row in zip(ref_top1, cand_top5)])),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy of logits against integer labels."""
    top5 = _topk(np.asarray(logits), 5)
    return {
        "top1": float(np.mean(top5[:, 0] == labels)),
        "top5": float(np.mean([lab in row for lab, row in zip(labels, top5)])),
    }
