"""``exporter parity FILE``: one ONNX / pt2 / AOTInductor / TorchScript file without a manifest.

The file's format comes from its name and content; the eager model to compare against from
``--model SPEC`` or, for files this exporter wrote, from the metadata inside the file (model spec,
input size, weights), so ``exporter parity resnet18.onnx`` alone works on a self-describing file.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from .errors import UsageError

SUFFIXES = (".onnx", ".pt2", ".pt", ".ts", ".pth")


def looks_like_file(text: str | None) -> bool:
    return bool(text) and text.endswith(SUFFIXES) and Path(text).is_file()


def detect_format(path: Path) -> str:
    """onnx | aoti | pt2 | torchscript, from the suffix and (for .pt2) the archive's content."""
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".pt2":
        with zipfile.ZipFile(path) as archive:
            aoti = any("/aotinductor/" in n or n.endswith(".so") for n in archive.namelist())
        return "aoti" if aoti else "pt2"
    return "torchscript"


def embedded_metadata(path: Path, fmt: str) -> dict[str, Any]:
    """The exporter's metadata inside the file (decoded), or {} for a foreign file."""
    from .metadata import EXTRA_FILE, decode

    try:
        if fmt == "onnx":
            from .metadata import read_onnx_metadata

            return decode(read_onnx_metadata(path))
        if fmt == "aoti":
            from .backends.aoti import read_metadata

            return decode(read_metadata(path))
        import torch

        files = {EXTRA_FILE: ""}
        if fmt == "pt2":
            torch.export.load(str(path), extra_files=files)
        else:
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        return decode(json.loads(files[EXTRA_FILE])) if files[EXTRA_FILE] else {}
    except (OSError, ValueError, RuntimeError, KeyError):
        return {}


def model_options(meta: dict[str, Any], args) -> dict[str, Any]:
    """Model options from the file's metadata for what the user did not type."""
    options: dict[str, Any] = {}
    if not args.model_spec and meta.get("model_spec"):
        options["model"] = meta["model_spec"]
    shape = meta.get("input_shape")
    if isinstance(shape, list) and len(shape) == 4 and meta.get("layout") == "NHWC":
        shape = [shape[0], shape[3], shape[1], shape[2]]
    crop = meta.get("crop_size")  # the size it was exported at, also where H/W are dynamic
    if args.input_size is None and isinstance(shape, list) and len(shape) == 4 \
            and isinstance(shape[2], int) and shape[2] == shape[3]:
        options["input_size"] = int(shape[2])
    elif args.input_size is None and isinstance(crop, list) and len(crop) == 2 and crop[0] == crop[1]:
        options["input_size"] = int(crop[0])
    spec = args.model_spec or meta.get("model_spec") or ""
    if ".py:" in str(spec):  # a user module has no recipe: its input is what the file records
        if args.channels is None and isinstance(shape, list) and len(shape) == 4 \
                and isinstance(shape[1], int):
            options["channels"] = shape[1]
        for key in ("mean", "std"):
            if getattr(args, key) is None and isinstance(meta.get(key), list):
                options[key] = tuple(float(v) for v in meta[key])
    if args.num_classes is None and isinstance(meta.get("num_classes"), int):  # a fine-tuned head too
        options["num_classes"] = meta["num_classes"]
    weights = meta.get("weights") or {}
    if args.weights is None and args.checkpoint is None:
        if weights.get("kind") == "random" and args.seed == 0:
            options["seed"] = int(weights.get("seed", 0))
        elif weights.get("kind") == "checkpoint":
            options["checkpoint"] = weights.get("path", "")
        elif weights.get("kind") in ("torchvision", "timm"):
            options["weights"] = weights["name"].split(".")[-1] if weights["kind"] == "torchvision" \
                else "DEFAULT"
    return options


def file_manifest(path: Path, fmt: str, meta: dict[str, Any], batch: int | None) -> dict[str, Any]:
    """A one-artifact manifest for run_parity (precision from the metadata or the file name)."""
    from .artifacts import artifact_entry

    precision = meta.get("precision") or next(
        (p for p in ("fp16", "int8") if f".{p}." in path.name), "fp32")
    entry = artifact_entry(path, fmt, precision)
    if fmt == "pt2" and batch:
        entry["details"].update(dynamic_batch=False, batch=batch)
    graph_input = {"layout": str(meta.get("layout", "NCHW")).lower(),
                   "normalize_in_graph": str(meta.get("normalization", "")).startswith("in the graph"),
                   "dynamic_size": meta.get("dynamic_size") is True}
    return {"model": meta.get("model", path.stem), "artifacts": [entry],
            "input": {"batch": batch, **graph_input}}


def resolve(args) -> tuple[Path, str, dict[str, Any], dict[str, Any]]:
    """(path, format, metadata, model-option overrides) of ``exporter parity FILE``."""
    path = Path(args.model)
    fmt = detect_format(path)
    meta = embedded_metadata(path, fmt)
    options = model_options(meta, args)
    if args.model_spec:
        options["model"] = args.model_spec
    elif ".py:" in str(options.get("model", "")) and not getattr(args, "trust_model_code", False):
        from .errors import TrustError

        spec = options["model"]
        raise TrustError(f"{path}'s metadata rebuilds its eager model by running {spec}; code "
                         "named by an artifact is not run without consent",
                         fix=f"read {spec.rpartition(':')[0]} first, then pass it again: exporter "
                             f"parity {path} --model {spec} (or add --trust-model-code)")
    _check_checkpoint(path, (meta.get("weights") or {}), options.get("checkpoint") or args.checkpoint)
    if "model" not in options:
        raise UsageError(f"{path} carries no model metadata: which eager model is it?",
                         fix=f"exporter parity {path} --model SPEC (a recipe, torchvision:<name>, "
                             "timm:<name> or file.py:factory) with the export's --input-size and "
                             "--checkpoint")
    return path, fmt, meta, options


def _check_checkpoint(path: Path, recorded: dict[str, Any], checkpoint: str | None) -> None:
    """The checkpoint the eager reference loads is the one the file was exported from: a file
    whose recorded checkpoint is gone, or another checkpoint, is not compared against random or
    other weights (that reads as a parity breach of a good file)."""
    if recorded.get("kind") != "checkpoint" or not checkpoint:
        return
    from .artifacts import sha256_file
    from .errors import InputError

    name, sha = Path(recorded.get("path", "")).name, str(recorded.get("sha256") or "")
    if not Path(checkpoint).is_file():
        raise InputError(f"{path} was exported from the checkpoint {name} (sha256 {sha[:12]}...), and it "
                         f"is no longer at {checkpoint}",
                         fix=f"pass it where it is now: exporter parity {path} --checkpoint PATH")
    now = sha256_file(Path(checkpoint))
    if sha and now != sha:
        raise InputError(f"{path} was exported from the checkpoint {name} (sha256 {sha[:12]}...), not from "
                         f"{checkpoint} (sha256 {now[:12]}...): the eager reference would not be the model "
                         "the file was made from",
                         fix=f"pass the checkpoint the file was exported from: exporter parity {path} "
                             "--checkpoint PATH")
