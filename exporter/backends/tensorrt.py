"""TensorRT backend: build engines from the exporter's ONNX and run them with torch CUDA buffers.

Precision lives in the ONNX (fp32 graph, fp16 graph with fp32 I/O Casts, or int8 Q/DQ graph); the
network is strongly typed, so TensorRT keeps exactly the types the graph carries. Supports
TensorRT 10.x (strong typing requested by flag) and 11.x (always strongly typed).

``tensorrt`` and ``torch.cuda`` are touched only inside functions, so importing this module works on
machines without TensorRT or a GPU; :func:`require_tensorrt` says what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ..artifacts import sha256_file as _sha256_file
from ..artifacts import write_bytes_atomic
from ..errors import BackendUnavailableError, ExportError, InputSpecError, UsageError
from ..lint import lint_onnx
from ..recipes import PRECISIONS, InputSpec

INSTALL_HINT = "pip install 'zoo-exporter[tensorrt]' on a machine with an NVIDIA GPU and driver"
MIN_MAJOR = 10
ENGINE_SCHEMA = 1


class EngineBuildError(ExportError):
    """TensorRT could not parse the ONNX or build an engine from it."""


class EngineMismatchError(BackendUnavailableError):
    """A serialized engine was built by another TensorRT version or for another GPU."""


# ------------------------------------------------------------------------------ environment
def require_tensorrt(device: str = "cuda"):
    """Return the ``tensorrt`` module, or raise one :class:`BackendUnavailableError` line naming
    everything that is missing (the package, a CUDA build of torch, a CUDA GPU)."""
    missing, trt = [], None
    try:
        import tensorrt as trt  # noqa: F811 - lazy optional import
    except ModuleNotFoundError as err:
        missing.append("the 'tensorrt' Python package" if err.name in (None, "tensorrt")
                       else f"a dependency of tensorrt ({err.name})")
    except (ImportError, OSError) as err:  # wheel present but its CUDA/TensorRT libraries are not
        missing.append(f"working TensorRT libraries ({str(err).splitlines()[0]})")
    import torch

    if torch.version.cuda is None:
        missing.append(f"a CUDA build of torch (torch {torch.__version__} is CPU-only)")
    elif not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if trt is not None and _major(trt) < MIN_MAJOR:
        missing.append(f"TensorRT >= {MIN_MAJOR} (found {trt.__version__})")
    if missing:
        raise BackendUnavailableError(f"TensorRT backend unavailable on device '{device}': missing "
                                      + "; ".join(missing), fix=INSTALL_HINT)
    return trt


def _major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def _device_index(device: str) -> int:
    import torch

    if device in ("gpu", "cuda", "tensorrt"):
        return torch.cuda.current_device() if torch.cuda.is_available() else 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailableError(f"TensorRT runs on CUDA devices only, got device '{device}'",
                                  fix="pass --device cuda (or cuda:N)")


def gpu_info(index: int) -> dict[str, Any]:
    """Name and compute capability of CUDA device ``index``."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return {"index": index, "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_bytes": int(props.total_memory)}


def default_timing_cache_path(trt_version: str, compute_capability: str) -> Path:
    """Per-user timing cache, one per TensorRT version and GPU architecture."""
    root = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    tag = compute_capability.replace(".", "")
    return root / "zoo-exporter" / "tensorrt" / f"timing-{trt_version}-sm{tag}.cache"


# ------------------------------------------------------------------------------ small helpers
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


def engine_cache_key(onnx_sha256: str, trt_version: str, compute_capability: str,
                     profile: dict[str, Any], precision: str, workspace_bytes: int) -> str:
    blob = json.dumps({"onnx": onnx_sha256, "tensorrt": trt_version, "cc": compute_capability,
                       "profile": profile, "precision": precision,
                       "workspace": workspace_bytes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _make_logger(trt):
    """A TensorRT logger that keeps warnings and errors for error messages."""

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

    return CapturingLogger()


def _network_flags(trt) -> int:
    if _major(trt) >= 11:
        return 0  # 11.x: every network is strongly typed; the creation flag is ignored
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} cannot build strongly typed "
                                      "networks", fix="install TensorRT >= 10.0")
    return 1 << int(flag)


