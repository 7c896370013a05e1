"""The runner interface every artifact backend implements, and the format -> runner registry."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    """Runs one artifact on NCHW float32 numpy batches and returns float32 logits."""

    name: str  # e.g. "onnx fp32", "torchscript"
    precision: str  # fp32 | fp16 | int8
    runtime: str  # e.g. "onnxruntime 1.32.0"
    provider: str  # what actually executed: "CPUExecutionProvider", "cuda:0", ...

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    # Optional, read with getattr by parity/latency: ``fixed_batch`` (the only batch it accepts),
    # ``max_batch`` (the largest, e.g. an engine profile's), ``notes``, ``output_name``,
    # ``threads`` and ``timed_call(batch) -> (fn, clock)`` (a call on inputs already staged).


# artifact "format" in the manifest -> "module:factory"; factory(artifact: dict, directory: Path,
# device: str) -> Runner. Modules are imported only when an artifact of that format is run.
RUNNER_FACTORIES: dict[str, str] = {
    "onnx": "exporter.backends.onnxruntime:make_runner",
    "torchscript": "exporter.backends.torchscript:make_runner",
    "tensorrt": "exporter.backends.tensorrt:make_runner",
}


def runner_for(artifact: dict[str, Any], directory: Path, device: str = "cpu",
               **options: Any) -> Runner:
    """Instantiate the runner for one manifest artifact entry; ``options`` go to its factory
    (e.g. ``provider=`` for ``onnx``)."""
    module_name, factory = RUNNER_FACTORIES[artifact["format"]].split(":")
    return getattr(importlib.import_module(module_name), factory)(artifact, Path(directory), device,
                                                                  **options)
