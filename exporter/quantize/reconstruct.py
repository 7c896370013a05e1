"""Layer-wise reconstruction walk shared by AdaRound and the activation range search.

``walk`` runs the FP32 graph and the Q/DQ graph of a :class:`~.placement.Plan` side by side in
torch (:mod:`.torch_exec`), in topological order, on the calibration data. At every activation
quantizer it calls ``on_activation`` (which may change the tensor's range before the quantizer
runs); at every int8 Conv/Gemm it calls ``on_linear`` with the layer's input *as the quantized
model sees it* (every upstream choice already applied) and the FP32 model's output of that layer
(which may return new int8 weights, used downstream from then on). Memory follows the live set
of the two graphs over the calibration batch plus one layer's sampled patches.

Layers are handled as matrices: a Conv over im2col patches at sampled output positions (the output
at a position depends only on its input patch, so sampled positions estimate the layer's output
error without materialising the whole unfolded input), a Gemm over its rows.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from . import int8 as q8
from .placement import Graph, Plan, weight_axis
from .samples import evenly_spaced
from .torch_exec import Executor, _attrs

MAX_PATCH_FLOATS = 24_000_000  # ~96 MB of sampled patches per layer
MAX_POSITIONS = 16384
MAX_SAMPLES = 64


@contextmanager
def single_thread():
    """One torch thread while reconstructing: the many small ops of the loop run 5-10x slower
    with two threads on a shared 2-core machine (measured), and the big ones barely gain."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Layer:
    """One int8 Conv/Gemm seen as ``groups`` matrices ``[out/groups, in_per_group]``."""

    name: str
    op: str
    attrs: dict
    weight: np.ndarray  # FP32 weight, ONNX layout
    groups: int
    axis: int  # per-channel axis of the weight (placement.weight_axis)

    @classmethod
    def of(cls, node: onnx.NodeProto, weight: np.ndarray) -> "Layer":
        attrs = _attrs(node)
        return cls(node.name, node.op_type, attrs, weight,
                   int(attrs.get("group", 1)) if node.op_type == "Conv" else 1, weight_axis(node))

    def to_matrix(self, w: np.ndarray | torch.Tensor) -> torch.Tensor:
        """ONNX-layout weight -> ``[groups, out/groups, k]`` float32 tensor."""
        w = torch.as_tensor(np.array(w, dtype=np.float32))
        if self.op == "Gemm":
            return (w if self.axis == 0 else w.t()).reshape(1, w.shape[self.axis], -1).contiguous()
        return w.reshape(self.groups, w.shape[0] // self.groups, -1)

    def from_matrix(self, m: torch.Tensor) -> np.ndarray:
        """Inverse of :meth:`to_matrix` (numpy, ONNX layout)."""
        if self.op == "Gemm":
            m = m.reshape(m.shape[1], -1)
            return (m if self.axis == 0 else m.t()).contiguous().numpy()
        return m.reshape(self.weight.shape).numpy()

    def scales(self) -> torch.Tensor:
        """Per-output-channel weight scales (``int8.quantize_weight``'s), shaped like the matrix."""
        _, scale = q8.quantize_weight(self.weight, self.axis)
        return torch.from_numpy(scale).reshape(self.groups, -1, 1)


def sample_positions(out_shape: tuple, count: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``count`` distinct (sample, y, x...) output positions (all of them when fewer exist)."""
    spatial = list(out_shape[2:])
    total = int(out_shape[0] * np.prod(spatial or [1]))
    flat = torch.randperm(total, generator=gen)[:count] if count < total else torch.arange(total)
    idx, rest = [], flat
    for size in reversed([out_shape[0]] + spatial):
        idx.append(rest % size)
        rest = rest // size
    return tuple(reversed(idx))


def patches(layer: Layer, x: torch.Tensor, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Inputs of ``layer`` at output positions ``pos``: ``[P, groups, k]`` (matrix column order)."""
    if layer.op == "Gemm":
        rows = x.t() if layer.attrs.get("transA", 0) else x
        return rows[pos[0]].reshape(len(pos[0]), 1, -1)
    a = layer.attrs
    kernel = list(layer.weight.shape[2:])
    rank = len(kernel)
    strides = list(a.get("strides", [1] * rank))
    dil = list(a.get("dilations", [1] * rank))
    pads = list(a.get("pads", [0] * 2 * rank))
    flat = []
    for b, e in zip(reversed(pads[:rank]), reversed(pads[rank:])):
        flat += [b, e]
    xp = torch.nn.functional.pad(x, flat)
    cols = []
    for offset in np.ndindex(*kernel):
        coords = [p * s + o * d for p, s, o, d in zip(pos[1:], strides, offset, dil)]
        cols.append(xp[(pos[0], slice(None), *coords)])  # [P, C]
    out = torch.stack(cols, dim=-1)  # [P, C, k...] in (channel, kernel) order
    return out.reshape(out.shape[0], layer.groups, -1)


def outputs_at(y: torch.Tensor, layer: Layer, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Layer output ``y`` at ``pos``: ``[P, groups, out/groups]``."""
    vals = y[pos[0]] if layer.op == "Gemm" else y[(pos[0], slice(None), *pos[1:])]
    return vals.reshape(vals.shape[0], layer.groups, -1)


def apply(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Layer on patches: ``[P, G, k] x [G, O, k] -> [P, G, O]`` (+ bias ``[G, O]``)."""
    y = torch.einsum("pgk,gok->pgo", x, w) if w.shape[0] > 1 else (x[:, 0] @ w[0].t())[:, None]
    return y if b is None else y + b


def output_mse(x: torch.Tensor, w: torch.Tensor, b, y: torch.Tensor, chunk: int = 4096) -> float:
    """Mean squared difference between the layer ``w`` (+ ``b``) on patches ``x`` and ``y``."""
    total = 0.0
    for i in range(0, len(x), chunk):
        total += float(((apply(x[i:i + chunk], w, b) - y[i:i + chunk]) ** 2).sum())
    return total / max(y.numel(), 1)


def positions_for(layer: Layer, out_shape: tuple) -> int:
    k = int(np.prod(layer.weight.shape[1:])) * layer.groups if layer.op == "Conv" \
        else int(layer.weight.shape[1 - layer.axis])
    return max(256, min(MAX_POSITIONS, MAX_PATCH_FLOATS // max(k, 1)))


@dataclass
class Site:
    """What the hooks get: the executors, the layer and the tensors around it."""

    layer: Layer
    x: torch.Tensor  # the layer's input in the quantized model (after its input Q/DQ)
    y_fp32: torch.Tensor  # the FP32 model's output of this layer
    weight: torch.Tensor  # the weight the quantized model currently uses (dequantized)
    bias: torch.Tensor | None


def walk(fp32: onnx.ModelProto, plan: Plan, ranges: dict, data: np.ndarray, *,
         on_activation: Callable | None = None, on_linear: Callable | None = None,
         weights: dict | None = None, max_samples: int = MAX_SAMPLES) -> None:
    """Walk the quantized model layer by layer (see the module docstring) on at most
    ``max_samples`` of ``data`` (the whole batch is live at once: ~2 GB for MobileNetV2 at 224
    with 64 samples).

    ``on_activation(tensor, x, consumers, fp32_output)`` returns a new range tuple or None;
    ``consumers`` lists ``(Layer or None, slot, current weight, bias)`` of the Q/DQ'd edges, and
    ``fp32_output(layer_name)`` gives that layer's FP32 output. ``on_linear(site)`` returns int8
    weights (ONNX layout) or None. ``ranges`` is updated in place by ``on_activation``'s answers.
    """
    data = evenly_spaced(data, max_samples)  # memory follows the batch: bound it
    qdq = q8.build_qdq(fp32, plan, ranges, None, kept_dtype="fp32", weights=weights,
                      shift=False)  # kept layers: fp32 here; torch_exec runs no Pad
    graph = Graph(fp32)
    inputs = {fp32.graph.input[0].name: torch.from_numpy(np.ascontiguousarray(data, np.float32))}
    ex_q, ex_f = Executor(qdq, inputs), Executor(fp32, dict(inputs))
    quantized = set(plan.quantized)
    stash: dict[str, torch.Tensor] = {}
    layers = {n: Layer.of(graph.nodes[n], graph.weight(graph.nodes[n])) for n in quantized}
    qnodes = {n.name: n for n in qdq.graph.node}
    q_of_src: dict[str, list[onnx.NodeProto]] = {}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in plan.edges:
            src = plan.range_of.get(node.input[0], node.input[0])
            q_of_src.setdefault(src, []).append(node)

    chosen: dict[str, np.ndarray] = dict(weights or {})

    def fp32_bias(node: onnx.NodeProto) -> torch.Tensor | None:
        if len(node.input) > 2 and node.input[2] in graph.inits:
            return torch.from_numpy(numpy_helper.to_array(graph.inits[node.input[2]]).astype(np.float32))
        return None

    def current_weight(name: str) -> torch.Tensor:
        """The dequantized weight layer ``name`` uses now (learnt, given, or round-to-nearest)."""
        layer = layers[name]
        q, scale = q8.stored_weight(layer.weight, graph.nodes[name], plan, chosen.get(name))
        shape = [1] * q.ndim
        shape[layer.axis] = -1
        return torch.from_numpy(q.astype(np.float32) * scale.reshape(shape))

    def fp32_output(name: str) -> torch.Tensor:
        while name not in stash:
            node = ex_f.step()
            if node.name in quantized and node.name not in ex_q.executed:
                stash[node.name] = ex_f.value(node.output[0])
        return stash[name]

    while not ex_q.done():
        node = ex_q.peek()
        tensor = node.input[0] if node.op_type == "QuantizeLinear" else None
        if on_activation and tensor in plan.edges and plan.range_of.get(tensor, tensor) == tensor:
            consumers = []
            for t in [tensor] + [k for k, v in plan.range_of.items() if v == tensor]:
                for name, slot in plan.edges.get(t, []):
                    qn = qnodes[name]
                    if name in quantized and slot == 0 and t == tensor:
                        b = fp32_bias(graph.nodes[name])
                        consumers.append((layers[name], slot, current_weight(name), b))
                    else:
                        consumers.append((None, slot, None, None))
            new = on_activation(tensor, ex_q.value(tensor), consumers, fp32_output)
            if new is not None:
                ranges[tensor] = tuple(float(v) for v in new)
                scale, zp = q8._scale_zp(ranges[tensor], plan.signed)
                for qn in q_of_src.get(tensor, []):
                    ex_q.consts[qn.input[1]] = torch.tensor(scale, dtype=torch.float32)
                    ex_q.consts[qn.input[2]] = torch.tensor(zp)
        if on_linear and node.name in quantized:
            layer = layers[node.name]
            b = ex_q.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            site = Site(layer, ex_q.value(node.input[0]), fp32_output(node.name),
                        ex_q.value(node.input[1]), b)
            q = on_linear(site)
            if q is not None:
                chosen[node.name] = q
                ex_q.env[node.input[1]] = current_weight(node.name)
        stash.pop(node.name, None)
        ex_q.step()
