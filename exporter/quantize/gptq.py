"""Output-aware weight rounding for the int8 Conv/Gemm layers of a Q/DQ plan: GPTQ (Frantar et al.
2022), and an exact search for layers with at most ``EXACT_MAX_K`` inputs per output (3x3 depthwise).

Per layer, in topological order, on the layer's input as the quantized model sees it (every
upstream layer already quantized, :func:`.reconstruct.walk`): the per-channel scales stay
:func:`~.int8.quantize_weight`'s; the input columns of each weight matrix are rounded one at a time
(largest input energy first) and each column's rounding error is spread over the columns not yet
rounded through the inverse Hessian ``(X^T X)^-1`` of the layer's sampled input patches, so the
layer's output ``W x`` moves as little as possible. A depthwise conv is one 9-column problem per
channel, all solved at once. A layer whose result does not lower the output error on its samples
keeps round-to-nearest.

A matrix with ``k <= EXACT_MAX_K`` columns (a depthwise 3x3 conv: 9) needs no greedy order: all
``2**k`` floor/ceil choices of each output channel are scored by ``e^T H e`` (``e`` the rounding
error, ``H`` the input's second moment) and the best is kept: the layer-local optimum among the
neighbouring grid points. (Scoring on the covariance instead, since bias correction removes the
mean error, measured worse: benchmarks/INT8_EXACT.md.)
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import onnx
import torch

from .placement import Plan
from .reconstruct import Site, apply, output_mse, patches, positions_for, sample_positions, single_thread, walk

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it (keeps the inverse stable)
POSITIONS = 8192
BLOCK = 128
EXACT_MAX_K = 9  # 2**9 = 512 candidates per output channel
MODES = ("gptq", "exact")  # exact: the exact search where k <= EXACT_MAX_K, nearest elsewhere


def gptq_matrix(w: torch.Tensor, scale: torch.Tensor, x: torch.Tensor,
                damping: float = DAMPING, block: int = BLOCK) -> torch.Tensor:
    """Int8 weights ``[G, O, K]`` (as float) for ``x @ (scale * q)^T ~ x @ w^T``.

    ``w`` float weights ``[G, O, K]``; ``scale`` ``[G, O, 1]``; ``x`` input patches ``[P, G, K]``.
    Columns are rounded in blocks of ``block``; the columns after a block get its errors in one
    batched matmul (the lazy update that keeps wide layers, K in the thousands, fast).
    """
    xg = x.float().permute(1, 2, 0)  # [G, K, P]
    hessian = torch.bmm(xg, xg.transpose(1, 2))  # [G, K, K]
    diag = torch.diagonal(hessian, dim1=1, dim2=2)
    dead = diag <= 0  # an input that is always zero: any rounding of its column is exact
    order = torch.argsort(diag, dim=1, descending=True)  # "act order": large inputs first
    eye = torch.eye(hessian.shape[-1])
    hessian = hessian + eye * (damping * diag.mean(dim=1).clamp_min(1e-12))[:, None, None] \
        + torch.diag_embed(dead.float())
    hessian = torch.gather(torch.gather(hessian, 1, order[:, :, None].expand_as(hessian)), 2,
                           order[:, None, :].expand_as(hessian))
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    work = torch.gather(w.float(), 2, order[:, None, :].expand(*w.shape)).contiguous()
    s = scale.float()[..., 0]  # [G, O]
    q = torch.empty_like(work)
    k = work.shape[-1]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        part, errors = work[..., i1:i2].clone(), torch.empty_like(work[..., i1:i2])
        for j in range(i2 - i1):
            q[..., i1 + j] = torch.clamp(torch.round(part[..., j] / s), -127, 127)
            err = (part[..., j] - q[..., i1 + j] * s) / upper[:, i1 + j, i1 + j][:, None]
            part[..., j + 1:] -= err[..., None] * upper[:, None, i1 + j, i1 + j + 1:i2]
            errors[..., j] = err
        work[..., i2:] -= torch.bmm(errors, upper[:, i1:i2, i2:])
    inverse = torch.argsort(order, dim=1)
    return torch.gather(q, 2, inverse[:, None, :].expand(*q.shape))


def exact_matrix(w: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Int8 weights ``[G, O, K]`` (as float, ``K <= EXACT_MAX_K``) minimising
    ``(q*s - w) H (q*s - w)^T`` per output channel over every floor/ceil choice of its K weights.

    ``x`` input patches ``[P, G, K]``; ``H`` their second moment.
    """
    k = w.shape[-1]
    if k > EXACT_MAX_K:
        raise ValueError(f"exact rounding enumerates 2**k choices; k={k} > {EXACT_MAX_K}")
    xg = x.double().permute(1, 2, 0)  # [G, K, P]
    hessian = torch.bmm(xg, xg.transpose(1, 2)) / max(x.shape[0], 1)  # [G, K, K]
    bits = ((torch.arange(2 ** k)[:, None] >> torch.arange(k)) & 1).double()  # [M, K]
    s = scale.double()  # [G, O, 1]
    low = torch.floor(w.double() / s)
    cand = torch.clamp(low[:, :, None, :] + bits, -127, 127)  # [G, O, M, K]
    err = cand * s[..., None] - w.double()[:, :, None, :]
    cost = torch.einsum("gomk,gkl,goml->gom", err, hessian, err)
    best = cost.argmin(dim=-1)  # [G, O]
    return torch.gather(cand, 2, best[:, :, None, None].expand(-1, -1, 1, k))[:, :, 0].float()


