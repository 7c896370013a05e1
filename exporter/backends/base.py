"""The runner interface every artifact backend implements, and the format -> runner registry."""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Protocol

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


def runner_for(artifact: dict[str, Any], directory: Path, device: str = "cpu",
               **options: Any) -> Runner:
    """Instantiate the runner for one manifest artifact entry through the registry
    (``backends.registry``); ``options`` go to its factory (e.g. ``provider=`` for ``onnx``)."""
    from .registry import load

    return load(artifact["format"]).make_runner(artifact, Path(directory), device, **options)


@contextlib.contextmanager
def native_stderr_captured(said: list[str]) -> Iterator[None]:
    """The process's file descriptor 2 (native libraries' warnings, e.g. onnxsim's 'failed to run
    Transpose op ... skip' per node) collected into ``said`` instead of the terminal; with
    ``--debug`` (ZOO_EXPORTER_DEBUG) they pass through."""
    if os.environ.get("ZOO_EXPORTER_DEBUG"):
        yield
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())


@contextlib.contextmanager
def converter_output_hidden() -> Iterator[None]:
    """A converter's own prints (Python's ``sys.stdout`` and the process's file descriptor 1,
    where native code writes) discarded: stdout is the summary's, or ``--json``'s one document."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        try:
            os.dup2(devnull.fileno(), 1)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
