"""Core ML: ``<stem>[.fp16].mlpackage`` (an ML Program) converted by coremltools from the traced
model, FP32 or FP16 compute precision, the recipe's preprocessing in its metadata.

Core ML predicts only on macOS. Elsewhere the artifact is validated structurally when it is
written (input/output names, shapes, dtypes, op count, spec version: recorded in the manifest,
an :class:`ExportError` when they are not what the other artifacts have) and the runner raises
:class:`BackendUnavailableError`, so parity shows the row as "converted, not run: needs macOS".

A ``.mlpackage`` is a directory: its manifest entry hashes every file inside
(``artifacts.sha256_path``) and lists them under ``contents``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import shutil
import time
import warnings
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ExportError
from . import registry
from ..scratch import scratch_dir

DEPLOYMENT_TARGET = "iOS16"  # ML Program with fp16 I/O support: iOS 16 / macOS 13
NEEDS_MACOS = "converted, not run: needs macOS (Core ML predicts only on macOS)"


MAX_BATCH = 64  # upper bound of the dynamic batch axis (an ML Program needs a finite one)
IMPORT_MESSAGES: list[str] = []  # what coremltools logged on import (recorded in the manifest)


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0][:200]
        if message not in IMPORT_MESSAGES:
            IMPORT_MESSAGES.append(message)


def _ct():
    """coremltools, its import-time log lines (untested torch, no native runtime off macOS)
    collected instead of printed."""
    logger = logging.getLogger("coremltools")
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        return registry.require_module(registry.get("coreml"), "coremltools")
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _version() -> str:
    try:
        return metadata.version("coremltools")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "?"


def preprocessing(spec) -> dict[str, Any]:
    """What an app must do to an image before it is the model's input (the recipe's input spec)."""
    return {**spec.to_dict(), "layout": "NCHW float32",
            "steps": "resize the short side, center crop, scale to [0, 1], (x - mean) / std"}


def _shape_free_shuffle(x, groups: int):
    """ShuffleNetV2's channel shuffle without reading ``x.size()``: the same permutation."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


@contextlib.contextmanager
def _shape_free_shuffles(model):
    """torchvision's ShuffleNetV2 blocks shuffle channels with sizes read from ``x.size()``; a trace
    records those as ``aten::Int`` casts that coremltools cannot convert with a dynamic batch. While
    tracing, the blocks call :func:`_shape_free_shuffle` instead. Yields how many blocks do."""
    try:
        from torchvision.models import shufflenetv2
    except ImportError:  # pragma: no cover - torchvision is a dependency
        yield 0
        return
    blocks = sum(isinstance(m, shufflenetv2.InvertedResidual) for m in model.modules())
    original = shufflenetv2.channel_shuffle
    if blocks:
        shufflenetv2.channel_shuffle = _shape_free_shuffle
    try:
        yield blocks
    finally:
        shufflenetv2.channel_shuffle = original


