"""Graph helpers of the lint: producers/consumers, constant values, attributes, precision."""
from __future__ import annotations

from typing import Any

import onnx
from onnx import TensorProto

from ..onnx_graph import DQ_OP, Q_OP, GraphIndex

_Q, _DQ = Q_OP, DQ_OP
_Graph = GraphIndex  # the lint reads the same index as the quantizer


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
