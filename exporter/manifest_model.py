"""The eager model an artifact directory's manifest records: rebuild it (``parity DIR``, the
reuse of a directory), check that its checkpoint and model file still hold what the export used,
and say what a re-export into the directory replaced."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .artifacts import MANIFEST, artifact_files, read_manifest, read_manifest_if_any, sha256_file
from .defaults import MODEL_OPTION_KEYS
from .recipes import InputSpec, Recipe


def replaced_export(old: dict[str, Any] | None, new: dict[str, Any], directory: Path) -> dict[str, Any]:
    """{"files": the earlier export's files the commit removed, "overwritten": its files this
    export wrote anew, "changed": {option: [old, new]}} when ``directory`` held an export of other
    model options; {} otherwise."""
    if not old or all(old.get(k) == new.get(k) for k in ("model_options", "input", "weights", "recipe")):
        return {}
    listed = {name for a in new.get("artifacts", []) for name in artifact_files(a)}
    earlier = [name for a in old.get("artifacts", []) for name in artifact_files(a)]
    files = [name for name in earlier if name not in listed and not (directory / name).exists()]
    overwritten = [name for name in earlier if name in listed]
    before, after = old.get("model_options") or {}, new.get("model_options") or {}
    changed = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)}
    code = [(x.get("recipe") or {}).get("source_sha256") for x in (old, new)]
    if code[0] != code[1]:
        changed["model code"] = [f"sha256 {str(code[0])[:12]}...", f"{str(code[1])[:12]}..."]
    old_weights, new_weights = old.get("weights") or {}, new.get("weights") or {}
    if "checkpoint" not in changed and old_weights.get("sha256") != new_weights.get("sha256"):
        changed["checkpoint content"] = [f"sha256 {str(old_weights.get('sha256'))[:12]}...",
                                         f"{str(new_weights.get('sha256'))[:12]}..."]
    return {"files": files, "overwritten": overwritten, "changed": changed} \
        if files or overwritten else {}


def changed_options(replaced: dict[str, Any]) -> str:
    """'input_size 64 -> default, seed 0 -> 1' of a :func:`replaced_export` record."""
    shown = lambda v: "default" if v is None else v  # noqa: E731
    return ", ".join(f"{k} {shown(a)} -> {shown(b)}" for k, (a, b) in replaced.get("changed", {}).items())


_OPTION_TYPES = {"model": str, "weights": str, "checkpoint": str, "output_name": str, "seed": int,
                 "input_size": int, "channels": int, "num_classes": int, "batch": int,
                 "output_index": int, "mean": list, "std": list}


def _check_option_types(options: dict[str, Any], where: Path) -> None:
    from .errors import ArtifactError

    for key, value in options.items():
        kind = _OPTION_TYPES[key]
        ok = value is None and key != "model" or isinstance(value, kind) and not isinstance(value, bool)
        if ok and kind is list and value is not None:
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok:
            raise ArtifactError(f"{where}: model option '{key}' is {value!r}, not a "
                                f"{kind.__name__}", fix="re-export the model into this directory")


def request_from_manifest(directory: Path, **overrides: Any):
    """The :class:`~exporter.pipeline.ExportRequest` that rebuilds the eager model recorded in
    ``directory``."""
    from .errors import ArtifactError
    from .pipeline import ExportRequest

    options = read_manifest(directory).get("model_options")
    if not isinstance(options, dict) or not isinstance(options.get("model"), str) \
            or set(options) - set(MODEL_OPTION_KEYS):
        raise ArtifactError(f"{Path(directory) / MANIFEST} does not record the model options "
                            f"({sorted(options) if isinstance(options, dict) else options!r})",
                            fix="re-export the model into this directory, or pass the MODEL again")
    options = dict(options)
    _check_option_types(options, Path(directory) / MANIFEST)
    for key in ("mean", "std"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    options.update(overrides)
    return ExportRequest(**options, output=Path(directory))


def load_reference(directory: Path) -> tuple[Recipe, InputSpec, nn.Module]:
    """Rebuild the exact eager reference (prepared, unfolded) recorded in a manifest."""
    from .pipeline import load_stage
    from .prepare import prepare_for_deploy

    recipe, spec, model, weights = load_stage(request_from_manifest(directory))
    check_same_weights(directory, weights, recipe.builder)
    reference, _ = prepare_for_deploy(model, recipe, fold=False)
    return recipe, spec, reference


def model_code_sha256(spec: str) -> str | None:
    """sha256 of a ``file.py:factory`` model's file (None for other specs or a file gone)."""
    path = Path(spec.rpartition(":")[0]) if ".py:" in spec else None
    return sha256_file(path) if path is not None and path.is_file() else None


def check_same_weights(directory: Path, weights: dict[str, Any], builder: str | None = None) -> None:
    """The checkpoint a manifest names still holds the weights the export was made from, and a
    ``file.py:factory`` model's file (``builder``) still holds the code it was made from."""
    from .errors import InputError

    manifest = read_manifest_if_any(directory) or {}
    code = (manifest.get("recipe") or {}).get("source_sha256")
    now = model_code_sha256(builder) if builder and code else None
    if now not in (None, code):
        path = builder.rpartition(":")[0]
        raise InputError(f"the model file {path} changed since the export in {directory} (sha256 "
                         f"{code[:12]}... at export, {now[:12]}... now): the eager "
                         "reference would not be the model the artifacts were made from",
                         fix=f"put back the code the export used, or re-export with this one "
                             f"(exporter export {path}:{builder.rpartition(':')[2]} -o {directory})")
    recorded = manifest.get("weights") or {}
    if recorded.get("kind") == "checkpoint" == weights.get("kind") and recorded.get("sha256") \
            and recorded.get("sha256") != weights.get("sha256"):
        raise InputError(
            f"the checkpoint {recorded.get('path')} changed since the export in {directory} (sha256 "
            f"{recorded['sha256'][:12]}... at export, {str(weights.get('sha256'))[:12]}... now): the eager "
            "reference would not be the model the artifacts were made from",
            fix="put back the checkpoint the export used, or re-export with this one "
                f"(exporter export ... --checkpoint {recorded.get('path')})")
