"""Step-by-step execution of an ONNX graph (FP32 or Q/DQ) in torch, for layer-wise reconstruction.

AdaRound and the range search walk the FP32 graph and the Q/DQ graph side by side, one node at a
time, and need each layer's input and output in the middle of the walk: a runtime session cannot
pause, so this small interpreter does. Tensors are freed as soon as their last consumer ran, so
memory follows the graph's live set, not its size. Semantics follow ONNX (round-half-to-even
quantization, saturating to the zero-point type's range); fp16 casts round to fp16 and compute on.
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ..errors import PrecisionError

_QRANGE = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
           onnx.TensorProto.INT32: (-2**31, 2**31 - 1)}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads_symmetric(pads: list[int], rank: int) -> tuple[list[int], list[int] | None]:
    """(symmetric torch padding, or explicit F.pad list when begin != end)."""
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return begin, None
    flat = []
    for b, e in zip(reversed(begin), reversed(end)):
        flat += [b, e]
    return [0] * rank, flat


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, attrs: dict) -> torch.Tensor:
    """ONNX Conv (1-3 spatial dims, explicit pads) with torch."""
    rank = w.dim() - 2
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise PrecisionError(f"Conv auto_pad={attrs['auto_pad']} is not supported by the reconstruction",
                             fix="export with explicit pads (the exporter's ONNX always has them)")
    pads = list(attrs.get("pads", [0] * 2 * rank))
    padding, explicit = _pads_symmetric(pads, rank)
    if explicit:
        x = F.pad(x, explicit)
    fn = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    return fn(x, w, b, stride=list(attrs.get("strides", [1] * rank)), padding=padding,
              dilation=list(attrs.get("dilations", [1] * rank)), groups=int(attrs.get("group", 1)))


def _pool(x: torch.Tensor, attrs: dict, kind: str) -> torch.Tensor:
    k = list(attrs["kernel_shape"])
    rank = len(k)
    pads = list(attrs.get("pads", [0] * 2 * rank))
    padding, explicit = _pads_symmetric(pads, rank)
    stride = list(attrs.get("strides", [1] * rank))
    ceil = bool(attrs.get("ceil_mode", 0))
    if kind == "max":
        if explicit:
            x = F.pad(x, explicit, value=float("-inf"))
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
        return fn(x, k, stride, padding, list(attrs.get("dilations", [1] * rank)), ceil)
    if explicit:
        x = F.pad(x, explicit)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    return fn(x, k, stride, padding, ceil, bool(attrs.get("count_include_pad", 0)))


def _axis_shape(t: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    if t.dim() == 0:
        return t
    shape = [1] * rank
    shape[axis] = -1
    return t.reshape(shape)


def _quantize(x, scale, zp, attrs, zp_type):
    axis = attrs.get("axis", 1) % max(x.dim(), 1)
    lo, hi = _QRANGE[zp_type]
    s, z = _axis_shape(scale, axis, x.dim()), _axis_shape(zp.to(x.dtype), axis, x.dim())
    return torch.clamp(torch.round(x / s) + z, lo, hi)


def _dequantize(q, scale, zp, attrs):
    axis = attrs.get("axis", 1) % max(q.dim(), 1)
    q = q.to(torch.float32)
    z = _axis_shape(zp.to(torch.float32), axis, q.dim()) if zp is not None else 0.0
    return (q - z) * _axis_shape(scale.to(torch.float32), axis, q.dim())


def _reshape(x, shape, attrs):
    shape = [int(s) for s in shape.tolist()]
    shape = [x.shape[i] if s == 0 and not attrs.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _clip(x, lo=None, hi=None, attrs=None):
    attrs = attrs or {}
    lo = lo if lo is not None else attrs.get("min")
    hi = hi if hi is not None else attrs.get("max")
    return torch.clamp(x, None if lo is None else float(lo), None if hi is None else float(hi))


def _gemm(a, b, c, attrs):
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + attrs.get("beta", 1.0) * c


def _cast(x, attrs):
    to = attrs["to"]
    if to == onnx.TensorProto.FLOAT16:
        return x.to(torch.float16).to(torch.float32)  # fp16 rounding, fp32 compute
    if to in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return x.to(torch.float32)
    return x.to(torch.int64)


def _squeeze(x, axes, attrs, un=False):
    axes = attrs.get("axes") if axes is None else axes.tolist()
    if un:
        for a in sorted(int(a) % (x.dim() + len(axes)) for a in axes):
            x = x.unsqueeze(a)
        return x
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(int(a) % x.dim() for a in axes))


OPS: dict[str, Callable] = {
    "Conv": lambda n, a, x, w, b=None: conv(x, w, b, a),
    "Gemm": lambda n, a, x, w, c=None: _gemm(x, w, c, a),
    "MatMul": lambda n, a, x, y: x @ y,
    "Relu": lambda n, a, x: torch.relu(x),
    "LeakyRelu": lambda n, a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Clip": lambda n, a, x, lo=None, hi=None: _clip(x, lo, hi, a),
    "Sigmoid": lambda n, a, x: torch.sigmoid(x),
    "Tanh": lambda n, a, x: torch.tanh(x),
    "HardSigmoid": lambda n, a, x: torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda n, a, x: F.hardswish(x),
    "Add": lambda n, a, x, y: x + y,
    "Min": lambda n, a, *xs: functools.reduce(torch.minimum, xs),
    "Max": lambda n, a, *xs: functools.reduce(torch.maximum, xs),
    "Sub": lambda n, a, x, y: x - y,
    "Mul": lambda n, a, x, y: x * y,
    "Div": lambda n, a, x, y: x / y,
    "GlobalAveragePool": lambda n, a, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda n, a, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "MaxPool": lambda n, a, x: _pool(x, a, "max"),
    "AveragePool": lambda n, a, x: _pool(x, a, "avg"),
    "Flatten": lambda n, a, x: x.reshape(int(np.prod(x.shape[:a.get("axis", 1)])), -1),
    "Reshape": lambda n, a, x, s: _reshape(x, s, a),
    "Transpose": lambda n, a, x: x.permute(*a["perm"]) if "perm" in a else x.permute(*reversed(range(x.dim()))),
    "Concat": lambda n, a, *xs: torch.cat(xs, dim=a["axis"]),
    "Identity": lambda n, a, x: x,
    "Dropout": lambda n, a, x, *rest: x,
    "Squeeze": lambda n, a, x, axes=None: _squeeze(x, axes, a),
    "Unsqueeze": lambda n, a, x, axes=None: _squeeze(x, axes, a, un=True),
    "Cast": lambda n, a, x: _cast(x, a),
    "BatchNormalization": lambda n, a, x, s, b, m, v: F.batch_norm(x, m, v, s, b, False, 0.0, a.get("epsilon", 1e-5)),
    "DequantizeLinear": lambda n, a, q, s, z=None: _dequantize(q, s, z, a),
}


def _fused_qdq(nodes: list[onnx.NodeProto]) -> set[str]:
    """Outputs of activation QuantizeLinear nodes read only by a DequantizeLinear of the same scale."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    fused = set()
    for node in nodes:
        if node.op_type != "QuantizeLinear":
            continue
        users = readers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "DequantizeLinear" \
                and list(users[0].input[1:]) == list(node.input[1:]):
            fused.add(node.output[0])
    return fused


