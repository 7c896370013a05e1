"""One index of an ONNX graph (producers, consumers, constants), shared by the quantizer, the lint
and the deploy check."""
from __future__ import annotations

from functools import cached_property

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

Q_OP, DQ_OP = "QuantizeLinear", "DequantizeLinear"
# onnxruntime 1.32's CPU pass that quantizes float weights/biases feeding Q/DQ pairs; it wrecks Q/DQ
# graphs whose non-quantized parts are fp16 (measured: top-1 agreement 0.04 instead of ~0.7). Both
# the quantizer's sessions and the ORT backend disable it by this name.
WEIGHT_BIAS_QUANTIZATION = "WeightBiasQuantization"


def conv_group(node: onnx.NodeProto) -> int:
    """A Conv's ``group`` attribute (1 when absent)."""
    return next((a.i for a in node.attribute if a.name == "group"), 1)


class GraphIndex:
    """Producers, consumers (node, input slot), initializers and Constant values of one graph."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.model = model
        self.inits = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, slot))
        self.inputs = {i.name for i in graph.input if i.name not in self.inits}
        self.outputs = {o.name for o in graph.output}
        self.nodes = {n.name: n for n in graph.node}

    def consumer_nodes(self, name: str) -> list[onnx.NodeProto]:
        return [node for node, _ in self.consumers.get(name, [])]

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.constants.get(name)
        for attr in (node.attribute if node is not None else ()):
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

    @cached_property
    def tensor_types(self) -> dict[str, onnx.TypeProto.Tensor] | None:
        """{tensor: its element type and shape} by ONNX shape inference; None where it fails."""
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False)
        except Exception:  # noqa: BLE001 - a graph shape inference cannot read
            return None
        values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
        return {v.name: v.type.tensor_type for v in values}

    @cached_property
    def non_float(self) -> set[str]:
        """Tensors shape inference types as other than float (int64 shapes a ViT concatenates);
        empty where inference fails (every non-constant then counts as an activation)."""
        floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
        return {name for name, t in (self.tensor_types or {}).items()
                if t.elem_type and t.elem_type not in floats}

    def is_activation(self, name: str) -> bool:
        """A float tensor computed by the graph (not a weight, constant or integer shape)."""
        return bool(name) and name not in self.inits and name not in self.constants \
            and name not in self.non_float

    def is_weight(self, name: str) -> bool:
        """A constant, possibly fake-quantized on the fly (initializer -> QuantizeLinear)."""
        if self.const(name) is not None:
            return True
        prod = self.producer.get(name)
        return prod is not None and prod.op_type == Q_OP and self.const(prod.input[0]) is not None

    def weight(self, node: onnx.NodeProto) -> np.ndarray | None:
        """The constant weight (input 1) of a Conv/Gemm, else None."""
        return numpy_helper.to_array(self.inits[node.input[1]]) if node.input[1] in self.inits else None
