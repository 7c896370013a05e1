"""TensorRT backend: build engines from the exporter's ONNX and run them with torch CUDA buffers.

Precision lives in the ONNX (fp32 graph, fp16 graph with fp32 I/O Casts, or int8 Q/DQ graph); the
network is strongly typed, so TensorRT keeps exactly the types the graph carries. Supports
TensorRT 10.x (strong typing requested by flag) and 11.x (always strongly typed).

``tensorrt`` and ``torch.cuda`` are touched only inside functions, so importing this package works
on machines without TensorRT or a GPU; :func:`require_tensorrt` says what is missing.

* :mod:`.environment` - what must be installed, GPU facts, logger and network flags;
* :mod:`.engine_cache` - cache keys, engine manifests, profiles, compatibility (no TensorRT needed);
* :mod:`.build` - ``build_engine``;
* :mod:`.runner` - ``TensorRTRunner`` / ``make_runner`` and CUDA-event timing.
"""
from .build import build_engine
from .engine_cache import (ENGINE_SCHEMA, check_engine_compatible, default_timing_cache_path,
                           engine_cache_key, engine_path_for, engine_profile, read_engine_manifest,
                           reusable_engine, source_digest, stale_source_note)
from .environment import (INSTALL_HINT, MIN_MAJOR, EngineBuildError, EngineMismatchError,
                          device_index, gpu_info, require_tensorrt)
from .runner import TensorRTRunner, cuda_event_timer, gpu_latency, make_runner



def artifact_notes(entry: dict, directory) -> list[str]:
    """Registry hook: a note when the engine's source ONNX was re-exported since it was built."""
    note = stale_source_note(entry, directory)
    return [note] if note else []


__all__ = ["artifact_notes", "ENGINE_SCHEMA", "INSTALL_HINT", "MIN_MAJOR", "EngineBuildError", "EngineMismatchError",
           "TensorRTRunner", "build_engine", "check_engine_compatible", "cuda_event_timer",
           "default_timing_cache_path", "device_index", "engine_cache_key", "engine_path_for",
           "engine_profile", "gpu_info", "gpu_latency", "make_runner", "read_engine_manifest",
           "require_tensorrt", "reusable_engine", "source_digest", "stale_source_note"]
