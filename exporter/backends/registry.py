"""The runtime registry: one line per artifact format, read by the CLI, the pipeline and parity.

Adding a runtime = one backend module plus one :class:`Backend` line in :data:`BACKENDS`. The
module is imported only when its format is exported or run, and provides

* ``export(ctx: ExportContext) -> list[dict]`` - write the artifact(s) into ``ctx.stage`` and
  return their manifest entries (``artifacts.artifact_entry``); raise a typed error
  (``ExportError``/``PrecisionError``) for what the runtime cannot do, naming the op or precision;
* ``make_runner(artifact, directory, device, **options) -> Runner`` (``backends.base.Runner``);
* optionally ``artifact_notes(entry, directory) -> list[str]`` - notes parity shows in the row.

A missing optional runtime package raises :class:`BackendUnavailableError` naming the extra
(``pip install 'zoo-exporter[<extra>]'``), never a bare ImportError.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BackendUnavailableError, UsageError

if TYPE_CHECKING:  # torch stays out of the CLI's start-up path
    from torch import nn

    from ..pipeline import ExportRequest
    from ..recipes import InputSpec, Recipe


@dataclass(frozen=True)
class Backend:
    format: str  # the --format value and the manifest entry's "format"
    module: str  # exporter.backends.<module>
    summary: str  # one line for `exporter export --help`
    extra: str | None = None  # the pip extra that installs the runtime (None: a core dependency)
    precisions: tuple[str, ...] = ("fp32",)  # what its export() produces itself
    exportable: bool = True  # written by `exporter export` (TensorRT engines come from `build`)
    from_onnx: bool = False  # converted from the export's verified FP32 ONNX
    device: str | None = None  # a device its runner needs ("cuda"); parity skips it elsewhere
    packages: tuple[str, ...] = ()  # distributions whose versions reports name next to its rows
    requires: tuple[str, ...] = ()  # import names its export needs (checked before any work)
    # precision -> why this runtime cannot produce it here: `export --precision` raises
    # PrecisionError with the reason instead of a generic "not produced by --format" usage error
    unavailable: dict[str, str] = field(default_factory=dict, hash=False)
    # carries the graph input options (--dynamic-size, --layout nhwc, --normalize-in-graph):
    # exported from the graph_input-wrapped model with its example input and dynamic dims
    graph_input: bool = False
    suffixes: tuple[str, ...] = ()  # the file endings of one artifact (its companions too)


BACKENDS: dict[str, Backend] = {b.format: b for b in (
    Backend("onnx", "exporter.backends.onnxruntime", "ONNX (simplified), run by ONNX Runtime",
            precisions=("fp32", "fp16", "int8"), packages=("onnxruntime",), graph_input=True,
            suffixes=(".onnx",)),
    Backend("pt2", "exporter.backends.pt2",
            "torch.export ExportedProgram (.pt2), the recommended PyTorch format", graph_input=True,
            suffixes=(".pt2",)),
    Backend("aoti", "exporter.backends.aoti",
            "AOTInductor package (.aoti.pt2, compiled for this CPU; needs a C++ compiler)",
            graph_input=True, suffixes=(".aoti.pt2",)),
    Backend("torchscript", "exporter.backends.torchscript",
            "TorchScript (traced and frozen; deprecated in torch 2.14, kept for old runtimes)",
            graph_input=True, suffixes=(".ts.pt",)),
    Backend("tensorrt", "exporter.backends.tensorrt", "TensorRT engine (exporter build)",
            extra="tensorrt", precisions=("fp32", "fp16", "int8"), exportable=False, device="cuda",
            packages=("tensorrt",)),
    Backend("openvino", "exporter.backends.openvino",
            "OpenVINO IR (.xml + .bin) from the verified ONNX (its int8 is our Q/DQ ONNX, cpu placement)",
            extra="openvino", precisions=("fp32", "fp16", "int8"), from_onnx=True,
            packages=("openvino",), requires=("openvino",),
            suffixes=(".openvino.xml", ".openvino.bin")),
    Backend("ncnn", "exporter.backends.ncnn",
            "ncnn (.ncnn.param + .ncnn.bin) via pnnx from TorchScript (its fp16 is fp16 storage and arithmetic)",
            extra="ncnn", precisions=("fp32", "fp16"), packages=("ncnn", "pnnx"),
            requires=("ncnn", "pnnx"), suffixes=(".ncnn.param", ".ncnn.bin"),
            unavailable={"int8": "ncnn INT8 needs ncnn's quantization tools (ncnn2table, ncnn2int8), "
                                 "which come with an ncnn source build, not with the ncnn/pnnx wheels: "
                                 "not available on this machine"}),
    Backend("coreml", "exporter.backends.coreml",
            "Core ML ML Program (.mlpackage) from the traced model; predicts on macOS only",
            extra="coreml", precisions=("fp32", "fp16"), packages=("coremltools",),
            requires=("coremltools",), suffixes=(".mlpackage",)),
    Backend("executorch", "exporter.backends.executorch",
            "ExecuTorch .pte (XNNPACK delegate), run by executorch.runtime", extra="executorch",
            precisions=("fp32", "fp16", "int8"), packages=("executorch", "torchao"),
            requires=("executorch", "torchao"), suffixes=(".pte",)),
    Backend("tflite", "exporter.backends.tflite", "LiteRT .tflite (litert-torch), run by the "
            "LiteRT Interpreter", extra="litert", precisions=("fp32", "int8"),
            packages=("litert-torch", "ai-edge-litert"), requires=("litert_torch", "ai_edge_litert"),
            suffixes=(".tflite",)),
)}


@dataclass
class ExportContext:
    """What a backend's ``export`` gets: the prepared model and where to write."""

    deploy: "nn.Module"  # prepared, BN folded: what is exported
    recipe: "Recipe"
    spec: "InputSpec"
    request: "ExportRequest"
    stage: Path  # staging directory; files written here are moved into place on success
    stem: str  # file name stem (the recipe name)
    onnx_path: Path | None = None  # the verified FP32 ONNX of this export (from_onnx backends)
    log: Callable[[str], None] = field(default=lambda _msg: None)
    metadata: dict[str, str] = field(default_factory=dict)  # exporter.metadata: embed in artifacts

    @property
    def precision(self) -> str:
        return self.request.precision


