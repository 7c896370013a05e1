"""Export and simplify stages: ONNX (torch's two exporters), simplification, TorchScript."""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from .adaptive_pool import matmul_pools
from .backends.base import converter_output_hidden, native_stderr_captured
from .errors import ExportError, SimplifyError, UsageError
from .recipes import InputSpec

from .defaults import (DEFAULT_EXPORTER, DEFAULT_OPSET, DEFAULT_SIMPLIFIER,  # noqa: F401
                       EXPORTERS, SIMPLIFIERS)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


def _dummy(spec: InputSpec, batch: int) -> torch.Tensor:
    return torch.randn(batch, spec.channels, *spec.size, generator=torch.Generator().manual_seed(0))


def export_onnx(model: nn.Module, spec: InputSpec, path: Path, *, exporter: str = DEFAULT_EXPORTER,
                opset: int = DEFAULT_OPSET, batch: int | None = None) -> dict[str, Any]:
    """Export ``model`` to a single ONNX file with input ``input`` and output ``logits``.

    ``batch=None`` makes the batch axis dynamic; an int fixes it. A ``graph_input.wrap``-ped model
    with ``dynamic_size`` gets symbolic height/width too (and its NHWC example input). Returns
    export facts.
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter '{exporter}'", fix=f"use one of {EXPORTERS}")
    from .graph_input import dynamic_dims, example_input

    start = time.perf_counter()
    dummy = example_input(model, spec, batch or 2)
    dims = dynamic_dims(model, spec, batch)  # batch unless fixed; H/W of a --dynamic-size graph
    swapped: list[str] = []
    try:  # the exporters' prints, native ones too (an IR dump on failure), stay off stdout
        with warnings.catch_warnings(), converter_output_hidden():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                fixed_hw = not getattr(model, "dynamic_size", False)
                pools = matmul_pools(model, dummy) if fixed_hw else contextlib.nullcontext([])
                with pools as swapped:
                    torch.onnx.export(
                        model, (dummy,), str(path), dynamo=False, opset_version=opset,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                        dynamic_axes={INPUT_NAME: dynamic_dims(model, spec, batch, names=True),
                                      **({OUTPUT_NAME: {0: "batch"}} if 0 in dims else {})} if dims else None,
                    )
            else:
                dynamic = {INPUT_NAME: dims} if dims else None
                program = torch.onnx.export(
                    model, (dummy,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, optimize=True,
                )
                program.save(str(path), external_data=False)
    except OSError:
        raise  # disk full / read-only: the staging writer reports it, not "try another exporter"
    except Exception as err:  # the exporters raise many unrelated types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = first.split(" Please feel free")[0].split(" [Caused by")[0]
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        fix = f"try --exporter {other}, or another --opset"
        if getattr(model, "dynamic_size", False):
            fix = f"try --exporter {other}, or drop --dynamic-size"
        raise ExportError(f"ONNX export with the {exporter} exporter failed: {first}", fix=fix) from err
    proto = onnx.load(str(path), load_external_data=False)
    facts = {"exporter": exporter, "opset": opset, "seconds": round(time.perf_counter() - start, 3),
             "nodes_exported": len(proto.graph.node), "ops_exported": op_histogram(proto)}
    if swapped:  # adaptive pools whose sizes do not divide, written as MatMuls (adaptive_pool.py)
        facts["adaptive_pools_as_matmul"] = swapped
    return facts


def simplify_onnx(path: Path, simplifier: str = DEFAULT_SIMPLIFIER,
                  test_shape: list[int] | None = None,
                  metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Simplify the ONNX file in place. Any simplifier failure raises :class:`SimplifyError`.
    ``test_shape``: a concrete input shape for onnxsim's check of a graph with dynamic H/W.
    ``metadata``: ``metadata_props`` entries written with the same save (one write of the file)."""
    from .metadata import set_onnx_metadata

    if simplifier not in SIMPLIFIERS:
        raise UsageError(f"unknown simplifier '{simplifier}'", fix=f"use one of {SIMPLIFIERS}")
    model = onnx.load(str(path))
    before = len(model.graph.node)
    start = time.perf_counter()
    if simplifier == "none":
        if metadata:
            set_onnx_metadata(model, metadata)
            onnx.save(model, str(path))
        return {"simplifier": "none", "nodes_before": before, "nodes_after": before, "simplify_seconds": 0.0}
    native: list[str] = []
    try:
        with warnings.catch_warnings(), converter_output_hidden(), native_stderr_captured(native):
            warnings.simplefilter("ignore")
            if simplifier == "onnxsim":
                import onnxsim

                shapes = {INPUT_NAME: list(test_shape)} if test_shape else None
                # check_n=0: onnxsim's own one-random-input comparison is not run; the
                # exporter's verify stage and parity compare the saved graph with eager PyTorch
                simplified, ok = onnxsim.simplify(model, check_n=0, test_input_shapes=shapes)
                if not ok:
                    raise RuntimeError("onnxsim's own numerical check of the simplified graph failed")
            else:
                import onnxslim

                simplified = onnxslim.slim(model)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SimplifyError(
            f"{simplifier} failed on {path.name}: {first}",
            fix="try --simplifier onnxslim (or onnxsim), or pass --simplify-fallback to keep the "
                "unsimplified graph",
        ) from err
    # onnxsim records every node it removed or changed (hundreds of names in a shipped file's
    # metadata); the manifest keeps the node counts instead
    own = [p for p in simplified.metadata_props if not p.key.startswith(f"{simplifier}.")]
    dropped = len(simplified.metadata_props) - len(own)
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(own)
    if metadata:
        set_onnx_metadata(simplified, metadata)
    onnx.save(simplified, str(path))
    return {"simplifier": simplifier, "nodes_before": before, "nodes_after": len(simplified.graph.node),
            "simplify_seconds": round(time.perf_counter() - start, 3), "ops": op_histogram(simplified),
            "simplifier_metadata_dropped": dropped, "simplifier_warnings": len(native)}


def export_torchscript(model: nn.Module, spec: InputSpec, path: Path,
                       extra_files: dict[str, str] | None = None) -> dict[str, Any]:
    """Trace, freeze and save (``extra_files`` inside the archive); loads with ``torch.jit.load``.
    Serialized in memory and written by the atomic writer (a C++ file write aborts the process
    on a full disk)."""
    from .artifacts import write_bytes_atomic

    from .graph_input import example_input

    start = time.perf_counter()
    dummy = example_input(model, spec, 2)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model.eval(), dummy, check_trace=False)
            frozen = torch.jit.freeze(traced)
            torch.jit.save(frozen, buffer, _extra_files=extra_files or {})
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"TorchScript trace/freeze failed: {first}",
                          fix="export ONNX only (--format onnx)") from err
    write_bytes_atomic(path, buffer.getvalue())
    return {"seconds": round(time.perf_counter() - start, 3), "method": "trace+freeze"}
