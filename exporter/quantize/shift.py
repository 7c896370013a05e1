"""Zero-centred int8 for a ReLU/ReLU6 output read by an int8 conv (the ``tensorrt`` placement).

Symmetric int8 (zero-point 0, as TensorRT requires) spends half its levels on negative values a
ReLU output never has: ``[0, R]`` gets 127 steps of ``R / 127``. The tensor can instead be moved
down by ``c = R / 2`` and quantized as ``[-c, c]`` with steps of ``R / 254``. ``R`` is the range's
``high`` (:mod:`.calibration`: with ``mse``, chosen for these 254 steps, so it clips less than the
symmetric ``amax`` does):

* the producing conv's bias loses ``c`` and the ReLU becomes ``Clip(-c, hi - c)`` (TensorRT fuses
  conv + clip as it fuses conv + relu);
* the reading conv's bias gains ``c * sum(W_q)`` over its inputs, with ``W_q`` its *int8* weights,
  so the shift cancels exactly in the quantized conv; with the float weights instead,
  ``c * sum(W - W_q)`` would be a constant error per output channel;
* a reader with padding would read border zeros that did not move (``-c`` after the shift), so its
  padding becomes an explicit ``Pad`` with value ``-c`` in front of the QuantizeLinear (``-c`` is
  the int8 level -127 exactly) and the conv reads the padded tensor without padding of its own.

Which tensors (``build_qdq(..., shift=True)``, the default): those whose producer is kept out of
INT8 (that producer writes a float tensor anyway, so the Clip and the Pad cost one pass over it and
no fusion is lost; on real MobileNetV2 the stem's output, read by the first depthwise conv), and
the outputs of int8 producers read by 1x1 convs without padding (MobileNet's depthwise outputs
read by the projections, ResNet's bottleneck ``conv3``): no Pad there, and TensorRT still fuses
conv + clip + Q. A padded reader of an int8 producer is never shifted (its Pad would stand
between TensorRT's fused conv + Q). The two quantizers round differently, so their mean errors
differ: bias correction fits a reader's delta for both (:func:`add_centred_copies`) and the build
takes the one for the quantizer it uses. Measured: benchmarks/INT8_ZERO_CENTRE.md (the stem
alone: its ``stem`` rows). TensorRT's handling of the shifted Clip and the Pad is not verified on
a GPU.

After equalization a ReLU6 is ``Relu`` then a per-channel ``Min`` (:mod:`.equalize`); where the
QuantizeLinear saturates below every bound of the ``Min`` (the case :func:`~.equalize.drop_redundant_min`
removes), the ``Min`` is dropped and the ``Relu`` shifted like a ReLU6 with the smallest bound.

The range search and the opt-in tuning and rounding fit on the unshifted graph (their torch walk
has no Pad); the shift is applied when the model is built, from the range found.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..onnx_graph import GraphIndex
from .equalize import relu_bound
from .placement import Plan


@dataclass
class Shift:
    tensor: str
    offset: float  # c: the tensor is quantized as value - c over [-c, c]
    activation: onnx.NodeProto  # Relu or Clip(0, hi) producing the tensor (the Relu before a Min)
    producer: onnx.NodeProto  # the Conv before the activation
    consumer: onnx.NodeProto  # the int8 Conv reading the tensor
    channels: int  # the producer's output channels
    bound: float | None = None  # the activation's upper bound (None: none)
    low: onnx.NodeProto | None = None  # equalization's redundant Min after the Relu, dropped
    pads: list[int] | None = None  # the consumer's padding, moved into an explicit Pad

    @property
    def scale(self) -> np.float32:
        """The zero-centred quantizer's step: ``c / 127`` (the build's and bias correction's)."""
        return np.float32(self.offset / 127.0)


SCOPES = ("all", "kept", "any")


