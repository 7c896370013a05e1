"""Eager PyTorch runner around an ``nn.Module`` (the parity reference), on CPU or CUDA.

On CUDA, TF32 is switched off while the reference runs: the reference is FP32, and TF32
convolutions would put ~1e-3 relative noise into what every artifact is compared against.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailableError


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'; 'cuda' without one raises."""
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "--device cuda asked for but torch sees no CUDA device",
            fix="run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu/auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BackendUnavailableError(f"unknown device '{device}'", fix="use cpu, cuda or auto")
    return device


def device_label(device: str) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


@contextlib.contextmanager
def fp32_strict():
    """Disable TF32 for cuDNN convolutions and CUDA matmuls inside the block."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor of a model output (tensor, (logits, aux...) tuple, or .logits)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}, expected a logits tensor")


class TorchModuleRunner:
    """Shared numpy-in / numpy-out wrapper for eager modules and TorchScript modules."""

    kind = "eager"

    def __init__(self, module: nn.Module, device: str = "cpu", *, name: str = "eager",
                 precision: str = "fp32", runtime: str | None = None, file: str = ""):
        self.device = resolve_device(device)
        self.module = module.to(self.device) if self.device != "cpu" else module
        self.module.eval()
        self.name = name
        self.file = file
        self.precision = precision
        self.runtime = runtime or f"torch {torch.__version__}"
        self.provider = device_label(self.device)
        self.threads = torch.get_num_threads()
        self.output_name = "logits"
        self.notes: list[str] = []
        if self.device.startswith("cuda"):
            self.notes.append("TF32 disabled (strict fp32)")

    def _ctx(self):
        return fp32_strict() if self.device.startswith("cuda") else contextlib.nullcontext()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), self._ctx():
            out = logits_of(self.module(x))
        return out.float().cpu().numpy()

    def timed_call(self, batch: np.ndarray):
        """(fn, clock): one forward on an input already on the device; CUDA events on the GPU."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        module = self.module
        ctx = self._ctx

        def run() -> None:
            with torch.inference_mode(), ctx():
                module(x)

        return run, ("cuda-events" if self.device.startswith("cuda") else "perf_counter")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "precision": self.precision,
                "runtime": self.runtime, "provider": self.provider, "threads": self.threads,
                "notes": list(self.notes)}


class EagerRunner(TorchModuleRunner):
    """The eager PyTorch reference: the prepared, *unfolded* model the artifacts came from."""

    kind = "eager"

    def __init__(self, module: nn.Module, device: str = "cpu", name: str = "eager"):
        if resolve_device(device) != "cpu":  # leave the caller's module where it is
            module = copy.deepcopy(module)
        super().__init__(module, device, name=name, precision="fp32",
                         runtime=f"torch {torch.__version__} (eager)")


def make_eager_runner(module: nn.Module, device: str = "cpu") -> EagerRunner:
    return EagerRunner(module, device)
