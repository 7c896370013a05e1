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
from typing import Callable, Collection

import numpy as np
import onnx
import torch

from . import int8 as q8
from .placement import Plan
from .samples import evenly_spaced
from .torch_exec import _QRANGE, Executor

STEPS = 160
BATCH = 16
MICRO_BATCH = 4  # autograd keeps ~190 MB per 224x224 MobileNetV2 sample: 16 at once peaked 4.4 GB
MAX_SAMPLES = 256  # tuned on at most this many (evenly spaced), with their flips: memory stays bounded
LEARNING_RATE = 5e-3


class _Graph:
    """The Q/DQ model as a differentiable torch function of its activation log-scales: the
    :class:`~.torch_exec.Executor` walk, with each tuned Q -> DQ pair run as a fake-quant whose
    scale is ``base scale x exp(log-scale)``."""

    def __init__(self, qmodel: onnx.ModelProto, tunable: dict[str, str]):
        self.walk = Executor(qmodel, {})
        self.input, self.output = qmodel.graph.input[0].name, qmodel.graph.output[0].name
        consts, elem = self.walk.consts, self.walk.elem_type
        self.tunable = {}  # Q node name -> (log-scale key, base scale, zero-point, lo, hi)
        for node in self.walk.nodes:
            if node.op_type == "QuantizeLinear" and node.name in tunable \
                    and node.output[0] in self.walk.fused:
                lo, hi = _QRANGE[elem[node.input[2]]]
                self.tunable[node.name] = (tunable[node.name], float(consts[node.input[1]]),
                                           float(consts[node.input[2]]), lo, hi)

    def __call__(self, x: torch.Tensor, log_scale: dict[str, torch.Tensor]) -> torch.Tensor:
        walk = self.walk
        walk.reset({self.input: x})
        while not walk.done():
            node = walk.peek()
            if node.op_type == "QuantizeLinear" and node.input[0] in walk.env:
                walk.step(self._fake_quant(node, walk.value(node.input[0]), log_scale))
            else:
                walk.step()
        return walk.env[self.output]

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
                log: Callable[[str], None] | None = None, report: dict | None = None,
                fp32_layers: Collection[str] = ()) -> dict:
    """``ranges`` with each quantized activation's range scaled by a factor tuned end to end
    (mean KL of the prediction on ``data``, at most ``MAX_SAMPLES`` of it, and its flips; each
    step's gradient is accumulated ``MICRO_BATCH`` samples at a time). Tensors the plan does not
    quantize are returned as given. ``fp32_layers``: kept layers fp16 cannot hold (see
    :func:`.int8.build_qdq`)."""
    log = log or (lambda _m: None)
    steps = steps or STEPS
    t0 = time.time()
    qmodel = q8.build_qdq(fp32, plan, ranges, bias, weights=weights, shift=False,  # torch_exec: no Pad
                          fp32_layers=fp32_layers)
    sources = {t: plan.range_of.get(t, t) for t in plan.edges}
    tunable = {f"{q8.safe_name(t)}_QuantizeLinear": src for t, src in sources.items()}
    graph = _Graph(qmodel, tunable)
    keys = sorted({src for src in sources.values()})
    log_scale = {k: torch.zeros((), requires_grad=True) for k in keys}
    x = np.asarray(evenly_spaced(data, MAX_SAMPLES), np.float32)
    x = np.concatenate([x, x[..., ::-1]])
    ref = q8.run(fp32, x)
    ref_logp = torch.log_softmax(torch.from_numpy(ref).double(), 1).float()
    xt = torch.from_numpy(np.ascontiguousarray(x))
    opt = torch.optim.Adam(log_scale.values(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = float(_kl(ref_logp, _batched(graph, xt, log_scale)))
    for step in range(steps):
        idx = torch.randperm(len(xt), generator=gen)[:batch]
        opt.zero_grad()
        loss = 0.0
        for part in idx.split(MICRO_BATCH):  # the batch's gradient, a few samples' graph at a time
            part_loss = _kl(ref_logp[part], graph(xt[part], log_scale)) * (len(part) / len(idx))
            part_loss.backward()
            loss += part_loss.item()
        opt.step()
        if (step + 1) % 40 == 0:
            log(f"int8 tuning: step {step + 1}/{steps}, batch KL {loss:.4f}")
    with torch.no_grad():
        after = float(_kl(ref_logp, _batched(graph, xt, log_scale)))
    out = dict(ranges)
    factors = {k: float(torch.exp(v.detach())) for k, v in log_scale.items()}
    if after < before:
        for k, f in factors.items():
            lo, hi, amax = ranges[k]
            out[k] = (lo * f, hi * f, amax * f)
    if report is not None:
        report.update(kl_before=float(f"{before:.4g}"), kl_after=float(f"{after:.4g}"),
                      applied=after < before, tensors=len(keys), steps=steps,
                      seconds=round(time.time() - t0, 1),
                      factor_range=[round(min(factors.values()), 3), round(max(factors.values()), 3)])
    log(f"int8 tuning: calibration KL {before:.4f} -> {after:.4f} over {len(keys)} activation "
        f"ranges in {time.time() - t0:.0f} s")
    return out


def _batched(graph: _Graph, x: torch.Tensor, log_scale: dict, size: int = 32) -> torch.Tensor:
    return torch.cat([graph(x[i:i + size], log_scale) for i in range(0, len(x), size)])
