"""End-to-end tuning of the activation ranges against the network's prediction.

The range search (:mod:`.range_search`) picks each activation's range for its consumers' output
error, one tensor at a time. What a user judges is the prediction, and errors of different
tensors add up and interact on the way there. This stage starts from those ranges and tunes one
scale factor per quantized activation (the range's ends scaled together, the zero-point kept) to
minimise the mean KL(FP32 softmax || Q/DQ softmax) over the calibration samples and their
horizontal flips: the prediction-difference objective of PD-Quant (Liu et al., CVPR 2023), here
on the activation scales only. Rounding and clamping use the straight-through estimator with
LSQ's scale gradient (Esser et al. 2020). Int8 weights and bias corrections stay as given; the
tuned ranges go back to :func:`~.int8.build_qdq`, so the int32 biases of the ``cpu`` placement
are recomputed for the new input scales.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import onnx
import torch

from . import int8 as q8
from .placement import Plan
from .torch_exec import OPS, _attrs, _dequantize, _fused_qdq, _QRANGE

STEPS = 160
BATCH = 16
LEARNING_RATE = 5e-3


class _Graph:
    """The Q/DQ model as a differentiable torch function of its activation log-scales."""

    def __init__(self, qmodel: onnx.ModelProto, tunable: dict[str, str]):
        from onnx import numpy_helper

        g = qmodel.graph
        self.nodes = list(g.node)
        self.output = g.output[0].name
        self.input = g.input[0].name
        consts = {t.name: torch.from_numpy(np.array(numpy_helper.to_array(t))) for t in g.initializer}
        for key, value in consts.items():  # fp16 values computed on in fp32, as the Casts do
            if value.dtype == torch.float16:
                consts[key] = value.float()
        elem = {t.name: t.data_type for t in g.initializer}
        for node in self.nodes:
            if node.op_type == "Constant":
                value = _attrs(node)["value"]
                consts[node.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(value)))
                elem[node.output[0]] = value.data_type
        self.fused = _fused_qdq(self.nodes)
        self.tunable = {}  # Q node name -> (group key, base scale, zero-point, lo, hi)
        for node in self.nodes:
            if node.op_type == "QuantizeLinear" and node.name in tunable and node.output[0] in self.fused:
                lo, hi = _QRANGE[elem[node.input[2]]]
                self.tunable[node.name] = (tunable[node.name], float(consts[node.input[1]]),
                                           float(consts[node.input[2]]), lo, hi)
        with torch.no_grad():  # fold everything computed from constants only (weights, biases)
            for node in self.nodes:
                if node.input and all(not i or i in consts for i in node.input) \
                        and node.op_type == "DequantizeLinear":
                    args = [consts[i] if i else None for i in node.input]
                    consts[node.output[0]] = _dequantize(args[0], args[1],
                                                         args[2] if len(args) > 2 else None,
                                                         _attrs(node))
        self.consts = consts
        self.attrs = {n.name: _attrs(n) for n in self.nodes}

    def __call__(self, x: torch.Tensor, log_scale: dict[str, torch.Tensor]) -> torch.Tensor:
        env = {self.input: x}
        value = lambda name: env[name] if name in env else self.consts[name]  # noqa: E731
        for node in self.nodes:
            if node.output[0] in self.consts or node.op_type == "Constant":
                continue
            if node.op_type == "QuantizeLinear":
                out = self._fake_quant(node, value(node.input[0]), log_scale)
            elif node.op_type == "DequantizeLinear" and node.input[0] in self.fused:
                out = value(node.input[0])
            else:
                args = [value(i) if i else None for i in node.input]
                while args and args[-1] is None:
                    args.pop()
                out = OPS[node.op_type](node, self.attrs[node.name], *args)
            env[node.output[0]] = out
        return env[self.output]

    def _fake_quant(self, node, x, log_scale):
        if node.name not in self.tunable:
            raise AssertionError(f"{node.name}: an activation QuantizeLinear outside the tuned set")
        key, s0, z, lo, hi = self.tunable[node.name]
        s = s0 * torch.exp(log_scale[key])
        v = x / s + z
        q = torch.clamp(v + (torch.round(v) - v).detach(), lo, hi)
        return (q - z) * s


def _kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    logq = torch.log_softmax(logits, 1)
    return (ref_logp.exp() * (ref_logp - logq)).sum(1).mean()


def tune_ranges(fp32: onnx.ModelProto, plan: Plan, ranges: dict, data: np.ndarray,
                bias: dict | None = None, weights: dict | None = None, *, steps: int | None = None,
                batch: int = BATCH, lr: float = LEARNING_RATE, seed: int = 0,
                log: Callable[[str], None] | None = None, report: dict | None = None) -> dict:
    """``ranges`` with each quantized activation's range scaled by a factor tuned end to end
    (mean KL of the prediction on ``data`` and its flips). Tensors the plan does not quantize
    are returned as given."""
    log = log or (lambda _m: None)
    steps = steps or STEPS
    t0 = time.time()
    qmodel = q8.build_qdq(fp32, plan, ranges, bias, weights=weights)
    sources = {t: plan.range_of.get(t, t) for t in plan.edges}
    tunable = {f"{q8._safe(t)}_QuantizeLinear": src for t, src in sources.items()}
    graph = _Graph(qmodel, tunable)
    keys = sorted({src for src in sources.values()})
    log_scale = {k: torch.zeros((), requires_grad=True) for k in keys}
    x = np.asarray(data, np.float32)
    x = np.concatenate([x, x[..., ::-1]])
    ref = q8.run(fp32, x)
    ref_logp = torch.log_softmax(torch.from_numpy(ref).double(), 1).float()
    xt = torch.from_numpy(np.ascontiguousarray(x))
    opt = torch.optim.Adam(log_scale.values(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    before = after = None
    with torch.no_grad():
        before = float(_kl(ref_logp, _batched(graph, xt, log_scale)))
    for step in range(steps):
        idx = torch.randperm(len(xt), generator=gen)[:batch]
        loss = _kl(ref_logp[idx], graph(xt[idx], log_scale))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 40 == 0:
            log(f"int8 tuning: step {step + 1}/{steps}, batch KL {loss.item():.4f}")
    with torch.no_grad():
        after = float(_kl(ref_logp, _batched(graph, xt, log_scale)))
    out = dict(ranges)
    factors = {k: float(torch.exp(v)) for k, v in log_scale.items()}
    if after < before:
        for k, f in factors.items():
            lo, hi, amax = ranges[k]
            out[k] = (lo * f, hi * f, amax * f)
    if report is not None:
        report.update(kl_before=float(f"{before:.4g}"), kl_after=float(f"{after:.4g}"), kept=after < before,
                      tensors=len(keys), steps=steps, seconds=round(time.time() - t0, 1),
                      factor_range=[round(min(factors.values()), 3), round(max(factors.values()), 3)])
    log(f"int8 tuning: calibration KL {before:.4f} -> {after:.4f} over {len(keys)} activation "
        f"ranges in {time.time() - t0:.0f} s")
    return out


def _batched(graph: _Graph, x: torch.Tensor, log_scale: dict, size: int = 32) -> torch.Tensor:
    return torch.cat([graph(x[i:i + size], log_scale) for i in range(0, len(x), size)])
