"""What the PyTorch-native mobile backends (ExecuTorch, LiteRT) share: the example input, the PT2E
INT8 flow (export -> prepare -> calibrate -> convert) on the export's calibration data, the
accuracy budget of the written artifact (``pt2e_budget``: layers fall back to float until it is
met), and the typed conversion error.

The calibration data are read by :func:`calibration_data` only (``quantize.calibration``'s
loaders, with the ONNX INT8 path's calibration / held-out split), and the
budget is ``quantize.budget``'s criterion, so ``--calibration``, ``--calibration-samples``,
``--eval-images`` and ``--max-accuracy-drop`` mean the same for every runtime.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UnsupportedModelError

DEFAULT_SAMPLES = 256  # as the ONNX INT8 path (quantize_stage's default)
# quantize options of the ONNX Q/DQ path that a runtime's PT2E quantizer has no use for
ONNX_ONLY_OPTIONS = {"method": "--calibration-method", "target": "--target",
                     "weight_rounding": "--weight-rounding", "range_tuning": "--range-tuning",
                     "lever_retry": "--lever-retry"}
_HOOK = re.compile(r"^_?annotate_([A-Za-z0-9]+)")
_OP = re.compile(r"(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?)")


def conversion_error(runtime: str, fmt: str, err: Exception) -> UnsupportedModelError:
    """The typed error for a converter's exception, naming the first ATen operator it mentions."""
    import traceback

    text = f"{type(err).__name__}: {err}".strip()
    found = _OP.search(text)
    first_line = text.splitlines()[0][:300] if text else type(err).__name__
    op = found.group(1) if found else "unknown"
    frames = traceback.extract_tb(err.__traceback__)
    if frames:  # where the converter failed: a quantizer's per-op hook names the op it was on
        last = frames[-1]
        first_line += f", in {Path(last.filename).parent.name}/{Path(last.filename).name}:{last.name}"
        hook = _HOOK.search(last.name)
        if op == "unknown" and hook:
            op = f"{hook.group(1)} (the quantizer's {last.name})"
    return UnsupportedModelError(runtime, fmt, op, first_line)


def example_batch(ctx) -> "Any":
    """The (fixed) batch the program is traced at: the request's --batch, else 1."""
    import torch

    from ..data import random_inputs

    return torch.from_numpy(random_inputs(ctx.spec, int(ctx.request.batch or 1), seed=0))


def calibration_data(ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str, Any, Any]:
    """(calibration inputs, judging inputs, their labels or None, what they are, the calibration
    record, the budget criterion) for ctx; the criterion is made first, so a budget that cannot
    be judged fails before any conversion.

    The judging set is ``--eval-images`` (``--eval-samples`` of them) when given, else
    ``--eval-samples`` samples held out from the calibration source, disjoint from the ones
    calibrated on: ``quantize.calibration.load_split``, the ONNX INT8 path's split, so the
    budget is never judged on the data the ranges came from.
    """
    from ..quantize.judging import Criterion
    from ..quantize.calibration import DEFAULT_HOLDOUT, load_calibration_data, load_judging, load_split
    from ..quantize.samples import (copies_note, drop_calibration_copies, exhausted, judging_notes,
                                    require_disjoint, require_held)

    quant = ctx.request.quant
    samples = int(quant.get("samples") or DEFAULT_SAMPLES)
    eval_data = quant.get("eval_data")
    if eval_data is None:
        data, held = load_split(quant.get("calibration"), ctx.spec, samples,
                                int(quant.get("eval_samples") or DEFAULT_HOLDOUT))
        require_held(held, data)
        copies = drop_calibration_copies(data, held)
        labels = held.labels
        criterion = Criterion.make(labels, quant.get("max_accuracy_drop"), quant.get("min_agreement"),
                                   held.unlabelled, source_exhausted=exhausted(held))
        return (np.asarray(data.array), np.asarray(held.array), labels,
                f"{held.source} ({len(held)} samples, held out from the {len(data)} calibrated on"
                + (f"; {copies_note(copies)}" if copies else "")
                + judging_notes(held) + ")",
                data, criterion)
    held = load_judging(eval_data, ctx.spec, int(quant.get("eval_samples") or DEFAULT_HOLDOUT))
    labels = held.labels
    criterion = Criterion.make(labels, quant.get("max_accuracy_drop"), quant.get("min_agreement"),
                               held.unlabelled, source_exhausted=exhausted(held))
    data = load_calibration_data(quant.get("calibration"), ctx.spec, samples)
    require_disjoint(data, held.array, held.paths)
    return (np.asarray(data.array), np.asarray(held.array), labels,
            f"{held.source} ({len(held)} samples{judging_notes(held)})", data, criterion)


