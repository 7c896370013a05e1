"""onnxruntime-gpu runners: TensorrtExecutionProvider and CUDAExecutionProvider.

ONNX Runtime silently falls back to the next provider when one cannot be registered (missing
TensorRT/CUDA libraries), so the runner reports ``session.get_providers()[0]`` — what actually
runs — and, unless ``allow_fallback`` is set, refuses a session whose first provider is not the
one requested. ``onnxruntime`` is imported lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
           "cuda": "CUDAExecutionProvider"}
INSTALL_HINT = ("pip install 'zoo-exporter[gpu]' (onnxruntime-gpu, replacing the CPU-only "
                "onnxruntime) on a machine with an NVIDIA GPU; the TensorRT provider also needs "
                "'zoo-exporter[tensorrt]'")


def available_gpu_providers() -> list[str]:
    """GPU execution providers this onnxruntime build offers (registration may still fail)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return [p for p in ort.get_available_providers() if p in GPU_PROVIDERS]


def _device_id(device: str) -> int:
    if device in ("cuda", "gpu"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailableError(f"onnxruntime GPU providers need a CUDA device, got '{device}'",
                                  fix="pass --device cuda (or cuda:N)")


class OrtGpuRunner:
    """One ONNX artifact in an onnxruntime session on a GPU execution provider."""

    def __init__(self, onnx_path: str | Path, precision: str, provider: str, device: str = "cuda",
                 cache_dir: str | Path | None = None, allow_fallback: bool = False):
        import onnxruntime as ort

        requested = ALIASES.get(provider, provider)
        if requested not in GPU_PROVIDERS:
            raise BackendUnavailableError(f"'{provider}' is not a GPU provider",
                                          fix=f"use one of {list(ALIASES)}")
        if requested not in available_gpu_providers():
            raise BackendUnavailableError(
                f"onnxruntime {ort.__version__} offers no {requested} (available: "
                f"{ort.get_available_providers()})", fix=INSTALL_HINT)
        options: dict[str, Any] = {"device_id": _device_id(device)}
        chain: list[Any] = []
        if requested == "TensorrtExecutionProvider":
            trt_options = dict(options)
            if cache_dir is not None:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                trt_options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
            chain.append(("TensorrtExecutionProvider", trt_options))
        chain += [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), providers=chain)
        self.provider = self.session.get_providers()[0]  # what runs, never what was asked for
        if self.provider != requested and not allow_fallback:
            raise BackendUnavailableError(
                f"onnxruntime fell back from {requested} to {self.provider} for {onnx_path}",
                fix=f"{INSTALL_HINT}; check the onnxruntime log for the provider's load error")
        self.requested = requested
        self.precision = precision
        self.input_name = self.session.get_inputs()[0].name
        short = "tensorrt" if self.provider == "TensorrtExecutionProvider" else "cuda"
        self.name = f"onnx {precision} (ort-{short})"
        self.runtime = f"onnxruntime {ort.__version__}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cuda",
                provider: str = "CUDAExecutionProvider", **kwargs: Any) -> OrtGpuRunner:
    """Runner for an ``onnx`` manifest entry on onnxruntime-gpu (``provider``: cuda | tensorrt)."""
    return OrtGpuRunner(Path(directory) / artifact["file"], artifact.get("precision", "fp32"),
                        provider, device, **kwargs)