def _onnx_input(onnx_path: Path) -> tuple[str, list[int | str]]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != 1:
        raise UsageError(f"{onnx_path} has {len(inputs)} graph inputs; the exporter builds "
                         "single-input classifiers", fix="export with one NCHW input named 'input'")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def _profile(onnx_path: Path, spec: InputSpec, batches: tuple[int, int, int]) -> dict[str, Any]:
    lo, opt, hi = batches
    if not (1 <= lo <= opt <= hi):
        raise UsageError(f"batch profile min={lo} opt={opt} max={hi} is not 1 <= min <= opt <= max",
                         fix="e.g. --min-batch 1 --opt-batch 8 --max-batch 32")
    name, dims = _onnx_input(onnx_path)
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


def _read_engine_manifest(engine_path: Path) -> dict[str, Any] | None:
    sidecar = engine_path.with_name(engine_path.name + ".json")
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None


def _entry(engine_path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"file": engine_path.name, "format": "tensorrt", "precision": manifest["precision"],
            "sha256": manifest["engine_sha256"], "bytes": manifest["engine_bytes"],
            "details": manifest}


# ------------------------------------------------------------------------------ build
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
        raise UsageError(f"{onnx_path}: no such ONNX file", fix="run `exporter export` first")
    lint_onnx(onnx_path, precision).raise_for_errors()
    profile = _profile(onnx_path, input_spec, (min_batch, opt_batch, max_batch))
    trt = require_tensorrt(device)
    gpu = gpu_info(_device_index(device))
    onnx_sha = source_digest(onnx_path)
    key = engine_cache_key(onnx_sha, trt.__version__, gpu["compute_capability"], profile, precision,
                           workspace_bytes)
    model = model_name or onnx_path.name.split(".")[0]
    engine_path = out_dir / f"{model}.{precision}.sm{gpu['compute_capability'].replace('.', '')}.engine"
    cached = _read_engine_manifest(engine_path)
    if (cached and cached.get("cache_key") == key and engine_path.is_file()
            and _sha256_file(engine_path) == cached.get("engine_sha256")):
        cached["cached"] = True
        return _entry(engine_path, cached)  # same ONNX, TensorRT, GPU and profile: reuse as is
    created = not out_dir.exists()
    sidecar = engine_path.with_name(engine_path.name + ".json")
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
    return _entry(engine_path, manifest)


build_engine_stage = build_engine


def _build(trt, gpu, onnx_path: Path, engine_path: Path, precision: str, profile: dict[str, Any],
           workspace_bytes: int, timing_cache_path: Path) -> dict[str, Any]:
    import torch

    torch.cuda.set_device(gpu["index"])  # TensorRT builds on the current CUDA device
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: "
                               + " | ".join(errors or logger.lines[-5:] or ["no parser error"]),
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
                               + " | ".join(logger.lines[-8:] or ["no log output"]),
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
        "network_flags": "STRONGLY_TYPED" if _major(trt) < 11 else "default",
        "profile": profile, "workspace_bytes": int(workspace_bytes),
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "timing_cache": {"path": str(timing_cache_path), "state": cache_state},
        "build_seconds": round(seconds, 3), "torch_cuda": torch.version.cuda,
        "warnings": logger.lines[-20:],
    }


# ------------------------------------------------------------------------------ run
def check_engine_compatible(manifest: dict[str, Any] | None, trt_version: str, gpu: dict[str, Any],
                            engine_path: Path) -> None:
    """Refuse, before deserializing, an engine built by another TensorRT or for another GPU."""
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


