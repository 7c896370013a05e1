"""The engine cache, decided without TensorRT or a GPU: cache keys, file names, engine manifests,
optimization profiles, and the checks that refuse a plan built by another TensorRT or for another GPU.

An engine is reused only when its manifest's key (ONNX bytes + TensorRT version + compute capability
+ profile + precision + workspace) matches and the engine file still has the recorded sha256.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx

from ...artifacts import sha256_file as _sha256_file
from ...artifacts import user_cache_dir
from ...errors import InputSpecError, UsageError
from ...recipes import InputSpec
from .environment import EngineMismatchError

ENGINE_SCHEMA = 1


def default_timing_cache_path(trt_version: str, compute_capability: str) -> Path:
    """Per-user timing cache, one per TensorRT version and GPU architecture."""
    tag = compute_capability.replace(".", "")
    return user_cache_dir("tensorrt", f"timing-{trt_version}-sm{tag}.cache")


def source_digest(onnx_path: Path) -> str:
    """sha256 of the ONNX bytes plus any external-data files it references."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = sorted({entry.value for t in model.graph.initializer for entry in t.external_data
                        if entry.key == "location"})
    if not locations:
        return _sha256_file(onnx_path)
    digest = hashlib.sha256(_sha256_file(onnx_path).encode())
    for loc in locations:
        digest.update(_sha256_file(onnx_path.parent / loc).encode())
    return digest.hexdigest()


def engine_cache_key(onnx_sha256: str, trt_version: str, compute_capability: str, gpu_name: str,
                     profile: dict[str, Any], precision: str, workspace_bytes: int) -> str:
    """Everything an engine plan depends on. The GPU model counts beside its compute capability:
    TensorRT warns that a plan moved between models of one architecture may fail or run slowly."""
    blob = json.dumps({"onnx": onnx_sha256, "tensorrt": trt_version, "cc": compute_capability,
                       "gpu": gpu_name, "profile": profile, "precision": precision,
                       "workspace": workspace_bytes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def onnx_input(onnx_path: Path) -> tuple[str, list[int | str]]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != 1:
        raise UsageError(f"{onnx_path} has {len(inputs)} graph inputs; the exporter builds "
                         "single-input classifiers", fix="export with one NCHW input named 'input'")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def engine_profile(onnx_path: Path, spec: InputSpec, batches: tuple[int, int, int]) -> dict[str, Any]:
    lo, opt, hi = batches
    if not (1 <= lo <= opt <= hi):
        raise UsageError(f"batch profile min={lo} opt={opt} max={hi} is not 1 <= min <= opt <= max",
                         fix="e.g. --min-batch 1 --opt-batch 8 --max-batch 32")
    name, dims = onnx_input(onnx_path)
    expected = [spec.channels, *spec.size]
    if len(dims) != 4 or list(dims[1:]) != expected:
        raise InputSpecError(f"{onnx_path} input '{name}' is {dims}, the input spec says "
                             f"[N, {', '.join(map(str, expected))}]",
                             fix="build from the ONNX exported for this input size")
    if isinstance(dims[0], int) and dims[0] > 0 and not lo == opt == hi == dims[0]:
        raise UsageError(f"{onnx_path} has a fixed batch of {dims[0]}; asked for profile "
                         f"{lo}/{opt}/{hi}", fix=f"use --min-batch/--opt-batch/--max-batch {dims[0]} "
                         "or re-export with a dynamic batch axis")
    return {"input": name, "min": [lo, *expected], "opt": [opt, *expected], "max": [hi, *expected]}


def engine_path_for(out_dir: Path, model: str, precision: str, compute_capability: str) -> Path:
    """``<model>.<precision>.sm<CC>.engine``: one file per GPU architecture, so plans never mix."""
    return Path(out_dir) / f"{model}.{precision}.sm{compute_capability.replace('.', '')}.engine"


def engine_manifest_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def read_engine_manifest(engine_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(engine_manifest_path(engine_path).read_text())
    except (OSError, ValueError):
        return None


def reusable_engine(engine_path: Path, cache_key: str) -> dict[str, Any] | None:
    """The manifest of ``engine_path`` when it may be reused for ``cache_key``, else None (rebuild):
    no manifest, another key, a missing engine, or an engine whose bytes changed."""
    cached = read_engine_manifest(engine_path)
    if not cached or cached.get("cache_key") != cache_key or not engine_path.is_file():
        return None
    if _sha256_file(engine_path) != cached.get("engine_sha256"):
        return None
    return dict(cached, cached=True)


def manifest_entry(engine_path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"file": engine_path.name, "format": "tensorrt", "precision": manifest["precision"],
            "sha256": manifest["engine_sha256"], "bytes": manifest["engine_bytes"],
            "details": manifest}


def check_engine_compatible(manifest: dict[str, Any] | None, trt_version: str, gpu: dict[str, Any],
                            engine_path: Path) -> None:
    """Refuse, before deserializing, an engine built by another TensorRT or for another GPU
    (another compute capability, or another model of the same one)."""
    rebuild = f"rebuild it: exporter build --onnx <its ONNX> --precision <p> (replaces {engine_path.name})"
    if not manifest:
        raise EngineMismatchError(f"{engine_path} has no engine manifest "
                                  f"({engine_path.name}.json); cannot verify it", fix=rebuild)
    built = (manifest.get("tensorrt_version"), manifest.get("compute_capability"))
    if built[0] != trt_version:
        raise EngineMismatchError(f"{engine_path.name} was built with TensorRT {built[0]}; this "
                                  f"process runs TensorRT {trt_version}", fix=rebuild)
    if built[1] != gpu["compute_capability"]:
        raise EngineMismatchError(f"{engine_path.name} was built for compute capability {built[1]} "
                                  f"({manifest.get('gpu')}); this GPU ({gpu['name']}) is "
                                  f"{gpu['compute_capability']}", fix=rebuild)
    if manifest.get("gpu") and manifest["gpu"] != gpu["name"]:
        raise EngineMismatchError(f"{engine_path.name} was built on a {manifest['gpu']}; this GPU is "
                                  f"a {gpu['name']} (same compute capability {built[1]}, but TensorRT "
                                  "plans are tuned per GPU model)", fix=rebuild)


def stale_source_note(entry: dict[str, Any], directory: Path) -> str | None:
    """A note when the ONNX an engine was built from has changed since (re-exported beside it)."""
    details = entry.get("details") or {}
    source, built_from = details.get("source_onnx"), details.get("source_onnx_sha256")
    if not source or not built_from or not (Path(directory) / source).is_file():
        return None
    if source_digest(Path(directory) / source) == built_from:
        return None
    return (f"built from an earlier {source} (sha256 {built_from[:12]}); the directory's {source} "
            f"has changed since: rebuild with `exporter build --onnx {Path(directory) / source} "
            f"--precision {details.get('precision', entry.get('precision', 'fp32'))}`")
