"""torch.export ``.pt2`` (ExportedProgram, ``torch.export.save``): the recommended PyTorch format.

The program is exported from the prepared, BN-folded model with a dynamic batch axis (or the
fixed ``--batch``); the artifact metadata travels as the extra file ``zoo_exporter.json``. The
runner loads it with ``torch.export.load(...).module()`` - no model code needed.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .eager import TorchModuleRunner, resolve_device

MAX_BATCH = 4096


class CallableModule(nn.Module):
    """An ``nn.Module`` face for a callable that refuses ``.eval()``/``.to()`` (an exported
    program's module, an AOTInductor model): the runner's train/eval switch stays harmless."""

    def __init__(self, fn):
        super().__init__()
        self.__dict__["fn"] = fn  # not a registered submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def export_program(deploy: nn.Module, spec, batch: int | None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the deploy model: batch axis dynamic unless ``batch`` is fixed,
    height/width dynamic for a ``--dynamic-size`` graph (``graph_input.dynamic_dims``)."""
    from ..errors import ExportError
    from ..graph_input import dynamic_dims, example_input

    dims = dynamic_dims(deploy, spec, batch)  # + height/width of a --dynamic-size export
    dynamic = (dims,) if dims else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(deploy.eval(), (example_input(deploy, spec, batch or 2),),
                                       dynamic_shapes=dynamic)
    except Exception as err:  # torch.export raises many types (UserError, GuardOnDataDependent...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ExportError(f"torch.export failed: {first}",
                          fix="export --format onnx or torchscript instead, or fix the "
                              "data-dependent control flow torch.export names") from err


def export(ctx) -> list[dict[str, Any]]:
    """``<stem>.pt2``: the ExportedProgram with the artifact metadata as an extra file."""
    from ..artifacts import artifact_entry
    from ..metadata import extra_files, for_artifact

    start = time.perf_counter()
    program = export_program(ctx.deploy, ctx.spec, ctx.request.batch)
    path = ctx.stage / f"{ctx.stem}.pt2"
    meta = for_artifact(ctx.metadata, "pt2", "fp32") if ctx.metadata else {}
    torch.export.save(program, str(path), extra_files=extra_files(meta) if meta else None)
    return [artifact_entry(path, "pt2", "fp32", method="torch.export",
                           dynamic_batch=ctx.request.batch is None,
                           seconds=round(time.perf_counter() - start, 3))]


class ExportedProgramRunner(TorchModuleRunner):
    kind = "pt2"

    def __init__(self, path: str | Path, device: str = "cpu", batch: int | None = None):
        path = Path(path)
        device = resolve_device(device)
        module = torch.export.load(str(path)).module()
        if device != "cpu":
            module = module.to(device)
        super().__init__(CallableModule(module), device, name="pt2 fp32", precision="fp32",
                         runtime=f"torch {torch.__version__} (torch.export)", file=path.name)
        self.path = path
        self.fixed_batch = batch


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None) -> ExportedProgramRunner:
    if threads:
        torch.set_num_threads(int(threads))
    fixed = None if artifact.get("details", {}).get("dynamic_batch", True) else \
        artifact.get("details", {}).get("batch")
    return ExportedProgramRunner(Path(directory) / artifact["file"], device=device, batch=fixed)