class Executor:
    """Runs ``model`` on ``inputs`` one node at a time; ``consts`` may be edited between steps."""

    def __init__(self, model: onnx.ModelProto, inputs: dict[str, torch.Tensor]):
        g = model.graph
        self.nodes = list(g.node)
        self.elem_type = {t.name: t.data_type for t in g.initializer}
        self.consts = {t.name: torch.from_numpy(np.array(numpy_helper.to_array(t))) for t in g.initializer}
        for name, value in self.consts.items():  # fp16 values computed on in fp32, as the Casts are
            if value.dtype == torch.float16:
                self.consts[name] = value.float()
        for node in self.nodes:
            if node.op_type == "Constant":
                value = _attrs(node)["value"]
                self.consts[node.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(value)))
                self.elem_type[node.output[0]] = value.data_type
        unsupported = sorted({n.op_type for n in self.nodes}
                             - set(OPS) - {"QuantizeLinear", "Constant"})
        if unsupported:
            raise PrecisionError(f"the layer-wise reconstruction cannot run op(s) {unsupported}",
                                 fix="quantize without AdaRound / range search for this model")
        self.outputs = [o.name for o in g.output]
        self.fused = _fused_qdq(self.nodes)
        self.reset(inputs)

    def reset(self, inputs: dict[str, torch.Tensor]) -> None:
        """Start over on new ``inputs`` (the constants are kept)."""
        self.env = dict(inputs)
        self.pending = Counter(i for n in self.nodes for i in n.input if i)
        for name in self.outputs:
            self.pending[name] += 1
        self.pos = 0
        self.executed: set[str] = set()

    def value(self, name: str) -> torch.Tensor:
        return self.env[name] if name in self.env else self.consts[name]

    def done(self) -> bool:
        return self.pos >= len(self.nodes)

    def peek(self) -> onnx.NodeProto:
        return self.nodes[self.pos]

    def step(self, override: torch.Tensor | None = None) -> onnx.NodeProto:
        """Run the next node (or take ``override`` as its single output); free dead inputs."""
        node = self.nodes[self.pos]
        self.pos += 1
        if node.op_type != "Constant":
            if override is None:
                args = [self.value(i) if i else None for i in node.input]
                while args and args[-1] is None:
                    args.pop()
                a = _attrs(node)
                if node.op_type == "QuantizeLinear":
                    zp_type = self.elem_type.get(node.input[2], onnx.TensorProto.UINT8) \
                        if len(node.input) > 2 else onnx.TensorProto.UINT8
                    zp = args[2] if len(args) > 2 else torch.zeros(())
                    if node.output[0] in self.fused and args[1].dim() == 0:
                        lo, hi = _QRANGE[zp_type]  # Q -> DQ in one fake-quant kernel; DQ passes it on
                        out = torch.fake_quantize_per_tensor_affine(
                            args[0].contiguous(), float(args[1]), int(zp), lo, hi)
                    else:
                        out = _quantize(args[0], args[1].to(torch.float32), zp, a, zp_type)
                elif node.op_type == "DequantizeLinear" and node.input[0] in self.fused:
                    out = args[0]
                else:
                    out = OPS[node.op_type](node, a, *args)
            else:
                out = override
            self.env[node.output[0]] = out
        self.executed.add(node.name)
        for i in node.input:
            if i and i in self.env:
                self.pending[i] -= 1
                if self.pending[i] <= 0:
                    del self.env[i]
        return node

    def run_until_output(self, tensor: str) -> torch.Tensor:
        while tensor not in self.env:
            if self.done():
                raise KeyError(tensor)
            self.step()
        return self.env[tensor]
