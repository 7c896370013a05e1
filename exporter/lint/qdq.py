"""Precision checks: Q/DQ invariants for strongly typed INT8 engines, fp32 I/O of FP16 graphs."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .findings import ERROR, WARNING, LintReport
from .graph import _DQ, _Q, _attr, _dtype_name, _elem_type, _Graph, _label

# Weight input index and the output-channel axis TensorRT expects for per-channel weight scales.
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def _scalar_zero_point_check(g: _Graph, node: onnx.NodeProto, report: LintReport) -> None:
    label = _label(node)
    if len(node.input) < 3 or not node.input[2]:
        out_dtype = _attr(node, "output_dtype", 0)
        if node.op_type == _Q and out_dtype != TensorProto.INT8:
            report.add(ERROR, "qdq-zero-point", label, "QuantizeLinear has no zero-point, so it "
                       "produces uint8; TensorRT needs int8 with zero-point 0",
                       fix="quantize symmetric int8 (onnxruntime: activation_type=QuantType.QInt8, "
                           "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True})")
        return
    zp_name = node.input[2]
    dtype, zp = g.const_dtype(zp_name), g.const(zp_name)
    if zp is None:
        report.add(ERROR, "qdq-zero-point", label, f"zero-point '{zp_name}' is not a constant",
                   fix="store zero-points as initializers (int8 zeros)")
        return
    if dtype == TensorProto.INT32 and node.op_type == _DQ:
        return  # int32 input (bias): reported by the bias check
    if dtype != TensorProto.INT8:
        report.add(ERROR, "qdq-zero-point", label, f"zero-point '{zp_name}' is "
                   f"{_dtype_name(dtype or 0)}; TensorRT supports int8 only",
                   fix="quantize with signed int8 (QuantType.QInt8) for activations and weights")
    if np.any(zp != 0):
        report.add(ERROR, "qdq-zero-point", label, f"zero-point '{zp_name}' is not all 0 "
                   f"(found {np.unique(zp)[:4].tolist()}); TensorRT quantization is symmetric",
                   fix="quantize symmetrically (ActivationSymmetric / WeightSymmetric = True)")


def _check_qdq(g: _Graph, report: LintReport) -> None:
    qdq = [n for n in g.model.graph.node if n.op_type in (_Q, _DQ)]
    if report.precision == "int8" and not qdq:
        report.add(ERROR, "qdq-missing", "", "an INT8 artifact without QuantizeLinear/"
                   "DequantizeLinear nodes: TensorRT 10+/11 builds INT8 only from explicit Q/DQ "
                   "(implicit calibration was removed)",
                   fix="quantize the ONNX first (exporter export --precision int8 --calibration DIR)")
    for node in qdq:
        label = _label(node)
        _scalar_zero_point_check(g, node, report)
        scale = g.const(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            report.add(ERROR, "qdq-scale", label, "scale is not a constant",
                       fix="store scales as float initializers")
            continue
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            report.add(ERROR, "qdq-scale", label, f"scale has non-positive or non-finite values "
                       f"(min {float(np.min(scale)):.3g})",
                       fix="recalibrate; a zero scale means the tensor was constant on the "
                           "calibration data (drop its Q/DQ or use more/other images)")
        if node.op_type == _DQ and g.const_dtype(node.input[0]) == TensorProto.INT32:
            report.add(ERROR, "qdq-bias", label, "int32 bias DequantizeLinear: TensorRT does not "
                       "import quantized bias", fix="keep biases float (onnxruntime extra_options="
                       "{'QuantizeBias': False}; ModelOpt does this by default)")
            continue
        per_channel = scale.size > 1
        is_weight = g.is_weight(node.input[0])
        if per_channel and not is_weight:
            report.add(ERROR, "qdq-per-channel", label, f"activation quantized per-channel "
                       f"({scale.size} scales); TensorRT quantizes activations per-tensor",
                       fix="quantize activations per-tensor (per_channel applies to weights only)")
        if node.op_type == _DQ and is_weight:
            _check_weight_axis(g, node, scale, report)


def _check_weight_axis(g: _Graph, dq: onnx.NodeProto, scale: np.ndarray, report: LintReport) -> None:
    label = _label(dq)
    for consumer in g.consumer_nodes(dq.output[0]):
        op = consumer.op_type
        if op not in _WEIGHT_INPUT or list(consumer.input).index(dq.output[0]) != _WEIGHT_INPUT[op]:
            continue
        weight = g.const(dq.input[0])
        if weight is None:  # initializer -> Q -> DQ
            weight = g.const(g.producer[dq.input[0]].input[0])
        rank = weight.ndim
        if op == "Conv":
            expected = 0
        elif op == "ConvTranspose":
            expected = 1
        elif op == "Gemm":
            expected = 0 if _attr(consumer, "transB", 0) else 1
        else:  # MatMul: B is (..., K, N), output channels are the last axis
            expected = rank - 1
        if scale.size == 1:
            if weight.shape[expected] > 1:
                report.add(WARNING, "qdq-weight-axis", label, f"{op} weight quantized per-tensor; "
                           f"per-channel (axis {expected}) keeps much more accuracy",
                           fix=f"quantize weights per-channel along axis {expected} (per_channel=True)")
            continue
        axis = int(_attr(dq, "axis", 1))
        axis = axis + rank if axis < 0 else axis
        if axis != expected or scale.size != weight.shape[expected]:
            report.add(ERROR, "qdq-weight-axis", label, f"{op} weight DQ is per-channel along axis "
                       f"{axis} ({scale.size} scales, weight {list(weight.shape)}); TensorRT needs the "
                       f"output-channel axis {expected}",
                       fix=f"re-quantize the {op} weights per-channel with axis={expected}")


def _check_fp16_io(g: _Graph, report: LintReport) -> None:
    graph = g.model.graph
    inits = set(g.inits)
    for value in graph.input:
        if value.name in inits:
            continue
        if _elem_type(value) != TensorProto.FLOAT:
            report.add(ERROR, "fp16-io", value.name, f"graph input is {_dtype_name(_elem_type(value))}"
                       "; the exporter's artifacts keep float32 I/O",
                       fix="convert with convert_float_to_float16(model, keep_io_types=True)")
        elif not any(n.op_type == "Cast" and _attr(n, "to") == TensorProto.FLOAT16
                     for n in g.consumer_nodes(value.name)):
            report.add(ERROR, "fp16-io", value.name, "float32 input is not cast to float16 at the "
                       "boundary (no input -> Cast(to=FLOAT16))",
                       fix="convert with convert_float_to_float16(model, keep_io_types=True)")
    for value in graph.output:
        if _elem_type(value) != TensorProto.FLOAT:
            report.add(ERROR, "fp16-io", value.name, f"graph output is {_dtype_name(_elem_type(value))}"
                       "; the exporter's artifacts keep float32 I/O",
                       fix="convert with convert_float_to_float16(model, keep_io_types=True)")
            continue
        prod = g.producer.get(value.name)
        if prod is None or prod.op_type != "Cast" or _attr(prod, "to") != TensorProto.FLOAT:
            report.add(ERROR, "fp16-io", value.name, "float32 output is not produced by a "
                       "Cast(to=FLOAT) at the boundary",
                       fix="convert with convert_float_to_float16(model, keep_io_types=True)")