def _convert(ct, deploy, ctx, precision: str):
    import torch

    from ..adaptive_pool import matmul_pools
    from ..export import _dummy

    dummy = _dummy(ctx.spec, 1)
    # coremltools cannot convert an adaptive pool whose output does not divide its input (VGG's
    # 7x7 at a small input size): traced at this fixed H/W, it becomes two MatMuls, as for ONNX
    with torch.no_grad(), warnings.catch_warnings(), matmul_pools(deploy.eval(), dummy) as pools, \
            _shape_free_shuffles(deploy) as shuffles:
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(deploy.eval(), dummy, check_trace=False)
    batch = ctx.request.batch or ct.RangeDim(lower_bound=1, upper_bound=MAX_BATCH, default=1)
    shape = ct.Shape(shape=(batch, ctx.spec.channels, *ctx.spec.size))
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as seen, contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        model = ct.convert(traced, source="pytorch", convert_to="mlprogram",
                           inputs=[ct.TensorType(name="input", shape=shape, dtype=np.float32)],
                           outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                           compute_precision=(ct.precision.FLOAT32 if precision == "fp32"
                                              else ct.precision.FLOAT16),
                           minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
        caught = sorted({str(w.message).splitlines()[0][:200] for w in seen
                         if not issubclass(w.category, ResourceWarning)})
    return model, caught, {"adaptive_pools_as_matmul": pools, "channel_shuffles_shape_free": shuffles}


def _describe(ctx, precision: str) -> dict[str, str]:
    return {"zoo-exporter.model": ctx.recipe.name, "zoo-exporter.precision": precision,
            "zoo-exporter.preprocessing": json.dumps(preprocessing(ctx.spec))}


def structure(path: Path) -> dict[str, Any]:
    """Spec version, model type, inputs/outputs (name, dtype, shape, batch range) and the ops of
    the main function of an ``.mlpackage``, read back from disk."""
    ct = _ct()
    spec = ct.utils.load_spec(str(path))

    def feature(f) -> dict[str, Any]:
        array = f.type.multiArrayType
        dtype = type(array).ArrayDataType.Name(array.dataType)
        ranges = [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
        return {"name": f.name, "dtype": dtype, "shape": list(array.shape), "ranges": ranges}

    ops: Counter = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            ops.update(op.type for op in block.operations)
    return {"spec_version": spec.specificationVersion, "model_type": spec.WhichOneof("Type"),
            "inputs": [feature(f) for f in spec.description.input],
            "outputs": [feature(f) for f in spec.description.output],
            "ops": sum(n for t, n in ops.items() if t != "const"), "const_ops": ops.get("const", 0),
            "op_types": dict(ops.most_common()),
            "metadata": dict(spec.description.metadata.userDefined)}


def check_structure(found: dict[str, Any], spec, precision: str) -> list[str]:
    """What differs from the other artifacts' interface: one float32 NCHW input ``input`` of the
    recipe's size, one float32 output ``logits``, an ML Program with ops, our metadata."""
    problems = []
    ins, outs = found["inputs"], found["outputs"]
    want = [spec.channels, *spec.size]
    if found["model_type"] != "mlProgram":
        problems.append(f"model type {found['model_type']}, not mlProgram")
    if [i["name"] for i in ins] != ["input"] or ins[0]["dtype"] != "FLOAT32" or ins[0]["shape"][1:] != want:
        problems.append(f"inputs {ins}, expected one FLOAT32 'input' of shape [N, {', '.join(map(str, want))}]")
    if [o["name"] for o in outs] != ["logits"] or outs[0]["dtype"] != "FLOAT32":
        problems.append(f"outputs {outs}, expected one FLOAT32 'logits'")
    if found["ops"] == 0:
        problems.append("the main function has no ops")
    if found["metadata"].get("zoo-exporter.precision") != precision:
        problems.append("the preprocessing/precision metadata is missing")
    return problems


def export(ctx) -> list[dict[str, Any]]:
    """The FP32 ML Program, plus the FP16 one for ``--precision fp16``."""
    from ..artifacts import artifact_entry

    ct = _ct()
    entries = []
    with scratch_dir("coreml") as scratch:
        for precision in ("fp32",) + ((ctx.precision,) if ctx.precision == "fp16" else ()):
            start = time.perf_counter()
            try:
                model, warned, rewrites = _convert(ct, ctx.deploy, ctx, precision)
            except Exception as err:  # noqa: BLE001 - the converter raises many types
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ExportError(f"coremltools could not convert {ctx.recipe.name}: {first}",
                                  fix="export --format onnx (or openvino) instead") from err
            model.user_defined_metadata.update(_describe(ctx, precision))
            model.short_description = f"{ctx.recipe.name} ({precision}) exported by zoo-exporter"
            model.input_description["input"] = ("NCHW float32 image batch, preprocessed as "
                                                "'zoo-exporter.preprocessing' says")
            model.output_description["logits"] = f"{ctx.recipe.num_classes} class logits"
            name = f"{ctx.stem}{'' if precision == 'fp32' else '.' + precision}.mlpackage"
            model.save(str(Path(scratch) / name))
            found = structure(Path(scratch) / name)
            problems = check_structure(found, ctx.spec, precision)
            if problems:
                raise ExportError(f"{name} fails its structural check: {'; '.join(problems)}",
                                  fix="report it; export --format onnx meanwhile")
            shutil.move(str(Path(scratch) / name), ctx.stage / name)
            found.pop("metadata")
            entries.append(artifact_entry(
                ctx.stage / name, "coreml", precision, coremltools=_version(),
                source="traced model (TorchScript) -> coremltools", convert_to="mlprogram",
                compute_precision=precision, minimum_deployment_target=DEPLOYMENT_TARGET,
                preprocessing=preprocessing(ctx.spec), structure=found, structural_check="passed",
                **rewrites,
                converter_warnings=warned, coremltools_messages=list(IMPORT_MESSAGES), seconds=round(time.perf_counter() - start, 3)))
    return entries


def artifact_notes(entry: dict[str, Any], directory: Path) -> list[str]:
    """The structural facts recorded at export, shown in the parity row (run or not)."""
    found = (entry.get("details") or {}).get("structure")
    if not found:
        return []
    ins = ", ".join(f"{i['name']} {i['dtype'].lower()} {i['shape']}" for i in found["inputs"])
    outs = ", ".join(f"{o['name']} {o['dtype'].lower()}" for o in found["outputs"])
    return [f"structure checked at export: spec v{found['spec_version']} {found['model_type']}, "
            f"{found['ops']} ops (+{found['const_ops']} const), input {ins}, output {outs}"]


class CoreMLRunner:
    """``MLModel.predict`` on macOS (CPU only, so parity compares like with like)."""

    def __init__(self, path: str | Path, *, precision: str = "fp32"):
        ct = _ct()
        self.path = Path(path)
        self.file = self.path.name
        self.precision = precision
        self.model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit.CPU_ONLY)
        self.name = f"coreml {precision}"
        self.runtime = f"coremltools {_version()} (Core ML, macOS {platform.mac_ver()[0]})"
        self.provider = "CPU_ONLY"
        self.threads = None
        self.notes = ["Core ML picks its own thread count"]
        shape = (self.model.get_spec().description.input[0].type.multiArrayType.shapeRange.sizeRanges)
        self.max_batch = int(shape[0].upperBound) if shape and shape[0].upperBound > 0 else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.model.predict({"input": np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out["logits"], dtype=np.float32)


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None) -> CoreMLRunner:
    """Runner for one manifest entry of format ``coreml``; off macOS a BackendUnavailableError
    (parity: "converted, not run: needs macOS")."""
    if platform.system() != "Darwin":
        raise BackendUnavailableError(f"{NEEDS_MACOS}; this is {platform.system()}",
                                      fix="run `exporter parity --artifacts DIR` on a Mac with "
                                          "'zoo-exporter[coreml]' installed")
    return CoreMLRunner(Path(directory) / artifact["file"], precision=artifact.get("precision", "fp32"))
