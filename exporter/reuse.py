"""Take or make: re-use an artifact directory written for the same request, export what is missing.

``parity`` and ``build`` both start from "the artifacts of this request". A directory is re-used
when its manifest records the same model options (:data:`pipeline.MODEL_OPTION_KEYS`) and export
options, and a precision artifact only when it was quantized with the same options (calibration
source, method, samples, target, budget) from calibration files unchanged since (names, sizes,
modification times). Anything else is exported again through the pipeline,
which keeps the manifest's other artifacts of the same model.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .pipeline import MODEL_OPTION_KEYS, ExportRequest, json_value, quant_options_record
from .recipes import InputSpec, Recipe

EXPORT_OPTION_KEYS = ("exporter", "simplifier")


@dataclass
class Prepared:
    """An artifact directory ready for parity or an engine build, and how it came to be."""

    directory: Path
    recipe: Recipe
    spec: InputSpec
    reference: nn.Module | None  # the eager reference (prepared, unfolded); None if not asked for
    manifest: dict[str, Any]
    note: str  # "re-using DIR" / "exported ... into DIR"


def manifest_matches(manifest: dict[str, Any], request: ExportRequest) -> bool:
    """Same eager model and same export options as ``request``."""
    options = manifest.get("model_options") or {}
    if any(json_value(options.get(k)) != json_value(getattr(request, k)) for k in MODEL_OPTION_KEYS):
        return False
    from .graph_input import GraphInput

    if GraphInput.from_manifest(manifest) != GraphInput.of(request):
        return False
    code = (manifest.get("recipe") or {}).get("source_sha256")
    if code:  # a file.py:factory model whose code was edited since is another model
        from .manifest_model import model_code_sha256

        if model_code_sha256(request.model) != code:
            return False
    export = manifest.get("export") or {}
    return all(export.get(k) in (None, getattr(request, k)) for k in EXPORT_OPTION_KEYS)


def _unusable(entry: dict[str, Any], directory: Path, request: ExportRequest) -> str:
    """Why the artifact ``entry`` cannot serve ``request`` as it is ("" when it can)."""
    from .artifacts import artifact_files

    if not all((directory / f).exists() for f in artifact_files(entry)):
        return "its file is gone"
    if entry["precision"] == "fp32":
        return ""
    details = entry.get("details") or {}
    had, want = details.get("options") or {}, quant_options_record(request.quant)
    if had != want:
        from .cli_options import quant_flag

        changed = [f"{quant_flag(k)} {had.get(k, 'default')} -> {want.get(k, 'default')}"
                   for k in sorted(set(had) | set(want)) if had.get(k) != want.get(k)]
        return f"made with other INT8 options: {', '.join(changed)}"
    if "data_files" in details and details["data_files"] != data_fingerprints(request.quant):
        return "its calibration or judging files changed since"
    return ""


def data_fingerprints(quant: dict[str, Any]) -> dict[str, str]:
    """{option: fingerprint} of the calibration / judging files an INT8 request reads (each file's
    path, size and modification time), so that a re-use notices data changed in place."""
    out = {}
    for key in ("calibration", "eval_data"):
        value = quant.get(key)
        if not isinstance(value, (str, os.PathLike)) or not Path(value).exists():
            continue  # packaged[:SEED] or arrays: the options record them
        root = Path(value)
        files = sorted(p for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file())
        digest = hashlib.sha256()
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(root) if root.is_dir() else path.name}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
        out[key] = f"{len(files)} file(s), sha256 {digest.hexdigest()[:16]}"
    return out


def missing_artifacts(manifest: dict[str, Any], directory: Path,
                      request: ExportRequest) -> dict[tuple[str, str], str]:
    """{(format, precision): why} of what ``request`` asks for that the directory cannot supply as
    is: FP32 of every format, and ``request.precision`` of every format whose backend produces it."""
    from .backends import registry

    wanted = [(f, "fp32") for f in request.formats]
    if request.precision != "fp32":
        wanted += [(f, request.precision) for f in request.formats
                   if request.precision in registry.get(f).precisions]
    why = {w: "absent" for w in wanted}
    for a in manifest.get("artifacts", []):
        key = (a["format"], a["precision"])
        if key in why and why[key]:
            why[key] = _unusable(a, directory, request)
    return {w: reason for w, reason in why.items() if reason}


def export_or_reuse(request: ExportRequest, *, verify: bool = False,
                    say: Callable[[str], None] = print, reference: bool = True) -> Prepared:
    """Re-use ``request``'s directory when it already holds what is asked for, else export (only
    the missing formats when the model matches). ``verify``: run the export's parity stage.
    ``reference=False``: a re-used directory does not rebuild the eager model (the caller has
    its outputs already and times nothing); an export builds it anyway."""
    from .artifacts import read_manifest_if_any
    from .builders import resolve_model
    from .manifest_model import changed_options, load_reference
    from .pipeline import export
    from .validate import check_model_options

    check_model_options(request)  # before a directory is read or anything exported
    recipe, spec = resolve_model(request.model, input_size=request.input_size, channels=request.channels,
                              mean=request.mean, std=request.std, num_classes=request.num_classes)
    directory = Path(request.output or Path("artifacts") / recipe.name)
    manifest = read_manifest_if_any(directory)
    if manifest is not None and manifest_matches(manifest, request):
        missing = missing_artifacts(manifest, directory, request)
        if not missing:
            model = None
            if reference:
                recipe, spec, model = load_reference(directory)
            return Prepared(directory, recipe, spec, model, manifest, f"re-using {directory}")
        formats = tuple(dict.fromkeys(f for f, _ in missing))
        if not any(p != "fp32" for _, p in missing):
            # the precision artifacts are there and kept; only fp32 formats are missing
            request = replace(request, precision="fp32", quant={})
        request = replace(request, formats=formats)
        note = (f"exported {', '.join(f'{f} {p}' for f, p in missing)} into {directory} ("
                + "; ".join(dict.fromkeys(missing.values())) + ")")
    else:
        note = f"exported {', '.join(request.formats)} into {directory}"
    say(f"exporting {request.model} ({', '.join(request.formats)}) -> {directory}")
    result = export(replace(request, output=directory, verify=verify, fail_on_breach=verify))
    if result.replaced:  # the folder held an export of other model options: it is gone now
        changed = changed_options(result.replaced)
        note += ("; it replaced the export of other model options there"
                 + (f" ({changed})" if changed else "")
                 + " (one folder holds one export: --output keeps both)")
    return Prepared(result.directory, result.recipe, result.spec, result.reference, result.manifest,
                    note)
