"""Activation-range equalization into depthwise consumers (the FP32 function is unchanged).

A per-tensor int8 activation wastes its levels on channels whose range is far below the tensor's
widest channel: on real MobileNetV2 the stem's 32 output channels peak between 0.02 and 3.4, and
that one tensor alone costs more top-1 agreement than any other (benchmarks/INT8_LEVERS.md).
Where a Conv -> ReLU/ReLU6 feeds only depthwise Convs (MobileNet's stem and every expansion),
channel ``i`` of the tensor is scaled up by ``s_i = min(widest / range_i, CAP)``: the producer's
output channel ``i`` (weight row and bias) is multiplied by ``s_i`` and the depthwise filter of
channel ``i`` divided by it. Both weights are quantized per output channel, so their int8 error
does not change; the activation's channels then share one range and each keeps its resolution.

ReLU is positively homogeneous, so the scaled graph is exact. ReLU6 is not: its ``Clip(0, 6)``
becomes ``Relu`` then ``Min`` with the per-channel bound ``6 * s_i``, exact in FP32. When a
QuantizeLinear reads that ``Min`` and saturates at or below every bound, the ``Min`` changes
nothing and :func:`drop_redundant_min` removes it from the Q/DQ graph, so TensorRT and ONNX
Runtime fuse Conv + ReLU + Q as before. Where the accuracy budget keeps a pair in FP32 (no Q reads
the ``Min``), :func:`restore_float_pairs` undoes its scaling: there it buys nothing, and ONNX
Runtime runs the ``Min`` as a separate pass over the tensor.

With ``dense_alpha`` (the export's default when bias correction is on), a depthwise Conv ->
ReLU/ReLU6 read only by dense Convs (MobileNet's projections) is equalized too: the depthwise
output channel ``i`` is scaled by ``s_i = min(widest / range_i, CAP) ** alpha`` and the dense
consumers' input column ``i`` divided by it. That is not free: the dense weights are quantized per
*output* channel, so a shrunk column rounds coarser relative to its size. ``alpha = 0.5`` splits
the range between the activation and the weights, as SmoothQuant's migration strength does (Xiao
et al. 2023); alone it raised the held-out KL, with bias correction it lowered it on both
placements (benchmarks/INT8_EQ_DENSE.md).

With ``stream_alpha`` (on with ``dense_alpha``), each residual stream is equalized too: Conv
outputs without an activation joined by Adds (a MobileNetV2 stage's projections and its adds),
read only by those Adds and by Convs. Every producer's output channel ``i`` is scaled by
``s_i = min(widest / range_i, CAP) ** alpha`` (range: the channel's largest magnitude over all
the stream's tensors) and every reader's input column ``i`` divided by it; everything between is
linear, so the FP32 function is unchanged. The producers' weights are quantized per output channel
(free); the readers pay as the dense pairs do (benchmarks/INT8_EQ_STREAM.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..onnx_graph import GraphIndex, conv_group

# largest per-channel scale. A channel quiet on the calibration data may fire on other photos,
# and a large scale then blows its range up: 8 held better than 32 on photos the calibration
# never saw (benchmarks/INT8_EQ_CAP.md)
CAP = 8.0
DENSE_ALPHA = 0.5  # exponent of the depthwise -> dense scales (benchmarks/INT8_EQ_DENSE.md)
STREAM_ALPHA = 0.5  # exponent of the residual streams' scales (benchmarks/INT8_EQ_STREAM.md)


@dataclass
class Pair:
    producer: onnx.NodeProto  # Conv whose output channels are scaled
    activation: onnx.NodeProto  # Relu or Clip(0, c)
    consumers: list[onnx.NodeProto]  # the Convs reading the activation (depthwise, or dense)
    bound: float | None  # the Clip's upper bound (None: Relu)
    dense: bool = False  # consumers are dense convs: their input columns take the 1/s_i


@dataclass
class Stream:
    tensors: list[str]  # the stream's tensors: its producers' outputs and its Adds' outputs
    producers: list[onnx.NodeProto]  # Convs writing it: output channels scaled
    readers: list[tuple[onnx.NodeProto, bool]]  # (Conv reading it at input 0, dense): input columns divided


def find_pairs(model: onnx.ModelProto, dense: bool = False) -> list[Pair]:
    """Conv -> Relu/Clip(0, c) -> depthwise Conv(s) chains whose scaling is free and exact; with
    ``dense``, also depthwise Conv -> Relu/Clip(0, c) -> dense Conv(s) (MobileNet's projections)."""
    graph = GraphIndex(model)
    pairs = []
    for act in model.graph.node:
        bound = relu_bound(graph, act)
        if bound is False:
            continue
        prod = graph.producer.get(act.input[0])
        if prod is None or prod.op_type != "Conv" or not _const_weight(graph, prod) \
                or len(graph.consumers.get(act.input[0], [])) != 1:
            continue
        users = graph.consumers.get(act.output[0], [])
        if not users or act.output[0] in graph.outputs or any(slot != 0 for _, slot in users):
            continue
        consumers = [node for node, _ in users]
        kind = _pair_kind(graph, prod, consumers)
        if kind == "depthwise" or (dense and kind == "dense"):
            pairs.append(Pair(prod, act, consumers, bound, dense=kind == "dense"))
    return pairs


def find_streams(model: onnx.ModelProto) -> list[Stream]:
    """Residual streams: sets of tensors joined by two-input Adds, each written by a Conv with
    constant weights or by an Add of the set, and read only by Adds of the set or by dense or
    depthwise Convs at input 0 (no activation, no graph output, no other reader). A set of one
    tensor (no Add) is a Conv -> Conv link, ShuffleNetV2's: equalized the same way."""
    graph = GraphIndex(model)
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        while parent.setdefault(t, t) != t:
            t = parent[t]
        return t

    for node in model.graph.node:
        if node.op_type == "Conv" and _const_weight(graph, node):
            root(node.output[0])
        elif node.op_type == "Add" and len(node.input) == 2:
            for t in node.input:
                parent[root(t)] = root(node.output[0])
    groups: dict[str, list[str]] = {}
    for t in list(parent):
        groups.setdefault(root(t), []).append(t)
    streams = []
    for tensors in groups.values():
        stream = _stream(graph, set(tensors))
        if stream is not None:
            streams.append(stream)
    return streams


def _stream(graph: GraphIndex, tensors: set[str]) -> Stream | None:
    producers, readers = [], []
    for t in sorted(tensors):
        prod = graph.producer.get(t)
        if prod is None or t in graph.outputs:
            return None
        if prod.op_type == "Conv" and _const_weight(graph, prod):
            producers.append(prod)
        elif not (prod.op_type == "Add" and all(i in tensors for i in prod.input)):
            return None
        for node, slot in graph.consumers.get(t, []):
            if node.op_type == "Add" and node.output[0] in tensors:
                continue
            if slot != 0 or not (_dense(graph, node) or _depthwise(graph, node)):
                return None
            readers.append((node, _dense(graph, node)))
    if not producers or not readers or len({graph.inits[p.input[1]].dims[0] for p in producers}) != 1:
        return None  # (writers of different widths: an Add that broadcasts)
    return Stream(sorted(tensors), producers, readers)


def _pair_kind(graph: GraphIndex, producer: onnx.NodeProto, consumers: list[onnx.NodeProto]) -> str | None:
    """"depthwise" (every consumer depthwise: exact and free), "dense" (a depthwise producer read
    only by dense convs), or None (not an equalizable pair)."""
    if all(_depthwise(graph, node) for node in consumers):
        return "depthwise"
    if _depthwise(graph, producer) and all(_dense(graph, node) for node in consumers):
        return "dense"
    return None


def relu_bound(graph: GraphIndex, node: onnx.NodeProto):
    """None for Relu, c for Clip(0, c) with constant bounds, False for anything else (also used
    by :mod:`.shift`)."""
    if node.op_type == "Relu":
        return None
    if node.op_type != "Clip" or len(node.input) < 2 or any(a.name in ("min", "max") for a in node.attribute):
        return False
    lo = graph.const(node.input[1]) if node.input[1] else None
    hi = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if lo is None or float(lo) != 0.0 or (len(node.input) > 2 and node.input[2] and hi is None):
        return False
    return None if hi is None else float(hi)


def _const_weight(graph: GraphIndex, node: onnx.NodeProto) -> bool:
    return len(node.input) > 1 and node.input[1] in graph.inits \
        and all(not t or t in graph.inits for t in node.input[2:])


def _depthwise(graph: GraphIndex, node: onnx.NodeProto) -> bool:
    if node.op_type != "Conv" or not _const_weight(graph, node):
        return False
    dims = graph.inits[node.input[1]].dims
    return len(dims) > 2 and dims[1] == 1 and conv_group(node) == dims[0]


def _dense(graph: GraphIndex, node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" and _const_weight(graph, node) and conv_group(node) == 1


def _input_factor(dense: bool, s: np.ndarray) -> np.ndarray:
    """``s`` shaped to scale a consumer's weight along its input channels (a depthwise filter's
    input channel is its output channel, axis 0)."""
    return s[None, :, None, None] if dense else s[:, None, None, None]


def channel_maxima(model: onnx.ModelProto, tensors: list[str], data: np.ndarray,
                   batch: int = 8) -> dict[str, np.ndarray]:
    """Per-channel largest magnitude of each NCHW tensor over ``data``, streamed by batch."""
    from .int8 import fixed_batch, session_with_outputs

    sess = session_with_outputs(model, tensors)
    name = sess.get_inputs()[0].name
    batch = fixed_batch(model) or batch
    out: dict[str, np.ndarray] = {}
    for i in range(0, len(data), batch):
        x = np.ascontiguousarray(data[i:i + batch], dtype=np.float32)
        for t, v in zip(tensors, sess.run(tensors, {name: x})):
            m = np.abs(v).max(axis=(0, *range(2, v.ndim)))
            out[t] = m if t not in out else np.maximum(out[t], m)
    return out


def channel_scales(maxima: np.ndarray, cap: float = CAP, alpha: float = 1.0) -> np.ndarray:
    """``s_i = min(widest / range_i, cap) ** alpha``, at least 1; channels that never fire keep 1."""
    widest = float(maxima.max())
    if widest <= 0:
        return np.ones_like(maxima, np.float32)
    s = np.where(maxima > 0, widest / np.maximum(maxima, widest / cap), 1.0) ** alpha
    return np.clip(s, 1.0, cap).astype(np.float32)


def equalize(model: onnx.ModelProto, data: np.ndarray, cap: float = CAP,
             dense_alpha: float | None = None,
             stream_alpha: float | None = None) -> tuple[onnx.ModelProto, dict]:
    """(equalized copy of ``model``, record for the manifest). ``model`` is not modified.
    ``dense_alpha``: also equalize depthwise outputs into dense consumers, with that exponent;
    ``stream_alpha``: also equalize the residual streams, with that exponent."""
    dense = dense_alpha is not None
    if not find_pairs(model, dense) and not (stream_alpha is not None and find_streams(model)):
        return model, {"pairs": 0}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pairs = find_pairs(out, dense)
    streams = find_streams(out) if stream_alpha is not None else []
    maxima = channel_maxima(out, [p.activation.output[0] for p in pairs]
                            + [t for stream in streams for t in stream.tensors], data)
    inits = {t.name: t for t in out.graph.initializer}
    shared = _shared_initializers(out)
    spread = [1.0]
    for pair in pairs:
        s = channel_scales(maxima[pair.activation.output[0]], cap, dense_alpha if pair.dense else 1.0)
        _scale_outputs(out, inits, shared, pair.producer, s)
        for node in pair.consumers:
            _scale_init(out, inits, shared, node, 1, 1.0 / _input_factor(pair.dense, s))
        if pair.bound is not None:
            _clip_to_relu_min(out, pair, s)
        spread.append(float(s.max()))
    for stream in streams:
        s = channel_scales(np.max([maxima[t] for t in stream.tensors], axis=0), cap, stream_alpha)
        for node in stream.producers:
            _scale_outputs(out, inits, shared, node, s)
        for node, dense_reader in stream.readers:
            _scale_init(out, inits, shared, node, 1, 1.0 / _input_factor(dense_reader, s))
        spread.append(float(s.max()))
    dense_pairs = sum(p.dense for p in pairs)
    return out, {"pairs": len(pairs), "cap": cap, "max_scale": round(max(spread), 2),
                 **({"dense_pairs": dense_pairs, "dense_alpha": dense_alpha} if dense else {}),
                 **({"streams": len(streams), "stream_tensors": sum(len(x.tensors) for x in streams),
                     "residual_streams": sum(len(x.tensors) > 1 for x in streams),
                     "stream_alpha": stream_alpha} if streams else {}),
                 "tensors": [p.activation.output[0] for p in pairs]}


def _scale_outputs(model, inits: dict, shared: set, conv: onnx.NodeProto, s: np.ndarray) -> None:
    """Multiply a Conv's output channel ``i`` (weight row and bias) by ``s_i``."""
    _scale_init(model, inits, shared, conv, 1, s[:, None, None, None])
    if len(conv.input) > 2 and conv.input[2]:
        _scale_init(model, inits, shared, conv, 2, s)


def _shared_initializers(model: onnx.ModelProto) -> set[str]:
    seen, shared = set(), set()
    for node in model.graph.node:
        for t in node.input:
            (shared if t in seen else seen).add(t)
    return shared


def _scale_init(model, inits: dict, shared: set, node: onnx.NodeProto, slot: int,
                factor: np.ndarray) -> None:
    """Multiply ``node.input[slot]`` by ``factor``; a shared initializer gets a private copy."""
    name = node.input[slot]
    value = numpy_helper.to_array(inits[name]).astype(np.float32) * factor
    if name in shared:
        name = f"{name}_eq_{node.name}"
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        inits[name] = model.graph.initializer[-1]
        node.input[slot] = name
    else:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _clip_to_relu_min(model: onnx.ModelProto, pair: Pair, s: np.ndarray) -> None:
    """Clip(0, c) on scaled channels -> Relu, Min(c * s_i): the same function in FP32."""
    act = pair.activation
    out_name, mid = act.output[0], f"{act.output[0]}_eq_relu"
    bound = f"{act.name}_eq_bound"
    model.graph.initializer.append(numpy_helper.from_array(
        (pair.bound * s).reshape(1, -1, 1, 1).astype(np.float32), bound))
    relu = helper.make_node("Relu", [act.input[0]], [mid], name=f"{act.name}_eq_Relu")
    low = helper.make_node("Min", [mid, bound], [out_name], name=f"{act.name}_eq_Min")
    nodes = model.graph.node
    index = list(nodes).index(act)
    nodes.remove(act)
    nodes.insert(index, low)
    nodes.insert(index, relu)


def drop_redundant_min(model: onnx.ModelProto) -> int:
    """Remove an equalization ``Min`` read only by QuantizeLinears that saturate at or below its
    smallest bound (the Q clips first, so the Min is a no-op). Returns how many were removed."""
    if not any(n.op_type == "Min" and n.name.endswith("_eq_Min") for n in model.graph.node):
        return 0  # build_qdq calls this on every build: no index for graphs without equalization
    graph = GraphIndex(model)
    dropped = []
    for node in model.graph.node:
        if node.op_type != "Min" or not node.name.endswith("_eq_Min"):
            continue
        bound = graph.const(node.input[1])
        users = graph.consumers.get(node.output[0], [])
        if bound is None or not users or node.output[0] in graph.outputs:
            continue
        if all(user.op_type == "QuantizeLinear" and _q_ceiling(graph, user) <= float(bound.min()) + 1e-6
               for user, _ in users):
            for user, slot in users:
                user.input[slot] = node.input[0]
            dropped.append(node)
    for node in dropped:
        model.graph.node.remove(node)
    return len(dropped)


def _q_ceiling(graph: GraphIndex, q: onnx.NodeProto) -> float:
    """Largest value a QuantizeLinear represents: scale * (qmax - zero_point)."""
    scale = graph.const(q.input[1])
    zp = graph.const(q.input[2]) if len(q.input) > 2 and q.input[2] else None
    if scale is None or np.size(scale) != 1:
        return float("inf")
    zp_value = 0 if zp is None else int(zp)
    qmax = 255 if zp is None or zp.dtype == np.uint8 else 127  # no zero-point: uint8
    return float(scale) * (qmax - zp_value)


def restore_float_pairs(model: onnx.ModelProto) -> int:
    """Undo the equalization of each ReLU6 pair whose ``Min`` is read only by FP32 convs
    and whose producer has FP32 weights (layers kept out of INT8): ``Relu`` + ``Min`` become the
    original ``Clip(0, c)`` and both weights lose their per-channel scale, the same FP32 function.
    ``c`` is the smallest bound: the widest channel's scale is 1. Returns how many were restored."""
    lows = [n for n in model.graph.node if n.op_type == "Min" and n.name.endswith("_eq_Min")]
    if not lows:
        return 0
    graph = GraphIndex(model)
    restored = 0
    for low in lows:
        relu = graph.producer.get(low.input[0])
        bound = graph.const(low.input[1])
        if relu is None or relu.op_type != "Relu" or bound is None \
                or len(graph.consumers.get(relu.output[0], [])) != 1:
            continue
        prod = graph.producer.get(relu.input[0])
        users = graph.consumers.get(low.output[0], [])
        if prod is None or prod.op_type != "Conv" or not _private_float(graph, prod) or not users \
                or low.output[0] in graph.outputs \
                or not all(slot == 0 and _private_float(graph, node) for node, slot in users):
            continue
        kind = _pair_kind(graph, prod, [node for node, _ in users])
        if kind is None:
            continue
        c = float(bound.min())
        scale = (bound.reshape(-1) / c).astype(np.float32)
        _rescale(graph, prod, 1, 1.0 / scale[:, None, None, None])
        if len(prod.input) > 2 and prod.input[2]:
            _rescale(graph, prod, 2, 1.0 / scale)
        for node, _ in users:
            _rescale(graph, node, 1, _input_factor(kind == "dense", scale))
        base = low.name[:-len("_eq_Min")]
        model.graph.initializer.extend([numpy_helper.from_array(np.array(0.0, np.float32), f"{base}_lo"),
                                        numpy_helper.from_array(np.array(c, np.float32), f"{base}_hi")])
        clip = helper.make_node("Clip", [relu.input[0], f"{base}_lo", f"{base}_hi"], [low.output[0]],
                                name=base)
        nodes = model.graph.node
        nodes.insert(list(nodes).index(relu), clip)
        nodes.remove(relu)
        nodes.remove(low)
        restored += 1
    return restored


def _private_float(graph: GraphIndex, node: onnx.NodeProto) -> bool:
    """Weight (and bias) are FP32 initializers that no other node reads."""
    names = [t for t in node.input[1:] if t]
    return _const_weight(graph, node) and all(
        graph.inits[t].data_type == onnx.TensorProto.FLOAT and len(graph.consumers.get(t, [])) == 1
        for t in names)


def _rescale(graph: GraphIndex, node: onnx.NodeProto, slot: int, factor: np.ndarray) -> None:
    init = graph.inits[node.input[slot]]
    init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * factor).astype(np.float32),
                                          init.name))