def find_shifts(graph: GraphIndex, plan: Plan, ranges: dict, scope: str = "all") -> dict[str, Shift]:
    """The plan's activation tensors to zero-centre (``plan.signed`` placements only). ``all``:
    those whose producer is kept out of INT8, and those of int8 producers read by a 1x1 conv
    without padding; ``kept``: the first kind only (the default before 2026-12-05, to measure);
    ``any``: every tensor some choice of kept layers could zero-centre (bias correction fits both
    quantizers for those on the all-INT8 plan)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown shift scope {scope!r}; use one of {SCOPES}")
    if not plan.signed:
        return {}
    quantized = set(plan.quantized)
    out = {}
    for tensor, edges in plan.edges.items():
        if len(edges) != 1 or edges[0][1] != 0 or edges[0][0] not in quantized or tensor in graph.outputs \
                or len(graph.consumers.get(tensor, [])) != 1:
            continue
        lo, hi, amax = ranges.get(plan.range_of.get(tensor, tensor), (-1.0, 0.0, 0.0))
        found = _activation(graph, tensor, amax)
        if found is None or lo < 0 or amax <= 0:
            continue
        act, bound, low = found
        ceiling = min(hi, bound) if bound is not None else hi  # the range's high, below any Min dropped
        if ceiling <= 0:
            continue
        producer = graph.producer.get(act.input[0])
        if producer is None or producer.op_type != "Conv" or producer.input[1] not in graph.inits \
                or len(graph.consumers.get(act.input[0], [])) != 1 \
                or (len(producer.input) > 2 and producer.input[2] and producer.input[2] not in graph.inits):
            continue
        consumer = graph.nodes[edges[0][0]]
        pads = _conv_pads(graph, consumer)
        float_fed = producer.name not in quantized
        one_by_one = scope == "all" and not any(pads) and _kernel_1x1(graph, consumer)
        if pads is None or not (scope == "any" or float_fed or one_by_one):
            continue
        out[tensor] = Shift(tensor, ceiling / 2.0, act, producer, consumer,
                            graph.inits[producer.input[1]].dims[0], bound, low, pads if any(pads) else None)
    return out


CENTRED = "|zero-centred"  # bias_correction's key suffix: the delta for a zero-centred input


def centred_key(layer: str) -> str:
    """Where :func:`~.bias.bias_correction` puts ``layer``'s delta for a zero-centred input."""
    return layer + CENTRED


def add_centred_copies(model: onnx.ModelProto, shifts: dict[str, Shift]) -> dict[str, str]:
    """Beside each shifted tensor's QuantizeLinear (in a model built with ``shift=False``), the
    zero-centred quantizer in the unshifted domain: ``Sub(c) -> Q(c/127) -> DQ -> Add(c)``, which
    is what the shifted model's reader sees, without rewriting the producer and the reader.
    Returns {tensor: name of the copy's output}."""
    from .int8 import safe_name

    out = {}
    quantizers = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for tensor, item in shifts.items():
        base = safe_name(tensor)
        source = quantizers[f"{base}_q"].input[0]  # the tensor, or the Relu before a dropped Min
        c = np.float32(item.offset)
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(c, np.float32), f"{base}_centre"),
            numpy_helper.from_array(np.array(item.scale, np.float32), f"{base}_centred_scale"),
            helper.make_tensor(f"{base}_centred_zp", onnx.TensorProto.INT8, [], [0])])
        q, s, z = f"{base}_centred_q", f"{base}_centred_scale", f"{base}_centred_zp"
        model.graph.node.extend([
            helper.make_node("Sub", [source, f"{base}_centre"], [f"{base}_centred"], name=f"{base}_centred_Sub"),
            helper.make_node("QuantizeLinear", [f"{base}_centred", s, z], [q], name=f"{base}_centred_Q"),
            helper.make_node("DequantizeLinear", [q, s, z], [f"{base}_centred_dq"], name=f"{base}_centred_DQ"),
            helper.make_node("Add", [f"{base}_centred_dq", f"{base}_centre"], [f"{base}_centred_in"],
                             name=f"{base}_centred_Add")])
        out[tensor] = f"{base}_centred_in"
    return out


def _activation(graph: GraphIndex, tensor: str, amax: float):
    """(Relu/Clip node, upper bound, redundant Min or None) writing ``tensor``, or None."""
    act = graph.producer.get(tensor)
    if act is None:
        return None
    bound = relu_bound(graph, act)
    if bound is not False:
        return act, bound, None
    if act.op_type != "Min" or not act.name.endswith("_eq_Min"):
        return None
    relu, limits = graph.producer.get(act.input[0]), graph.const(act.input[1])
    if relu is None or relu.op_type != "Relu" or limits is None or float(limits.min()) < amax \
            or len(graph.consumers.get(relu.output[0], [])) != 1:
        return None  # the Min clips below the quantizer's ceiling: it is not redundant
    return relu, float(limits.min()), act