def pt2e_quantize(module, example, quantizer, calibration: np.ndarray, chunk: int = 32,
                  fold_quantize: bool = True, record: dict | None = None,
                  fuse_clamps: bool = True):
    """The PT2E-quantized graph module of ``module`` (observers fed ``calibration``).

    Traced with a dynamic batch axis so the observers see ``chunk`` samples per call (histogram
    observers cost per call, not per sample); the caller re-exports it at its fixed batch. With
    ``fuse_clamps``, clamp activations are quantized after the clamp
    (:func:`fuse_clamp_annotations`); ``record`` receives how many."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=max(len(calibration), chunk, 2))
    trace = torch.from_numpy(np.ascontiguousarray(np.repeat(calibration[:1], 2, axis=0)))
    graph = torch.export.export(module, (trace.to(example.dtype),),
                                dynamic_shapes=({0: batch},)).module()
    _remove_inference_dropout(graph)
    graph.graph.eliminate_dead_code()  # e.g. a discarded second output: nothing to quantize
    graph.recompile()
    if fuse_clamps:
        quantizer.annotate = _then_fuse_clamps(quantizer.annotate,
                                               record if record is not None else {})
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), chunk):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i:i + chunk])))
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def _remove_inference_dropout(graph_module) -> int:
    """Drop the eval-mode ``aten.dropout(x, p, False)`` nodes (identities): litert-torch's
    converter re-traces the quantized graph in training mode and applied them (a model with
    ``nn.Dropout`` came out with outputs 1.5-3.8x off). Returns how many."""
    import torch

    removed = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.dropout.default \
                and len(node.args) > 2 and node.args[2] is False:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            removed += 1
    return removed


def _then_fuse_clamps(annotate: Callable, record: dict) -> Callable:
    def run(graph_module):
        graph_module = annotate(graph_module)
        record["clamps_fused"] = fuse_clamp_annotations(graph_module)
        return graph_module
    return run


def fuse_clamp_annotations(graph_module) -> int:
    """Move the output quantization of a conv/linear/add onto the clamp (ReLU6, hardtanh, clamp)
    that is its only user; returns how many were moved.

    The XNNPACK and LiteRT quantizers fuse only ``relu`` into the layer before it. A ReLU6 then
    gets its range from the *unclamped* layer output (negative values and values above 6 included)
    and that range is re-used after the clamp, so part of the int8 levels go to values the clamp
    removes (on real MobileNetV2, zero-points of -24 to +26 after a ReLU6). XNNPACK fuses the clamp
    into the kernel before it, so the quantized tensor can be the clamped one, as on every other
    INT8 path here. Measured side by side (benchmarks/MOBILE_RESULTS.md, 200 held-out crops of
    real MobileNetV2): ExecuTorch 0.775 -> 0.855 top-1 agreement; LiteRT 0.835 -> 0.840, no
    gain, and on random-init MobileNetV2 it flipped near-tied predictions, so LiteRT keeps its
    quantizer's own annotation.
    """
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec

    clamps = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default,
              torch.ops.aten.clamp.default, torch.ops.aten.relu6.default}
    moved = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target not in clamps or not node.args:
            continue
        source = node.args[0]
        annotation = source.meta.get("quantization_annotation") if hasattr(source, "meta") else None
        if (annotation is None or not isinstance(annotation.output_qspec, QuantizationSpec)
                or len(source.users) != 1):
            continue
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={}, output_qspec=annotation.output_qspec, _annotated=True)
        annotation.output_qspec = None
        moved += 1
    return moved


def int8_within_budget(ctx, fmt: str, quantizer, build: Callable[[Any], tuple[Any, Callable]],
                       fuse_clamps: bool = True) -> tuple[Any, dict[str, Any]]:
    """(what ``build`` made, the manifest's INT8 record): ``ctx.deploy`` PT2E-quantized on the
    export's calibration data, built into the artifact by ``build(graph) -> (built, runner)`` and
    judged with the ONNX path's criterion on the held-out samples; layers fall back to float
    until the criterion is met (``pt2e_budget``), else a :class:`PrecisionError` with the
    numbers."""
    from ..quantize.budget import MAX_KEPT_FRACTION, sensitivity_inputs
    from . import pt2e_budget

    calibration, held, labels, held_source, data, criterion = calibration_data(ctx)
    ctx.log(f"{fmt} int8: calibrating on {len(calibration)} sample(s)")
    record: dict[str, Any] = {}
    graph = pt2e_quantize(ctx.deploy.eval(), example_batch(ctx), quantizer, calibration,
                          fold_quantize=False, record=record, fuse_clamps=fuse_clamps)
    unused = [flag for key, flag in ONNX_ONLY_OPTIONS.items()
              if ctx.request.quant.get(key) is not None]
    if unused:  # said, never dropped silently: they shape the ONNX/OpenVINO INT8 only
        record["options_not_used"] = unused
        ctx.log(f"{fmt} int8: not used here: {', '.join(unused)} (options of the ONNX/OpenVINO "
                f"INT8 path; {fmt} uses its runtime's own PT2E quantizer and observers)")
    fraction = ctx.request.quant.get("max_kept_fraction")
    result = pt2e_budget.fit(
        graph, build, lambda x: pt2e_budget.run_graph(ctx.deploy, x), held, labels, criterion,
        sensitivity_inputs(calibration), MAX_KEPT_FRACTION if fraction is None else float(fraction),
        fmt, ctx.log, std=tuple(ctx.spec.std))
    record.update(calibration=data.summary(), **result.record(criterion, held_source))
    return result.built, record


def run_batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    """``fn`` over ``x`` in chunks of exactly ``batch`` (a tail is padded, then cut)."""
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        short = batch - len(chunk)
        if short:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
        outs.append(fn(np.ascontiguousarray(chunk, dtype=np.float32))[:batch - short])
    return np.concatenate(outs)
