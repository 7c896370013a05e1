"""Graph helpers of the lint: producers/consumers, constant values, attributes, precision."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


class _Graph:
    """Index of one ONNX graph: producers, consumers and constant values."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.model = model
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {n.output[0]: n for n in self.nodes if n.op_type == "Constant"}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.constants.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def const_dtype(self, name: str) -> int | None:
        if name in self.inits:
            return self.inits[name].data_type
        node = self.constants.get(name)
        for attr in (node.attribute if node is not None else ()):
            if attr.name == "value":
                return attr.t.data_type
        return None

    def is_weight(self, name: str) -> bool:
        """A constant, possibly fake-quantized on the fly (initializer -> QuantizeLinear)."""
        if self.const(name) is not None:
            return True
        prod = self.producer.get(name)
        return prod is not None and prod.op_type == _Q and self.const(prod.input[0]) is not None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({', '.join(node.output)})"


def _elem_type(value_info: onnx.ValueInfoProto) -> int:
    return value_info.type.tensor_type.elem_type


def _dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_nodes(sub)


def detect_precision(model: onnx.ModelProto) -> str:
    """``int8`` if the graph carries Q/DQ nodes, ``fp16`` if it computes in float16, else ``fp32``."""
    ops = {n.op_type for n in model.graph.node}
    if _Q in ops or _DQ in ops:
        return "int8"
    fp16 = TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in model.graph.initializer):
        return "fp16"
    if any(n.op_type == "Cast" and _attr(n, "to") == fp16 for n in model.graph.node):
        return "fp16"
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    return "fp16" if any(_elem_type(v) == fp16 for v in values) else "fp32"
