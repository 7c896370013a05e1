"""AdaRound (Nagel et al. 2020): learn whether each int8 weight rounds up or down.

Per Conv/Gemm, in topological order, with every upstream layer already quantized (activations and
the weights chosen so far): minimise ``|| W_q x_q - W x ||^2`` (the layer's output error against
the FP32 model's output on its own FP32 input, so upstream error is compensated) over the rounding
of ``W / scale`` only; the scale stays :func:`~.int8.quantize_weight`'s per-channel max-abs scale.
The rounding is relaxed to ``floor(W/s) + h(V)``, ``h`` a rectified sigmoid started at the
fractional part; a regulariser ``lambda * sum(1 - |2h - 1|^beta)`` with ``beta`` annealed from 20
to 2 after a warm-up pushes every ``h`` to 0 or 1. A layer whose learnt rounding does not lower the
output error on its samples keeps round-to-nearest.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import onnx
import torch

from .placement import Plan
from .reconstruct import single_thread, Layer, Site, apply, output_mse, outputs_at, patches, positions_for, sample_positions, walk

ZETA, GAMMA = 1.1, -0.1
DEFAULT_ITERS = 400
BATCH = 512
POSITIONS = 8192
REG = 0.01
WARMUP = 0.2
LR = 1e-2


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def adaround_matrix(w: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    bias: torch.Tensor | None = None, *, iters: int = DEFAULT_ITERS,
                    batch: int = BATCH, seed: int = 0, reg: float = REG,
                    lr: float = LR) -> tuple[torch.Tensor, dict]:
    """Integer weights ``[G, O, K]`` for ``y ~ x @ (s * q)`` learnt by AdaRound, plus stats.

    ``w`` float weights ``[G, O, K]``; ``scale`` ``[G, O, 1]``; ``x`` inputs ``[P, G, K]``; ``y``
    target outputs ``[P, G, O]``; ``bias`` ``[G, O]``. Returns round-to-nearest when learning
    does not lower the output MSE on ``x``.
    """
    gen = torch.Generator().manual_seed(seed)
    ratio = w / scale
    floor = torch.floor(ratio)
    nearest = torch.clamp(torch.round(ratio), -127, 127)
    frac = (ratio - floor).clamp(0.0, 1.0)
    v = torch.logit(((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    warm = int(WARMUP * iters)
    count = w.numel()
    for it in range(iters):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
        h = _h(v)
        soft = scale * torch.clamp(floor + h, -127, 127)
        loss = ((apply(x[idx], soft, bias) - y[idx]) ** 2).sum(-1).mean()
        if it >= warm:
            beta = 2 + 18 * 0.5 * (1 + math.cos(math.pi * (it - warm) / max(iters - warm, 1)))
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).sum() * (y.shape[-1] * y.shape[-2]) / count
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        learnt = torch.clamp(floor + (_h(v) >= 0.5).float(), -127, 127)
        mse_near = output_mse(x, scale * nearest, bias, y)
        mse_learnt = output_mse(x, scale * learnt, bias, y)
    flipped = float((learnt != nearest).float().mean())
    keep = not mse_learnt < mse_near
    stats = {"mse_nearest": mse_near, "mse_learnt": mse_learnt, "mse_adaround": min(mse_near, mse_learnt),
             "flipped": 0.0 if keep else flipped, "iters": iters, "kept_nearest": keep}
    return (nearest if keep else learnt), stats


def optimize_weights(fp32: onnx.ModelProto, plan: Plan, ranges: dict, data: np.ndarray, *,
                     iters: int = DEFAULT_ITERS, seed: int = 0, layers: set[str] | None = None,
                     log: Callable[[str], None] | None = None, report: dict | None = None) -> dict:
    """{int8 Conv/Gemm name: int8 weight (ONNX layout)} learnt by AdaRound on ``data``.

    ``ranges`` are the activation ranges of the Q/DQ model (same format as
    ``calibration.compute_ranges``); ``layers`` limits which layers learn (default: all of
    ``plan.quantized``). ``report`` (a dict) receives per-layer statistics.
    """
    log = log or (lambda msg: None)
    torch.manual_seed(seed)
    out: dict[str, np.ndarray] = {}
    t0 = time.time()

    def on_linear(site: Site):
        layer = site.layer
        if layers is not None and layer.name not in layers:
            return None
        t = time.time()
        gen = torch.Generator().manual_seed(seed + len(out))
        pos = sample_positions(tuple(site.y_fp32.shape),
                               min(POSITIONS, positions_for(layer, site.y_fp32.shape)), gen)
        with torch.no_grad():
            x = patches(layer, site.x, pos)
            y = outputs_at(site.y_fp32, layer, pos)
        bias = site.bias.reshape(layer.groups, -1) if site.bias is not None else None
        q, stats = adaround_matrix(layer.to_matrix(layer.weight), layer.scales(), x, y, bias,
                                   iters=iters, seed=seed + len(out))
        out[layer.name] = layer.from_matrix(q).astype(np.int8)
        stats.update(seconds=round(time.time() - t, 2), samples=int(len(x)))
        if report is not None:
            report[layer.name] = stats
        log(f"adaround {layer.name}: output mse {stats['mse_nearest']:.3g} -> "
            f"{stats['mse_adaround']:.3g}, {stats['flipped']:.1%} flipped, {stats['seconds']} s")
        return out[layer.name]

    with single_thread():
        walk(fp32, plan, dict(ranges), data, on_linear=on_linear)
    log(f"adaround: {len(out)} layer(s), {iters} iterations each, {time.time() - t0:.0f} s")
    return out


__all__ = ["optimize_weights", "adaround_matrix", "Layer"]
