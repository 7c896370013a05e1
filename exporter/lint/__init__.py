"""TensorRT-readiness lint of an ONNX graph, on CPU, before any engine build.

TensorRT needs a CUDA device even to parse an ONNX file, so everything an engine build depends on
that *can* be checked without one is checked here, from the graph alone:

- ``opset``: the default-domain opset is in the range the TensorRT ONNX parser accepts;
- ``onnx-valid``: onnx's strict shape inference accepts the graph (no stale recorded shapes);
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

from pathlib import Path

import onnx
import onnx.external_data_helper

from ..errors import InputError
from .checks import _check_ops, _check_opset, _check_static_shapes, _check_valid
from .findings import ERROR, WARNING, Finding, LintError, LintReport, trt_op_table
from .graph import _Graph, detect_precision
from .qdq import _check_fp16_io, _check_qdq

__all__ = ["ERROR", "WARNING", "Finding", "LintError", "LintReport", "detect_precision",
           "lint_onnx", "lint_path", "trt_op_table"]


# ---------------------------------------------------------------------------- entry points
CPU_PLACEMENT_SKIPPED = ("the exporter's --target cpu INT8 (ONNX Runtime's integer kernels), not made for "
                         "TensorRT, so not judged (lint the file by name to see what TensorRT would "
                         "reject; for an engine, export --precision int8 --target tensorrt)")
CPU_PLACEMENT_FIX = ("by design for --target cpu; for TensorRT export --precision int8 --target tensorrt "
                     "(the default) and build from that file")


def lint_onnx(path_or_model: str | Path | onnx.ModelProto, precision: str | None = None,
              placement: str | None = None) -> LintReport:
    """Lint one ONNX graph for TensorRT. ``precision`` None: lint as the detected precision.
    ``placement`` "cpu" (or a file named ``*.int8.cpu.onnx``): the exporter's ONNX Runtime INT8,
    not made for TensorRT; the report says so above its findings."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, source = path_or_model, "<model>"
    else:
        model, source = load_onnx_file(path_or_model), str(path_or_model)
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
    if not isinstance(path_or_model, onnx.ModelProto):
        placement = _placement(Path(path_or_model), placement)
    if placement == "cpu":
        report.add(WARNING, "placement", "", "this is the exporter's --target cpu INT8 (ONNX Runtime's "
                   "integer kernels), not made for TensorRT: the Q/DQ findings below are what "
                   "TensorRT would reject, by design", fix="for a TensorRT engine export --precision int8 "
                   "--target tensorrt (the default) and build from that file")
    g = _Graph(model)
    _check_opset(model, report)
    _check_valid(model, report)
    _check_ops(model, report)
    _check_static_shapes(model, report)
    _check_qdq(g, report)
    if report.precision == "fp16":
        _check_fp16_io(g, report)
    if placement == "cpu":  # its Q/DQ findings are its design, not a quantizer setting to change
        report.findings = [Finding(f.severity, f.check, f.node, f.message, CPU_PLACEMENT_FIX)
                           if f.check.startswith("qdq") else f for f in report.findings]
    return report


def load_onnx_file(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file for checking; a file that is not one (text, truncated, an absurd length,
    external data outside its folder) is an :class:`InputError` saying so."""

    path = Path(path)
    fix = "pass an .onnx file written by an exporter; re-export it if it was cut short"
    if not path.is_file():
        raise InputError(f"{path} is {'a directory' if path.is_dir() else 'missing'}, not an ONNX file",
                         fix="pass an existing .onnx file or an artifact directory")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes), not an ONNX model", fix=fix)
    with open(path, "rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"
    if zipped:  # pt2, AOTInductor, TorchScript and Core ML packages are zip archives
        raise InputError(f"{path} is a zip archive (a PyTorch .pt2/.pt file or another package), not ONNX: "
                         "lint reads ONNX graphs (what TensorRT parses)",
                         fix="lint the ONNX file of the same export (artifacts/<model>/<model>.onnx), or "
                             "the artifact directory; check a .pt2 with `exporter parity FILE`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - DecodeError, RuntimeError, ValueError ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(f"{path} is not a readable ONNX model ({size} bytes: {first})", fix=fix) \
            from None
    if not model.graph.node or not model.opset_import:
        raise InputError(f"{path} is not an ONNX model ({size} bytes parse to an empty graph)",
                         fix=fix)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as err:  # noqa: BLE001 - onnx refuses data outside the folder, missing files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(f"{path}: its external data cannot be read ({first})",
                         fix="keep the external data files next to the .onnx, inside its folder") \
            from None
    return model


def lint_path(path: str | Path) -> list[LintReport]:
    """Lint an ``.onnx`` file, or every ONNX artifact listed in a directory's ``manifest.json``."""
    path = Path(path)
    if path.is_file():
        return [lint_onnx(path)]
    if not path.is_dir():
        raise InputError(f"{path}: no such ONNX file or artifact directory",
                         fix="pass a .onnx file or a directory written by `exporter export`")
    manifest = path / "manifest.json"
    if manifest.is_file():
        from ..artifacts import read_manifest

        entries = [e for e in read_manifest(path).get("artifacts", []) if e.get("format") == "onnx"]
        missing = [e["file"] for e in entries if not (path / e["file"]).is_file()]
        if missing:
            raise InputError(f"{manifest} lists ONNX artifacts that are missing: {missing}",
                             fix="re-run `exporter export` into this directory")
        return [_lint_for_tensorrt(path / e["file"], e.get("precision"),
                                   (e.get("details") or {}).get("target")) for e in entries]
    return [_lint_for_tensorrt(p) for p in sorted(path.glob("*.onnx"))]


def _placement(path: Path, placement: str | None) -> str | None:
    """The INT8 placement a file was made for: the manifest's, else its name's (``*.int8.cpu.onnx``)."""
    if placement is None and path.name.endswith(".int8.cpu.onnx"):
        return "cpu"
    return placement


def _lint_for_tensorrt(path: Path, precision: str | None = None,
                       placement: str | None = None) -> LintReport:
    """A directory's file, linted unless it is the exporter's ``--target cpu`` INT8 (made for ONNX
    Runtime, not TensorRT: listed as skipped; linting the file by name still judges it)."""
    if _placement(path, placement) == "cpu":
        return LintReport(source=str(path), precision=precision or "int8", detected_precision="int8",
                          opset=None, nodes=0, skipped=CPU_PLACEMENT_SKIPPED)
    return lint_onnx(path, precision, placement)
