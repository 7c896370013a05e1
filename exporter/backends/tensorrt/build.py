"""Build a serialized TensorRT engine from the exporter's ONNX: strongly typed network (precision is
the ONNX's), one optimization profile, a workspace limit, a persistent timing cache, and the engine
cache of :mod:`.engine_cache`. Written atomically, with its manifest beside it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from ...artifacts import write_bytes_atomic
from ...errors import InputError, UsageError
from ...lint import lint_onnx
from ...recipes import PRECISIONS, InputSpec
from .engine_cache import (ENGINE_SCHEMA, default_timing_cache_path, engine_cache_key,
                           engine_manifest_path, engine_path_for, engine_profile, manifest_entry,
                           reusable_engine, source_digest)
from .environment import (EngineBuildError, device_index, gpu_info, make_logger, network_flags,
                          require_tensorrt, trt_major)


def _timing_cache(config, path: Path) -> str:
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return "loaded"
        except Exception:  # noqa: BLE001 - a corrupt cache only costs build time
            pass
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return "unusable (other GPU/TensorRT or corrupt), started fresh" if data else "new"


def _save_timing_cache(config, path: Path, state: str) -> str:
    try:
        write_bytes_atomic(path, bytes(memoryview(config.get_timing_cache().serialize())))
        return state
    except OSError as err:  # the engine is still good; say so in its manifest
        return f"{state}; not saved ({err})"


def build_engine(onnx_path: str | Path, out_dir: str | Path, precision: str, min_batch: int,
                 opt_batch: int, max_batch: int, workspace_bytes: int,
                 timing_cache_path: str | Path | None, input_spec: InputSpec, *,
                 device: str = "cuda", model_name: str | None = None) -> dict[str, Any]:
    """Build (or reuse) ``<model>.<precision>.sm<CC>.engine`` in ``out_dir`` and return its
    manifest artifact entry. The ONNX must already carry ``precision`` (lint checks it)."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'", fix=f"use one of {PRECISIONS}")
    if workspace_bytes <= 0:
        raise UsageError(f"workspace must be positive, got {workspace_bytes} bytes")
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such ONNX file", fix="run `exporter export` first")
    lint_onnx(onnx_path, precision).raise_for_errors()
    profile = engine_profile(onnx_path, input_spec, (min_batch, opt_batch, max_batch))
    trt = require_tensorrt(device)
    gpu = gpu_info(device_index(device))
    onnx_sha = source_digest(onnx_path)
    key = engine_cache_key(onnx_sha, trt.__version__, gpu["compute_capability"], gpu["name"],
                           profile, precision, workspace_bytes)
    model = model_name or onnx_path.name.split(".")[0]
    engine_path = engine_path_for(out_dir, model, precision, gpu["compute_capability"])
    cached = reusable_engine(engine_path, key)
    if cached is not None:
        return manifest_entry(engine_path, cached)  # same ONNX, TensorRT, GPU and profile: reuse as is
    created = not out_dir.exists()
    sidecar = engine_manifest_path(engine_path)
    try:
        manifest = _build(trt, gpu, onnx_path, engine_path, precision, profile, workspace_bytes,
                          Path(timing_cache_path) if timing_cache_path else
                          default_timing_cache_path(trt.__version__, gpu["compute_capability"]))
        manifest.update(cache_key=key, source_onnx=onnx_path.name, source_onnx_sha256=onnx_sha,
                        input_spec=input_spec.to_dict(), cached=False)
        try:
            write_bytes_atomic(sidecar, (json.dumps(manifest, indent=2) + "\n").encode())
        except BaseException:
            engine_path.unlink(missing_ok=True)  # never an engine without its manifest
            raise
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return manifest_entry(engine_path, manifest)


def _build(trt, gpu, onnx_path: Path, engine_path: Path, precision: str, profile: dict[str, Any],
           workspace_bytes: int, timing_cache_path: Path) -> dict[str, Any]:
    import torch

    torch.cuda.set_device(gpu["index"])  # TensorRT builds on the current CUDA device
    logger = make_logger(trt)
    mark = logger.mark()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: "
                               + " | ".join(errors or logger.since(mark)[-5:] or ["no parser error"]),
                               fix=f"run `exporter lint {onnx_path}`; re-export at opset 17")
    if network.num_inputs != 1 or network.get_input(0).name != profile["input"]:
        raise EngineBuildError(f"parsed network inputs differ from the ONNX input "
                               f"'{profile['input']}'")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:  # fp32 means fp32: TF32 would silently drop 13 mantissa bits
        config.clear_flag(tf32)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(profile["input"], tuple(profile["min"]), tuple(profile["opt"]),
                          tuple(profile["max"]))
    config.add_optimization_profile(opt_profile)
    cache_state = _timing_cache(config, timing_cache_path)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build {engine_path.name}: "
                               + " | ".join(logger.since(mark)[-8:] or ["no log output"]),
                               fix="raise --workspace, or check the log above; `exporter lint` "
                                   "the ONNX")
    cache_state = _save_timing_cache(config, timing_cache_path, cache_state)
    data = bytes(memoryview(serialized))
    write_bytes_atomic(engine_path, data)
    return {
        "schema": ENGINE_SCHEMA, "engine": engine_path.name,
        "engine_sha256": hashlib.sha256(data).hexdigest(), "engine_bytes": len(data),
        "tensorrt_version": trt.__version__, "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"], "precision": precision,
        "strongly_typed": True, "tf32": False,
        "network_flags": "STRONGLY_TYPED" if trt_major(trt) < 11 else "default",
        "profile": profile, "workspace_bytes": int(workspace_bytes),
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "timing_cache": {"path": str(timing_cache_path), "state": cache_state},
        "build_seconds": round(seconds, 3), "torch_cuda": torch.version.cuda,
        "warnings": logger.since(mark)[-20:],
    }