def _torch_dtype(trt, dtype):
    import torch

    names = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
             "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
             "BOOL": torch.bool}
    for name, torch_dtype in names.items():
        if getattr(trt.DataType, name, None) == dtype:
            return torch_dtype
    raise EngineBuildError(f"engine I/O tensor type {dtype} has no torch equivalent")


class TensorRTRunner:
    """Runs a serialized engine on NCHW float32 numpy batches; torch CUDA tensors are the buffers."""

    def __init__(self, engine_path: str | Path, manifest: dict[str, Any] | None, device: str = "cuda"):
        import torch

        engine_path = Path(engine_path)
        trt = require_tensorrt(device)
        index = _device_index(device)
        gpu = gpu_info(index)
        check_engine_compatible(manifest, trt.__version__, gpu, engine_path)
        torch.cuda.set_device(index)
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(f"TensorRT could not deserialize {engine_path}: "
                                      + " | ".join(self._logger.lines[-5:]),
                                      fix="rebuild the engine with `exporter build`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        if len(self.inputs) != 1 or not self.outputs:
            raise EngineBuildError(f"{engine_path.name} has inputs {self.inputs} and outputs "
                                   f"{self.outputs}; expected one input and a logits output")
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        lo, _, hi = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.min_shape, self.max_shape = tuple(lo), tuple(hi)
        self.device = torch.device("cuda", index)
        self.stream = torch.cuda.Stream(device=self.device)
        self.precision = (manifest or {}).get("precision", "fp32")
        self.name = f"tensorrt {self.precision}"
        self.runtime = f"tensorrt {trt.__version__}"
        self.provider = f"cuda:{index} ({gpu['name']}, sm{gpu['compute_capability']})"

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        fits = (len(shape) == len(self.min_shape) and shape[1:] == self.min_shape[1:]
                and self.min_shape[0] <= shape[0] <= self.max_shape[0])
        if not fits:
            raise InputSpecError(f"batch shape {list(shape)} is outside the engine profile "
                                 f"{list(self.min_shape)}..{list(self.max_shape)}",
                                 fix="rebuild with --min-batch/--max-batch covering this batch")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self._check_shape(tuple(batch.shape))
        name = self.inputs[0]
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(batch).to(self.device).to(self._dtypes[name])
            if not self.context.set_input_shape(name, tuple(batch.shape)):
                raise InputSpecError(f"TensorRT rejected input shape {list(batch.shape)}")
            self.context.set_tensor_address(name, x.data_ptr())
            outputs = {}
            for out in self.outputs:
                shape = tuple(self.context.get_tensor_shape(out))
                outputs[out] = torch.empty(shape, dtype=self._dtypes[out], device=self.device)
                self.context.set_tensor_address(out, outputs[out].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineBuildError("TensorRT execution failed: "
                                       + " | ".join(self._logger.lines[-5:]))
            result = outputs[self.outputs[0]].float().cpu()
        self.stream.synchronize()
        return result.numpy()


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cuda") -> TensorRTRunner:
    """Runner factory for manifest entries of format ``tensorrt``."""
    engine_path = Path(directory) / artifact["file"]
    manifest = _read_engine_manifest(engine_path) or artifact.get("details")
    return TensorRTRunner(engine_path, manifest, device)


# ------------------------------------------------------------------------------ timing
def cuda_event_timer(fn: Callable[..., Any], *args: Any, warmup: int = 10, iters: int = 50) -> list[float]:
    """Milliseconds per call of ``fn(*args)`` measured with CUDA events; warm-up calls excluded."""
    import torch

    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)))
    return times


def gpu_latency(fn: Callable[..., Any], *args: Any, warmup: int = 10, iters: int = 50) -> dict[str, float]:
    """Median / p90 / mean / min latency in ms of ``fn(*args)`` on the current CUDA device."""
    times = np.asarray(cuda_event_timer(fn, *args, warmup=warmup, iters=iters))
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "mean_ms": float(times.mean()), "min_ms": float(times.min()), "iters": iters,
            "warmup": warmup}
