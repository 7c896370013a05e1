"""Run a serialized engine: torch CUDA tensors are the I/O buffers, ``set_tensor_address`` +
``execute_async_v3`` on a CUDA stream; latency with CUDA events.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import InputSpecError
from .engine_cache import check_engine_compatible, read_engine_manifest
from .environment import (EngineBuildError, EngineMismatchError, device_index, gpu_info,
                          make_logger, require_tensorrt)


def _torch_dtype(trt, dtype):
    """The torch dtype of an engine I/O tensor type (every member exists in TensorRT >= 10)."""
    import torch

    pairs = [(trt.DataType.FLOAT, torch.float32), (trt.DataType.HALF, torch.float16),
             (trt.DataType.BF16, torch.bfloat16), (trt.DataType.INT8, torch.int8),
             (trt.DataType.UINT8, torch.uint8), (trt.DataType.INT32, torch.int32),
             (trt.DataType.INT64, torch.int64), (trt.DataType.BOOL, torch.bool)]
    for trt_dtype, torch_dtype in pairs:
        if trt_dtype == dtype:
            return torch_dtype
    raise EngineBuildError(f"engine I/O tensor type {dtype} has no torch equivalent")


class TensorRTRunner:
    """Runs a serialized engine on NCHW float32 numpy batches; torch CUDA tensors are the buffers."""

    def __init__(self, engine_path: str | Path, manifest: dict[str, Any] | None, device: str = "cuda"):
        import torch

        engine_path = Path(engine_path)
        trt = require_tensorrt(device)
        index = device_index(device)
        gpu = gpu_info(index)
        check_engine_compatible(manifest, trt.__version__, gpu, engine_path)
        torch.cuda.set_device(index)
        self._logger = make_logger(trt)
        mark = self._logger.mark()
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(f"TensorRT could not deserialize {engine_path}: "
                                      + " | ".join(self._logger.since(mark)[-5:]),
                                      fix="rebuild the engine with `exporter build`")
        self.context = self.engine.create_execution_context()
        if self.context is None:  # e.g. out of device memory for the activations
            raise EngineBuildError(f"TensorRT could not create an execution context for "
                                   f"{engine_path.name}: " + " | ".join(self._logger.since(mark)[-5:]),
                                   fix="free GPU memory, or rebuild with a smaller --max-batch")
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
        self.max_batch = int(hi[0])  # parity chunks its inputs to fit the profile
        self.fixed_batch = int(lo[0]) if lo[0] == hi[0] else None
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

    def _stage(self, batch: np.ndarray):
        """(input, outputs): ``batch`` copied to the device and output buffers for its shape, on
        the engine's stream."""
        import torch

        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self._check_shape(tuple(batch.shape))
        name = self.inputs[0]
        x = torch.from_numpy(batch).to(self.device).to(self._dtypes[name])
        if not self.context.set_input_shape(name, tuple(batch.shape)):
            raise InputSpecError(f"TensorRT rejected input shape {list(batch.shape)}")
        outputs = {out: torch.empty(tuple(self.context.get_tensor_shape(out)),
                                    dtype=self._dtypes[out], device=self.device)
                   for out in self.outputs}
        return x, outputs

    def _execute(self, x, outputs) -> None:
        """Bind every I/O tensor by name and enqueue one execution on the engine's stream."""
        self.context.set_input_shape(self.inputs[0], tuple(x.shape))
        self.context.set_tensor_address(self.inputs[0], x.data_ptr())
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        mark = self._logger.mark()
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError("TensorRT execution failed: "
                                   + " | ".join(self._logger.since(mark)[-5:] or ["no log output"]))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.cuda.stream(self.stream):
            x, outputs = self._stage(batch)
            self._execute(x, outputs)
            result = outputs[self.outputs[0]].float().cpu()
        self.stream.synchronize()
        return result.numpy()

    def timed_call(self, batch: np.ndarray):
        """(fn, "cuda-events"): one execution on buffers already on the device, as eager is timed.

        ``latency`` records its CUDA events on the current stream; the engine runs on its own
        stream, so ``fn`` orders the two (wait, execute, wait back) and the events span exactly
        the engine's work.
        """
        import torch

        with torch.cuda.stream(self.stream):
            x, outputs = self._stage(batch)
        self.stream.synchronize()

        def run() -> None:
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            self._execute(x, outputs)
            current.wait_stream(self.stream)

        return run, "cuda-events"


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cuda") -> TensorRTRunner:
    """Runner factory for manifest entries of format ``tensorrt``."""
    engine_path = Path(directory) / artifact["file"]
    manifest = read_engine_manifest(engine_path) or artifact.get("details")
    return TensorRTRunner(engine_path, manifest, device)


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
