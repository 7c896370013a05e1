"""Per-tensor activation range search against the consuming layers' OUTPUT error.

The histogram methods of :mod:`.calibration` pick a range that minimises the error of the
activation itself; what matters is the error it causes after the next Conv/Gemm, where channels
with large weights amplify it. Walking the quantized model in topological order (upstream ranges
and weights already applied, :func:`~.reconstruct.walk`), each quantized tensor's range is chosen
among a grid of fractions of its observed range (plus the range it came with) to minimise

    sum over consumers of  || layer(Q(x)) - FP32 layer output ||^2 / || FP32 layer output ||^2

on sampled output positions (a consumer that is not a Conv/Gemm, like a residual Add, counts the
relative error of ``Q(x)`` itself). A coarse grid is refined around its best point.

Not searched: a tensor whose QuantizeLinear the build rewires past equalization's redundant
``Min`` (an equalized ReLU6 output, :func:`~.equalize.drop_redundant_min`): the walk meets its Q
under the Relu's name, so it keeps its histogram range (34 of real MobileNetV2's 51 tensors on
``tensorrt``). Searching them too was measured on 2026-12-05 on ``tensorrt`` only: about neutral
in held-out KL on two calibration sets, at about 3x the search time; not yet on ``cpu``.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import onnx
import torch

from . import int8 as q8
from .placement import Plan
from .reconstruct import single_thread, apply, outputs_at, patches, sample_positions, walk

SEARCH_POSITIONS = 4096
COARSE = np.linspace(0.05, 1.0, 20)
FINE_STEP = 0.01


def fake_quant(x: torch.Tensor, rng: tuple, signed: bool) -> torch.Tensor:
    """``x`` through QuantizeLinear -> DequantizeLinear with ``int8._scale_zp(rng)``."""
    scale, zp = q8._scale_zp(rng, signed)
    lo, hi = (-128, 127) if signed else (0, 255)
    return torch.fake_quantize_per_tensor_affine(x.contiguous(), float(scale), int(zp), lo, hi)


def candidate_range(fraction: float, lo: float, hi: float, signed: bool) -> tuple[float, float, float]:
    """The range at ``fraction`` of the observed one, in ``compute_ranges``' (low, high, amax)."""
    if signed:
        amax = fraction * max(abs(lo), abs(hi), 1e-12)
        return max(lo, -amax), min(hi, amax), amax
    low, high = fraction * min(lo, 0.0), fraction * max(hi, 0.0)
    return low, high, max(abs(low), abs(high), 1e-12)


def best_range(cost: Callable[[tuple], float], lo: float, hi: float, signed: bool,
               given: tuple | None = None) -> tuple[tuple, float]:
    """(range, cost) minimising ``cost`` over a coarse fraction grid refined around its best."""
    tried: dict[tuple, float] = {}

    def score(rng: tuple) -> float:
        if rng not in tried:
            tried[rng] = cost(rng)
        return tried[rng]

    fractions = {float(f): score(candidate_range(float(f), lo, hi, signed)) for f in COARSE}
    best_f = min(fractions, key=fractions.get)
    step = float(COARSE[1] - COARSE[0])
    for f in np.arange(best_f - step, best_f + step + 1e-9, FINE_STEP):
        if 0 < f <= 1.0:
            score(candidate_range(float(round(f, 4)), lo, hi, signed))
    if given is not None:
        score(tuple(float(v) for v in given))
    rng = min(tried, key=tried.get)
    return rng, tried[rng]


def search_ranges(fp32: onnx.ModelProto, plan: Plan, ranges: dict, data: np.ndarray, *,
                  seed: int = 0, weights: dict | None = None,
                  log: Callable[[str], None] | None = None, report: dict | None = None) -> dict:
    """Ranges (``calibration.compute_ranges`` format) chosen for the consumers' output error.

    Only tensors the plan quantizes change; the rest of ``ranges`` is returned as given.
    ``weights`` (int8, e.g. from AdaRound) are the consumers' weights during the search.
    """
    log = log or (lambda msg: None)
    out = dict(ranges)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()

    def on_activation(tensor, x, consumers, fp32_output):
        lo, hi = float(x.min()), float(x.max())
        terms = []
        with torch.no_grad():
            for layer, _, w, b in consumers:
                if layer is None:
                    flat = x.reshape(-1)
                    sample = flat[torch.randint(len(flat), (min(len(flat), 1 << 18),), generator=gen)]
                    terms.append(("self", sample, None, None, sample))
                    continue
                y = fp32_output(layer.name)
                pos = sample_positions(tuple(y.shape), SEARCH_POSITIONS, gen)
                bias = b.reshape(layer.groups, -1) if b is not None else None
                terms.append(("linear", patches(layer, x, pos), layer.to_matrix(w), bias,
                              outputs_at(y, layer, pos)))

        def cost(rng: tuple) -> float:
            total = 0.0
            with torch.no_grad():
                for kind, inp, w, b, target in terms:
                    fq = fake_quant(inp, rng, plan.signed)
                    got = fq if kind == "self" else apply(fq, w, b)
                    total += float(((got - target) ** 2).sum() / (target ** 2).sum().clamp_min(1e-30))
            return total

        rng, best = best_range(cost, lo, hi, plan.signed, ranges.get(tensor))
        old = cost(tuple(ranges[tensor])) if tensor in ranges else float("nan")
        if report is not None:
            report[tensor] = {"given": list(ranges.get(tensor, ())), "chosen": list(rng),
                              "cost_given": old, "cost_chosen": best}
        log(f"range {tensor}: amax {ranges.get(tensor, (0, 0, float('nan')))[2]:.4g} -> {rng[2]:.4g} "
            f"(relative output error {old:.3g} -> {best:.3g})")
        out[tensor] = rng
        return rng

    with single_thread():
        walk(fp32, plan, dict(ranges), data, on_activation=on_activation, weights=weights)
    log(f"range search: {len(plan.edges)} tensor(s), {time.time() - t0:.0f} s")
    return out


__all__ = ["search_ranges", "best_range", "candidate_range", "fake_quant"]