def round_weights(fp32: onnx.ModelProto, plan: Plan, ranges: dict, data: np.ndarray, *,
                  mode: str = "gptq", seed: int = 0,
                  log: Callable[[str], None] | None = None,
                  report: dict | None = None) -> dict[str, np.ndarray]:
    """{int8 Conv/Gemm name: int8 weight (ONNX layout)} rounded on ``data``: the exact search
    where a layer has at most ``EXACT_MAX_K`` inputs per output, elsewhere GPTQ (``mode="gptq"``)
    or nothing (``mode="exact"``). Layers where it does not lower the output error keep
    round-to-nearest (and are left out of the dict)."""
    if mode not in MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; use one of {MODES}")
    log = log or (lambda msg: None)
    out: dict[str, np.ndarray] = {}
    t0 = time.time()
    tried: list[str] = []

    def on_linear(site: Site):
        layer = site.layer
        small = layer.to_matrix(layer.weight).shape[-1] <= EXACT_MAX_K
        if mode == "exact" and not small:
            return None
        gen = torch.Generator().manual_seed(seed + len(tried))
        tried.append(layer.name)
        pos = sample_positions(tuple(site.y_fp32.shape),
                               min(POSITIONS, positions_for(layer, site.y_fp32.shape)), gen)
        with torch.no_grad():
            x = patches(layer, site.x, pos)
            w, scale = layer.to_matrix(layer.weight), layer.scales()
            nearest = torch.clamp(torch.round(w / scale), -127, 127)
            ref = apply(x, w, None)  # the float weight on the same (quantized) input
            rounded = exact_matrix(w, scale, x) if small else gptq_matrix(w, scale, x)
            before = output_mse(x, scale * nearest, None, ref)
            after = output_mse(x, scale * rounded, None, ref)
        if report is not None:
            report[layer.name] = {"mse_nearest": before, "mse_rounded": after,
                                  "method": "exact" if small else "gptq"}
        if not after < before:
            return None
        out[layer.name] = layer.from_matrix(rounded).astype(np.int8)
        return out[layer.name]

    with single_thread():
        walk(fp32, plan, dict(ranges), data, on_linear=on_linear)
    what = "exact/GPTQ" if mode == "gptq" else "exact"
    log(f"calibration: {what} weight rounding lowered the output error of {len(out)} of "
        f"{len(tried)} int8 layer(s) ({time.time() - t0:.0f} s)")
    return out


__all__ = ["EXACT_MAX_K", "exact_matrix", "gptq_matrix", "round_weights"]
