"""TorchScript runner: ``torch.jit.load`` of a ``<model>.ts.pt`` artifact, on CPU or CUDA."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from .eager import TorchModuleRunner, resolve_device


class TorchScriptRunner(TorchModuleRunner):
    kind = "torchscript"

    def __init__(self, path: str | Path, device: str = "cpu", precision: str = "fp32"):
        path = Path(path)
        device = resolve_device(device)
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": still what loads .ts.pt
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device)
        super().__init__(module, device, name=f"torchscript {precision}", precision=precision,
                         runtime=f"torch {torch.__version__} (TorchScript)", file=path.name)
        self.path = path


def export(ctx) -> list[dict[str, Any]]:
    """``<stem>.ts.pt``: traced and frozen (FP32; TorchScript is deprecated in favour of torch.export)."""
    from ..artifacts import artifact_entry
    from ..export import export_torchscript
    from ..metadata import extra_files, for_artifact

    path = ctx.stage / f"{ctx.stem}.ts.pt"
    meta = for_artifact(ctx.metadata, "torchscript", "fp32") if ctx.metadata else {}
    info = export_torchscript(ctx.deploy, ctx.spec, path, extra_files=extra_files(meta) if meta else None)
    return [artifact_entry(path, "torchscript", "fp32", **info)]


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None) -> TorchScriptRunner:
    """Runner for one manifest entry of format ``torchscript`` (threads: torch's global count)."""
    if threads:
        torch.set_num_threads(int(threads))
    return TorchScriptRunner(Path(directory) / artifact["file"], device=device,
                             precision=artifact.get("precision", "fp32"))
