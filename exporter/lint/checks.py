"""Graph-level checks: opset range, operator table, static shapes."""
from __future__ import annotations

import onnx

from .findings import ERROR, LintReport, trt_op_table
from .graph import _all_nodes, _attr, _label


def _check_opset(model: onnx.ModelProto, report: LintReport) -> None:
    lo, hi = trt_op_table()["opset"]["min"], trt_op_table()["opset"]["max"]
    opset = report.opset
    if opset is None:
        report.add(ERROR, "opset", "", "the model imports no default-domain ('' / ai.onnx) opset",
                   fix="re-export with torch.onnx.export(..., opset_version=17)")
    elif not lo <= opset <= hi:
        report.add(ERROR, "opset", "", f"opset {opset} is outside the TensorRT ONNX parser range "
                   f"{lo}..{hi} ({report.table_version})",
                   fix=f"re-export with an opset in {lo}..{hi} (the exporter uses 17), or convert "
                       f"with onnx.version_converter.convert_version(model, 17)")


def _check_valid(model: onnx.ModelProto, report: LintReport) -> None:
    """onnx's strict shape inference: a recorded shape that contradicts the graph (a stale
    ``value_info``) is an error ONNX Runtime warns on and TensorRT's parser may trip on."""
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        report.add(ERROR, "onnx-valid", "", f"onnx's shape inference rejects the graph: {first[:300]}",
                   fix="drop or correct the stale value_info shapes (onnx.shape_inference.infer_shapes "
                       "on a copy without value_info shows the right ones), or re-export")
    except Exception:  # noqa: BLE001 - an op or opset the inference does not know: other checks say so
        return


def _check_ops(model: onnx.ModelProto, report: LintReport) -> None:
    table = trt_op_table()
    supported, unsupported = set(table["supported"]), set(table["unsupported"])
    domains = set(table["domains"])
    for node in _all_nodes(model.graph):
        label, op = _label(node), node.op_type
        if node.domain not in domains:
            report.add(ERROR, "op-support", label, f"op '{node.domain}::{op}' is outside the ONNX "
                       "default domain; the TensorRT parser has no importer for it",
                       fix=f"replace '{op}' with standard ONNX ops in the model/export, or register a "
                           "TensorRT plugin of that name before parsing")
        elif op not in supported:
            why = "marked unsupported" if op in unsupported else "not listed"
            report.add(ERROR, "op-support", label, f"op '{op}' is {why} in the onnx-tensorrt operator "
                       f"table ({table['source']['version']})",
                       fix=f"rewrite the module that exports '{op}' with supported ops (see "
                           "exporter/trt_ops.json), or provide a TensorRT plugin for it")
        elif op == "MaxPool" and len([o for o in node.output if o]) > 1:
            report.add(ERROR, "op-support", label, "MaxPool with an Indices output is not supported",
                       fix="export MaxPool without return_indices=True")
        elif op == "Resize" and _attr(node, "mode", b"nearest") not in (b"nearest", b"linear"):
            report.add(ERROR, "op-support", label, f"Resize mode {_attr(node, 'mode')!r} is not "
                       "supported (nearest/linear only)", fix="use nearest or (bi)linear resizing")


def _check_static_shapes(model: onnx.ModelProto, report: LintReport) -> None:
    inits = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape"):
            report.add(ERROR, "static-shape", value.name, "graph input has no shape",
                       fix="export with an example input so the shape is recorded")
            continue
        for axis, dim in enumerate(dims):
            if axis == 0:
                continue
            if not (dim.HasField("dim_value") and dim.dim_value > 0):
                shown = dim.dim_param or "?"
                report.add(ERROR, "static-shape", value.name,
                           f"dimension {axis} is dynamic ('{shown}'); only the batch axis (0) may be "
                           "dynamic for this lint (a TensorRT engine then needs an optimization "
                           "profile for every dynamic axis)",
                           fix="re-export without --dynamic-size (exporter export MODEL), or from "
                               "your own code with fixed channels/height/width and a dynamic axis "
                               "only on dim 0 (dynamic_axes={'input': {0: 'batch'}})")
