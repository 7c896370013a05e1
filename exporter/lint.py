"""TensorRT-readiness lint of an ONNX graph, on CPU, before any engine build.

TensorRT needs a CUDA device even to parse an ONNX file, so everything an engine build depends on
that *can* be checked without one is checked here, from the graph alone:

- ``opset``: the default-domain opset is in the range the TensorRT ONNX parser accepts;
- ``op-support``: every node is in the onnx-tensorrt operator table (``trt_ops.json``);
- ``static-shape``: graph inputs have fixed dimensions except the batch axis (dim 0);
- ``qdq-*``: explicit-quantization invariants for strongly typed INT8 engines (int8 zero-points
  equal to 0, positive scales, per-tensor activations, per-channel weight axis, no int32 bias);
- ``fp16-io``: FP16 graphs keep float32 graph I/O with Casts at the boundary;
- ``precision``: the graph's precision is the one that was asked for.

``lint_onnx`` returns a :class:`LintReport`; ``lint_path`` lints a file or every ONNX artifact of
an artifact directory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import DeployCheckError, UsageError

ERROR, WARNING = "error", "warning"
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
# Weight input index and the output-channel axis TensorRT expects for per-channel weight scales.
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


class LintError(DeployCheckError):
    """The ONNX graph breaks a TensorRT requirement (raised by builds; the lint itself reports)."""


@lru_cache(maxsize=1)
def trt_op_table() -> dict[str, Any]:
    """The onnx-tensorrt operator table and opset range shipped in ``trt_ops.json``."""
    return json.loads((Path(__file__).with_name("trt_ops.json")).read_text())


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning
    check: str
    node: str  # node (or graph input/output) name, "" for graph-level findings
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        text = f"{self.severity.upper():7s} {self.check}{where}: {self.message}"
        return f"{text}\n        fix: {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "check": self.check, "node": self.node,
                "message": self.message, "fix": self.fix}


@dataclass
class LintReport:
    source: str
    precision: str  # the precision the graph was linted as
    detected_precision: str
    opset: int | None
    nodes: int
    op_types: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    table_version: str = ""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, check: str, node: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(severity, check, node, message, fix))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ok": self.ok, "precision": self.precision,
                "detected_precision": self.detected_precision, "opset": self.opset,
                "nodes": self.nodes, "op_types": dict(sorted(self.op_types.items())),
                "table_version": self.table_version,
                "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [f.to_dict() for f in self.findings]}

    def render(self) -> str:
        verdict = "OK" if self.ok else "NOT READY"
        head = (f"TensorRT lint {verdict}: {self.source} ({self.precision}, opset {self.opset}, "
                f"{self.nodes} nodes; {len(self.errors)} error(s), {len(self.warnings)} warning(s); "
                f"op table {self.table_version})")
        return "\n".join([head] + [f"  {f}" for f in self.findings])

    __str__ = render

    def raise_for_errors(self) -> None:
        """Raise :class:`LintError` naming the first error and its fix when the lint failed."""
        if self.errors:
            first = self.errors[0]
            more = f" (+{len(self.errors) - 1} more; run `exporter lint {self.source}`)" \
                if len(self.errors) > 1 else ""
            raise LintError(f"{self.source} is not TensorRT-ready: {first.check}"
                            f"{' [' + first.node + ']' if first.node else ''}: {first.message}{more}",
                            fix=first.fix or None)


# ---------------------------------------------------------------------------- graph helpers
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


# ---------------------------------------------------------------------------- checks
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
                           f"dimension {axis} is dynamic ('{shown}'); only the batch axis (0) may be",
                           fix="export with fixed channels/height/width and dynamic_axes only on "
                               "dim 0 (e.g. dynamic_axes={'input': {0: 'batch'}})")


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
    qdq = [n for n in g.nodes if n.op_type in (_Q, _DQ)]
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
    for consumer in g.consumers.get(dq.output[0], []):
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
                     for n in g.consumers.get(value.name, [])):
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


# ---------------------------------------------------------------------------- entry points
def lint_onnx(path_or_model: str | Path | onnx.ModelProto, precision: str | None = None) -> LintReport:
    """Lint one ONNX graph for TensorRT. ``precision`` None: lint as the detected precision."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, source = path_or_model, "<model>"
    else:
        model, source = onnx.load(str(path_or_model)), str(path_or_model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    detected = detect_precision(model)
    table = trt_op_table()
    report = LintReport(source=source, precision=precision or detected, detected_precision=detected,
                        opset=opset, nodes=len(model.graph.node),
                        table_version=table["source"]["version"])
    for node in model.graph.node:
        report.op_types[node.op_type] = report.op_types.get(node.op_type, 0) + 1
    if precision is not None and precision != detected:
        report.add(ERROR, "precision", "", f"asked to lint as {precision} but the graph is {detected}",
                   fix=f"pass the {precision} artifact (fp16: convert_float_to_float16 with "
                       "keep_io_types=True; int8: Q/DQ from the quantize stage), or ask for "
                       f"--precision {detected}")
    g = _Graph(model)
    _check_opset(model, report)
    _check_ops(model, report)
    _check_static_shapes(model, report)
    _check_qdq(g, report)
    if report.precision == "fp16":
        _check_fp16_io(g, report)
    return report


def lint_path(path: str | Path) -> list[LintReport]:
    """Lint an ``.onnx`` file, or every ONNX artifact listed in a directory's ``manifest.json``."""
    path = Path(path)
    if path.is_file():
        return [lint_onnx(path)]
    if not path.is_dir():
        raise UsageError(f"{path}: no such ONNX file or artifact directory",
                         fix="pass a .onnx file or a directory written by `exporter export`")
    manifest = path / "manifest.json"
    if manifest.is_file():
        entries = [e for e in json.loads(manifest.read_text()).get("artifacts", [])
                   if e.get("format") == "onnx"]
        missing = [e["file"] for e in entries if not (path / e["file"]).is_file()]
        if missing:
            raise UsageError(f"{manifest} lists ONNX artifacts that are missing: {missing}",
                             fix="re-run `exporter export` into this directory")
        return [lint_onnx(path / e["file"], e.get("precision")) for e in entries]
    return [lint_onnx(p) for p in sorted(path.glob("*.onnx"))]
