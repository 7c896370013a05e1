"""Zero-centred int8 for a ReLU/ReLU6 output read by a 1x1 conv (the ``tensorrt`` placement).

Symmetric int8 (zero-point 0, as TensorRT requires) spends half its levels on negative values a
ReLU output never has: ``[0, R]`` gets 127 steps of ``R / 127``. When the tensor's only reader is
an int8 1x1 conv without padding (MobileNet's projections, ResNet's bottleneck ``conv3``), the
tensor can be moved down by ``c = R / 2`` and quantized as ``[-c, c]`` with steps of ``R / 254``:

* the producing conv's bias loses ``c`` and the ReLU becomes ``Clip(-c, hi - c)`` (TensorRT fuses
  conv + clip as it fuses conv + relu);
* the 1x1 conv's bias gains ``c * sum(W_q)`` over its inputs, with ``W_q`` its *int8* weights, so
  the shift cancels exactly in the quantized conv (a 1x1 conv without padding reads no border
  zeros that would not move); with the float weights instead, ``c * sum(W - W_q)`` would be a
  constant error per output channel.

Only the Q/DQ model changes; the FP32 graph is untouched. Off by default (``build_qdq(...,
shift=True)`` turns it on): on real MobileNetV2 it halves each such tensor's step, yet the error at
the 1x1 convs' outputs falls only 1-9 % (upstream error dominates there), and the network's mean
KL against FP32 went 0.0661 -> 0.0729 after range search alone and 0.0639 -> 0.0588 after
equalization and search (benchmarks/INT8_LEVERS.md). TensorRT's fusion of the shifted Clip is not
verified on a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..onnx_graph import GraphIndex
from .equalize import relu_bound
from .placement import Plan


@dataclass
class Shift:
    tensor: str
    offset: float  # c: the tensor is quantized as value - c over [-c, c]
    activation: onnx.NodeProto  # Relu or Clip(0, hi) producing the tensor
    producer: onnx.NodeProto  # the Conv before the activation
    consumer: onnx.NodeProto  # the int8 1x1 Conv reading the tensor
    channels: int  # the producer's output channels


def find_shifts(graph: GraphIndex, plan: Plan, ranges: dict) -> dict[str, Shift]:
    """The plan's activation tensors that can be zero-centred (``plan.signed`` placements only)."""
    if not plan.signed:
        return {}
    quantized = set(plan.quantized)
    out = {}
    for tensor, edges in plan.edges.items():
        if len(edges) != 1 or edges[0][1] != 0 or edges[0][0] not in quantized or tensor in graph.outputs:
            continue
        act = graph.producer.get(tensor)
        if act is None or relu_bound(graph, act) is False or len(graph.consumers.get(tensor, [])) != 1:
            continue
        producer = graph.producer.get(act.input[0])
        if producer is None or producer.op_type != "Conv" or len(graph.consumers.get(act.input[0], [])) != 1 \
                or (len(producer.input) > 2 and producer.input[2] and producer.input[2] not in graph.inits):
            continue
        consumer = graph.nodes[edges[0][0]]
        lo, _hi, amax = ranges.get(plan.range_of.get(tensor, tensor), (-1.0, 0.0, 0.0))
        if not _pointwise_conv(graph, consumer) or lo < 0 or amax <= 0:
            continue
        channels = graph.inits[producer.input[1]].dims[0] if producer.input[1] in graph.inits else 0
        if channels:
            out[tensor] = Shift(tensor, amax / 2.0, act, producer, consumer, channels)
    return out


def _pointwise_conv(graph: GraphIndex, node: onnx.NodeProto) -> bool:
    """A Conv with a constant 1x1 kernel, no padding, unit dilation: a per-pixel matrix product."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in graph.inits:
        return False
    attrs = {a.name: a for a in node.attribute}
    kernel = list(graph.inits[node.input[1]].dims[2:])
    pads = list(attrs["pads"].ints) if "pads" in attrs else []
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    return all(k == 1 for k in kernel) and not any(pads) and auto_pad in ("NOTSET", "VALID")


def apply_shift(model: onnx.ModelProto, graph: GraphIndex, shift: Shift,
                consumer_weight: np.ndarray, new_inits: list) -> None:
    """Rewrite ``model`` (already holding the Q/DQ nodes) for one shift; ``consumer_weight`` is
    the dequantized int8 weight the consumer runs with."""
    from .int8 import _safe

    c = np.float32(shift.offset)
    base = f"{_safe(shift.tensor)}_shift"
    prod = shift.producer
    bias = _bias(graph, prod, shift.channels, new_inits)
    _add_init(graph, new_inits, (bias - c).astype(np.float32), f"{base}_producer_bias")
    _set_input(prod, 2, f"{base}_producer_bias")
    hi = relu_bound(graph, shift.activation)
    act = shift.activation
    _add_init(graph, new_inits, np.array(-c, np.float32), f"{base}_lo")
    inputs = [act.input[0], f"{base}_lo"]
    if hi is not None:
        _add_init(graph, new_inits, np.array(hi - c, np.float32), f"{base}_hi")
        inputs.append(f"{base}_hi")
    act.op_type = "Clip"
    del act.input[:]
    act.input.extend(inputs)
    cons = shift.consumer
    gain = c * consumer_weight.reshape(consumer_weight.shape[0], -1).sum(axis=1)
    bias = _bias(graph, cons, consumer_weight.shape[0], new_inits)
    _add_init(graph, new_inits, (bias + gain).astype(np.float32), f"{base}_consumer_bias")
    _set_input(cons, 2, f"{base}_consumer_bias")


def _add_init(graph: GraphIndex, new_inits: list, value: np.ndarray, name: str) -> None:
    """A new initializer, also indexed (a later fp16 conversion of a kept layer finds it)."""
    tensor = numpy_helper.from_array(value, name)
    new_inits.append(tensor)
    graph.inits[name] = tensor


def _bias(graph: GraphIndex, node: onnx.NodeProto, channels: int, new_inits: list) -> np.ndarray:
    """The node's current bias (one the build already replaced, e.g. bias correction's, first)."""
    from .int8 import _bias_array

    if len(node.input) > 2 and node.input[2]:
        return _bias_array(graph, node, new_inits)
    return np.zeros(channels, np.float32)


def _set_input(node: onnx.NodeProto, slot: int, name: str) -> None:
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = name