def _conv_pads(graph: GraphIndex, node: onnx.NodeProto) -> list[int] | None:
    """A 2-D Conv's explicit pads (zeros: none) when it has a constant weight and unit dilation;
    None for anything else (auto_pad SAME, other ranks, a computed weight)."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in graph.inits \
            or len(graph.inits[node.input[1]].dims) != 4:
        return None
    attrs = {a.name: a for a in node.attribute}
    if attrs.get("auto_pad") is not None and attrs["auto_pad"].s.decode() not in ("NOTSET", "VALID"):
        return None
    if "dilations" in attrs and any(d != 1 for d in attrs["dilations"].ints):
        return None
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
    return pads if len(pads) == 4 else None


def _kernel_1x1(graph: GraphIndex, node: onnx.NodeProto) -> bool:
    return all(k == 1 for k in graph.inits[node.input[1]].dims[2:])


def apply_shift(model: onnx.ModelProto, graph: GraphIndex, shift: Shift,
                consumer_weight: np.ndarray, new_inits: list) -> None:
    """Rewrite ``model`` (already holding the Q/DQ nodes) for one shift; ``consumer_weight`` is
    the dequantized int8 weight the consumer runs with."""
    from .int8 import safe_name

    c = np.float32(shift.offset)
    base = f"{safe_name(shift.tensor)}_shift"
    prod = shift.producer
    bias = _bias(graph, prod, shift.channels, new_inits)
    _add_init(graph, new_inits, (bias - c).astype(np.float32), f"{base}_producer_bias")
    _set_input(prod, 2, f"{base}_producer_bias")
    act = shift.activation
    _add_init(graph, new_inits, np.array(-c, np.float32), f"{base}_lo")
    inputs = [act.input[0], f"{base}_lo"]
    if shift.bound is not None:
        _add_init(graph, new_inits, np.array(shift.bound - c, np.float32), f"{base}_hi")
        inputs.append(f"{base}_hi")
    act.op_type = "Clip"
    del act.input[:]
    act.input.extend(inputs)
    if shift.low is not None:  # the Clip writes what the redundant Min wrote
        act.output[0] = shift.low.output[0]
        model.graph.node.remove(shift.low)
    if shift.pads is not None:
        _explicit_pad(model, graph, shift, act, base, new_inits)
    cons = shift.consumer
    gain = c * consumer_weight.reshape(consumer_weight.shape[0], -1).sum(axis=1)
    bias = _bias(graph, cons, consumer_weight.shape[0], new_inits)
    _add_init(graph, new_inits, (bias + gain).astype(np.float32), f"{base}_consumer_bias")
    _set_input(cons, 2, f"{base}_consumer_bias")


def _explicit_pad(model: onnx.ModelProto, graph: GraphIndex, shift: Shift, act: onnx.NodeProto,
                  base: str, new_inits: list) -> None:
    """The consumer's border as a ``Pad`` of value ``-c`` between the activation and its
    QuantizeLinear (which reads ``shift.tensor``); the consumer loses its own padding."""
    top, left, bottom, right = shift.pads
    _add_init(graph, new_inits, np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), f"{base}_pads")
    _add_init(graph, new_inits, np.array(-shift.offset, np.float32), f"{base}_pad_value")
    act.output[0] = f"{base}_unpadded"
    # the tensor is now padded: a shape recorded for it (the unpadded one) would be stale, and
    # onnx's checker and ONNX Runtime reject or warn on the mismatch
    stale = [v for v in model.graph.value_info if v.name == shift.tensor]
    for info in stale:
        model.graph.value_info.remove(info)
    model.graph.node.append(helper.make_node("Pad", [f"{base}_unpadded", f"{base}_pads", f"{base}_pad_value"],
                                             [shift.tensor], name=f"{base}_Pad", mode="constant"))
    for attr in shift.consumer.attribute:
        if attr.name == "pads":
            del attr.ints[:]
            attr.ints.extend([0, 0, 0, 0])


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
