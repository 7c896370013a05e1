"""ExecuTorch backend: ``torch.export`` -> XNNPACK-delegated ``<stem>.pte``, run by
``executorch.runtime`` (the Python face of the C++ runtime an Android/iOS app links).

* FP32: ``to_edge_transform_and_lower`` with the XNNPACK partitioner; the manifest records how
  many nodes XNNPACK took and which operators stayed on the portable CPU kernels.
* FP16: the model and its input in half precision, lowered the same way (XNNPACK has fp16
  kernels); the runner feeds fp16 and returns float32 logits.
* INT8: PT2E with the XNNPACK quantizer (symmetric, per-channel weights), calibrated on the
  export's calibration data and judged with the ONNX path's budget; the most sensitive layers
  fall back to float until it is met (``backends.pt2e_budget``).

The program has static shapes: it is traced at ``--batch`` (default 1); the runner runs larger
batches in chunks of that size, as an app would. Input layout NCHW, as every other artifact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..console import native_log_hidden
from ..errors import ExporterError
from . import pt2e
from .registry import get, package_versions, require_module

FORMAT = "executorch"
RUNTIME = "ExecuTorch (XNNPACK)"


def _backend():
    return get(FORMAT)


def _lower(program, precision: str):
    """(ExecuTorch program manager, delegation record) of an exported program."""
    require_module(_backend(), "executorch.exir")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    portable = {op: b.non_delegated for op, b in sorted(info.delegation_by_operator.items())
                if b.non_delegated and op != "getitem"}  # getitem: unpacks the delegate's outputs
    record = {"delegate": "XnnpackBackend", "delegated_subgraphs": info.num_delegated_subgraphs,
              "delegated_nodes": info.num_delegated_nodes,
              "portable_nodes": sum(portable.values()), "portable_ops": portable}
    return edge.to_executorch(), record


def export(ctx) -> list[dict[str, Any]]:
    """``<stem>.pte`` in ``ctx.precision`` (fp32 | fp16 | int8)."""
    import torch

    from ..artifacts import artifact_entry, write_bytes_atomic

    with native_log_hidden():  # torch's _pytree deprecation warning as torchao registers its enums
        require_module(_backend(), "executorch.exir")
    example = pt2e.example_batch(ctx)
    batch = int(example.shape[0])
    module = ctx.deploy.eval()
    details: dict[str, Any] = {"batch": batch, "layout": "NCHW", "input_dtype": "float32"}
    quantized: dict[str, Any] = {}
    suffix = "" if ctx.precision == "fp32" else f".{ctx.precision}"
    path = ctx.stage / f"{ctx.stem}{suffix}.pte"
    try:
        with torch.no_grad(), native_log_hidden():
            if ctx.precision == "int8":
                (manager, delegation), quantized = pt2e.int8_within_budget(
                    ctx, FORMAT, _quantizer(), lambda graph: _build_int8(graph, example, path))
            else:
                if ctx.precision == "fp16":
                    module = _half_copy(module)
                    example = example.half()
                    details["input_dtype"] = "float16"
                manager, delegation = _lower(torch.export.export(module, (example,)), ctx.precision)
                write_bytes_atomic(path, manager.buffer)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - every converter failure becomes one typed error
        path.unlink(missing_ok=True)
        if isinstance(err, ExporterError):
            raise
        raise pt2e.conversion_error(RUNTIME, FORMAT, err) from err
    details["delegation"] = delegation
    details["runtime_packages"] = package_versions("executorch")
    entry = artifact_entry(path, FORMAT, ctx.precision, **details)
    if ctx.precision == "int8":
        entry["details"].update(
            quantizer="XNNPACKQuantizer (torchao PT2E), symmetric int8, per-channel weights",
            **quantized)
    return [entry]


def _build_int8(graph, example, path: Path):
    """((program manager, delegation record), runner) of a converted PT2E graph, written to
    ``path``: its weight quantize ops folded into int8 constants, lowered to XNNPACK."""
    import copy

    import torch
    from torchao.quantization.pt2e.constant_fold import constant_fold

    from ..artifacts import write_bytes_atomic
    from .pt2e_budget import is_quantize

    graph = copy.deepcopy(graph)  # the budget loop builds from the same graph again
    constant_fold(graph, is_quantize)
    graph.recompile()
    manager, delegation = _lower(torch.export.export(graph, (example,)), "int8")
    write_bytes_atomic(path, manager.buffer)
    runner = ExecuTorchRunner(path, precision="int8", batch=int(example.shape[0]))
    return (manager, delegation), runner


def _quantizer():
    require_module(_backend(), "torchao")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def _half_copy(module):
    import copy

    return copy.deepcopy(module).half().eval()



class ExecuTorchRunner:
    """One loaded ``forward`` method of a ``.pte`` on NCHW float32 batches -> float32 logits."""

    def __init__(self, path: str | Path, *, precision: str = "fp32", batch: int = 1,
                 threads: int | None = None, input_dtype: str = "float32"):
        import torch

        with native_log_hidden():  # its native libraries log cpuinfo lines as they load
            runtime_mod = require_module(_backend(), "executorch.runtime")
            from executorch.extension.pybindings import portable_lib

        self.path = Path(path)
        self.file = self.path.name
        self.precision = precision
        self.batch = int(batch)
        self.notes: list[str] = []
        wanted = int(threads or torch.get_num_threads())
        with native_log_hidden():  # cpuinfo and threadpool log lines
            portable_lib._unsafe_reset_threadpool(wanted)  # XNNPACK's pool, process-wide
            self.threads = int(portable_lib._threadpool_get_thread_count())
            program = runtime_mod.Runtime.get().load_program(str(self.path))
            self.method = program.load_method("forward")
        if self.threads != wanted:
            self.notes.append(f"asked ExecuTorch's threadpool for {wanted} threads, it has {self.threads}")
        self.dtype = torch.float16 if input_dtype == "float16" else torch.float32
        self.name = f"executorch {precision}"
        self.runtime = f"executorch {package_versions('executorch').get('executorch', '?')}"
        self.provider = "XNNPACK (cpu)"
        self.output_name = "logits"

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        import torch

        (out,) = self.method.execute([torch.from_numpy(chunk).to(self.dtype)])[:1]
        return out.float().numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return pt2e.run_batched(self._run, np.asarray(batch, dtype=np.float32), self.batch)

    def timed_call(self, batch: np.ndarray):
        """(fn, clock): one inference on inputs already converted to torch tensors."""
        import torch

        x = np.ascontiguousarray(batch, dtype=np.float32)
        chunks = [torch.from_numpy(x[i:i + self.batch]).to(self.dtype)
                  for i in range(0, len(x) - len(x) % self.batch, self.batch)] or \
            [torch.from_numpy(np.repeat(x[:1], self.batch, 0)).to(self.dtype)]

        def run() -> None:
            for chunk in chunks:
                self.method.execute([chunk])
        return run, "perf_counter"


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None) -> ExecuTorchRunner:
    """Runner for one manifest entry of format ``executorch`` (CPU; XNNPACK threads fixed)."""
    details = artifact.get("details") or {}
    return ExecuTorchRunner(Path(directory) / artifact["file"],
                            precision=artifact.get("precision", "fp32"),
                            batch=int(details.get("batch") or 1), threads=threads,
                            input_dtype=details.get("input_dtype", "float32"))