def get(fmt: str) -> Backend:
    """The registry line of ``fmt``; an unknown format is a UsageError listing the known ones."""
    try:
        return BACKENDS[fmt]
    except KeyError:
        raise UsageError(f"unknown format '{fmt}'",
                         fix=f"use one or more of {list(export_formats())}, comma-separated "
                             "(e.g. --format onnx,torchscript)") from None


def export_formats() -> tuple[str, ...]:
    """The formats ``exporter export --format`` accepts, in registry order."""
    return tuple(f for f, b in BACKENDS.items() if b.exportable)


def runtime_packages() -> tuple[str, ...]:
    """Every backend's runtime distributions (recorded with their versions where installed)."""
    return tuple(dict.fromkeys(p for b in BACKENDS.values() for p in b.packages))


def artifact_names(formats: list[str], stem: str, precision: str, target: str | None = None) -> set[str]:
    """The file names an export of ``formats`` at ``precision`` may write (its FP32 artifacts too;
    ONNX INT8 names its placement ``target``), for the check that no file the exporter did not
    write stands in their way - made before any work."""
    tag = "" if precision == "fp32" else f".{precision}"
    names = {f"{stem}.int8.calib.json"} if precision == "int8" else set()
    for fmt in formats:
        own = f".int8.{target or 'tensorrt'}" if fmt == "onnx" and precision == "int8" else tag
        names |= {f"{stem}{t}{suffix}" for t in {"", own} for suffix in get(fmt).suffixes}
    return names


def install_hint(backend: Backend) -> str:
    return f"pip install 'zoo-exporter[{backend.extra}]'" if backend.extra else "pip install zoo-exporter"


def load(fmt: str) -> ModuleType:
    """Import the backend module of ``fmt`` (its runtime imports stay inside its functions)."""
    backend = get(fmt)
    try:
        return importlib.import_module(backend.module)
    except ImportError as err:
        raise BackendUnavailableError(
            f"the {fmt} backend cannot be imported: {err}", fix=install_hint(backend)) from err


def require_module(backend: Backend, package: str) -> ModuleType:
    """Import a runtime package for ``backend`` or raise one line naming the extra to install."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        missing = getattr(err, "name", None) or package
        via = f" (imported by '{package}')" if missing.split(".")[0] != package.split(".")[0] else ""
        raise BackendUnavailableError(
            f"--format {backend.format} needs the '{missing}' package{via}, which is not installed "
            f"({type(err).__name__}: {err})", fix=install_hint(backend)) from err


def check_installed(fmt: str) -> None:
    """Raise the one-line BackendUnavailableError naming the extra when a package ``fmt``'s export
    needs is not installed - before any export work (found, not imported: no import-time noise)."""
    backend = get(fmt)
    for package in backend.requires:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise BackendUnavailableError(f"--format {fmt} needs the '{package}' package, which is "
                                          "not installed", fix=install_hint(backend))


def check_request(fmt: str, request: Any) -> None:
    """``fmt``'s own checks of an export request (its module's ``check_request``), before any
    export work: a combination it would refuse only after the other formats were made."""
    hook = getattr(load(fmt), "check_request", None)
    if hook:
        hook(request)


def artifact_notes(entry: dict[str, Any], directory: Path) -> list[str]:
    """Backend-specific notes for one manifest entry (e.g. a TensorRT engine whose ONNX changed)."""
    backend = BACKENDS.get(entry.get("format", ""))
    if backend is None:
        return []
    hook = getattr(load(backend.format), "artifact_notes", None)
    return list(hook(entry, directory)) if hook else []


def package_versions(fmt: str) -> dict[str, str]:
    """Installed versions of the distributions ``fmt``'s registry line names (``packages``)."""
    from importlib import metadata

    out = {}
    for name in get(fmt).packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
