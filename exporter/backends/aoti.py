"""AOTInductor package (``<model>.aoti.pt2``): the torch.export program compiled ahead of time to
a shared library for this CPU (``torch._inductor.aoti_compile_and_package``), loadable from C++
(``AOTIModelPackageLoader``) or Python without the model code. Needs a C++ compiler at export
time; compiling takes minutes (resnet18 ~4 min on 2 busy cores). Compiled for the CPU it was
built on (the package records the ISA): the runner runs it on CPU.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import BackendUnavailableError, ExportError
from .eager import TorchModuleRunner
from .pt2 import CallableModule, export_program


def compiler() -> str:
    """The C++ compiler inductor will use ($CXX, else c++/g++/clang++) or a clear error."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise BackendUnavailableError("--format aoti needs a C++ compiler and none was found "
                                  "($CXX, c++, g++, clang++)",
                                  fix="install one (e.g. apt-get install g++), or use --format pt2 "
                                      "(the ExportedProgram, no compiler needed)")


def export(ctx) -> list[dict[str, Any]]:
    """``<stem>.aoti.pt2``: compiled for CPU, the artifact metadata in the package metadata."""
    from ..artifacts import artifact_entry
    from ..metadata import for_artifact

    cxx = compiler()
    start = time.perf_counter()
    program = export_program(ctx.deploy, ctx.spec, ctx.request.batch)
    path = ctx.stage / f"{ctx.stem}.aoti.pt2"
    ctx.log(f"aoti: compiling with {cxx} (minutes on a small CPU)")
    configs = {"aot_inductor.metadata": for_artifact(ctx.metadata, "aoti", "fp32")} \
        if ctx.metadata else {}
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs=configs)
    except Exception as err:  # inductor/C++ build failures
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ExportError(f"AOTInductor compilation failed: {first}",
                          fix="use --format pt2 (no compilation), or check the C++ tool chain") \
            from err
    return [artifact_entry(path, "aoti", "fp32", method="torch.export + AOTInductor",
                           device="cpu", compiler=cxx, dynamic_batch=ctx.request.batch is None,
                           seconds=round(time.perf_counter() - start, 3))]


def read_metadata(path: Path) -> dict[str, str]:
    """The package metadata (ours plus AOTI_* keys inductor adds)."""
    return dict(torch._inductor.aoti_load_package(str(path)).get_metadata())


class AOTIRunner(TorchModuleRunner):
    kind = "aoti"

    def __init__(self, path: str | Path, device: str = "cpu"):
        path = Path(path)
        compiled = torch._inductor.aoti_load_package(str(path))
        super().__init__(CallableModule(compiled), "cpu", name="aoti fp32", precision="fp32",
                         runtime=f"torch {torch.__version__} (AOTInductor)", file=path.name)
        if device not in ("cpu", "auto", None):
            self.notes.append(f"compiled for CPU: ran on cpu, not {device}")
        self.path = path


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None) -> AOTIRunner:
    if threads:
        torch.set_num_threads(int(threads))
    return AOTIRunner(Path(directory) / artifact["file"], device=device)
