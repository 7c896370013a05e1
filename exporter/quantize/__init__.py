"""Quantize stage: FP32 ONNX -> FP16 ONNX, or INT8 explicit Q/DQ ONNX within an accuracy budget.

``quantize_stage`` returns the manifest artifact entry (``file``, ``format``, ``precision``,
``sha256``, ``bytes``, ``details``). The artifact is written to a temporary name and renamed into
place only when everything succeeded; the calibration cache (``<model>.int8.calib.json``, keyed
by the hashes of model, preprocessing, data and method) is written next to it on success too.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ..artifacts import artifact_entry, sha256_file, write_bytes_atomic
from ..errors import CalibrationError, PrecisionError, UsageError
from ..recipes import InputSpec
from . import budget as bud
from . import calibration as cal
from . import int8 as q8
from .placement import TARGETS, ensure_node_names, plan as make_plan

DEFAULT_METHOD = "mse"  # best measured on both targets (benchmarks/INT8_RESULTS.md)
PRECISIONS = ("fp16", "int8")

__all__ = ["quantize_stage", "DEFAULT_METHOD", "TARGETS", "PRECISIONS"]


def quantize_stage(fp32_onnx: Path, out_dir: Path, recipe, spec: InputSpec, precision: str, *,
                   calibration: str | os.PathLike | None = None, method: str = DEFAULT_METHOD,
                   samples: int = 256, target: str = "tensorrt", max_accuracy_drop: float | None = None,
                   eval_data: Any = None, min_agreement: float | None = None,
                   bias_correction: bool = True, max_kept_fraction: float = bud.MAX_KEPT_FRACTION,
                   force_kept: list[str] | None = None, budget: bool = True,
                   log: Callable[[str], None] | None = None) -> dict:
    """Produce ``<model>.fp16.onnx`` or ``<model>.int8.<target>.onnx`` in ``out_dir``."""
    log = log or (lambda msg: None)
    fp32_onnx, out_dir = Path(fp32_onnx), Path(out_dir)
    if precision not in PRECISIONS:
        raise UsageError(f"quantize stage handles {PRECISIONS}, not '{precision}'")
    model = onnx.load(str(fp32_onnx))
    ensure_node_names(model)
    name = recipe.name
    if precision == "fp16":
        return _fp16(model, out_dir, name, recipe, spec)
    if target not in TARGETS:
        raise UsageError(f"unknown --target '{target}'", fix=f"use one of {TARGETS}")
    if method not in cal.METHODS:
        raise UsageError(f"unknown --calibration-method '{method}'", fix=f"use one of {cal.METHODS}")
    t0 = time.time()
    batch = q8.fixed_batch(model)
    data = cal.load_calibration_data(calibration, spec, samples, batch=batch)
    for note, count in data.conversions.items():
        log(f"calibration: converted {count} image(s) {note}")
    if data.skipped:
        log(f"calibration: skipped {len(data.skipped)} unreadable/non-image file(s)")
    components = {"model": sha256_file(fp32_onnx), "preprocessing": cal.preprocessing_sha(spec),
                  "data": data.sha256, "method": f"{method}:{cal.PERCENTILE if method == 'percentile' else ''}"}
    cache_path = out_dir / f"{name}.int8.calib.json"
    cached, why = cal.read_cache(cache_path, components)
    if cached is None:
        log(f"calibration: computing ranges ({why})")
        stats = cal.collect_statistics(model, data.array)
        ranges = cal.compute_ranges(stats, method)
        cached = {"ranges": {k: list(v) for k, v in ranges.items()}, "bias": {}}
    ranges = {k: tuple(v) for k, v in cached["ranges"].items()}
    bias: dict = {}
    if bias_correction:
        stored = cached.setdefault("bias", {}).get(target)
        if stored is None:
            bias = q8.bias_correction(model, make_plan(model, target), ranges, data.array)
            cached["bias"][target] = {k: v.tolist() for k, v in bias.items()}
        else:
            bias = {k: np.asarray(v, np.float32) for k, v in stored.items()}
    x_eval, labels, eval_source = _eval_set(eval_data, spec, data, batch)
    criterion = bud.Criterion.make(labels, max_accuracy_drop, min_agreement)
    if budget:
        result = bud.fit_budget(model, target, ranges, bias, x_eval, labels, criterion,
                                max_kept_fraction=max_kept_fraction, force_kept=force_kept, log=log)
        qmodel, kept, measurement = result.model, result.kept, result.measurement
        history, ranking = result.history, result.sensitivity
    else:
        kept = list(force_kept or [])
        qmodel = q8.build_qdq(model, make_plan(model, target, set(kept)), ranges, bias)
        measurement = bud.measure(q8.run(model, x_eval), q8.run(qmodel, x_eval), labels, criterion)
        history, ranking = [], []
    final_plan = make_plan(model, target, set(kept))
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    int8_convs = [n for n in final_plan.quantized if n in convs]
    filename = f"{name}.int8.{target}.onnx"
    _producer(qmodel, f"int8 {target}")
    entry = _write(qmodel, out_dir, filename, "int8")
    cal.write_cache(cache_path, components, cached)
    entry["details"] = {
        "target": target, "method": method,
        "percentile": cal.PERCENTILE if method == "percentile" else None,
        "calibration": data.summary(), "samples_used": len(data),
        "skipped_files": len(data.skipped), "conversions": dict(data.conversions),
        "activations": "int8 symmetric, zero-point 0" if final_plan.signed else "uint8 asymmetric",
        "weights": "int8 symmetric per-channel (axis 0 = output channels), zero-point 0",
        "bias": "float (not quantized)" if final_plan.signed else "int32 (input x weight scale)",
        "bias_correction": bias_correction,
        "int8_convs": len(int8_convs), "convs": len(convs),
        "int8_conv_fraction": round(len(int8_convs) / max(len(convs), 1), 4),
        "int8_layers": final_plan.quantized, "kept_fp16_layers": kept,
        "kept_layers_precision": q8.kept_precision(target),
        "criterion": criterion.describe(), "budget_met": measurement.ok,
        "measured": measurement.metrics, "measured_on": eval_source,
        "budget_history": history, "sensitivity_top": [[n, round(s, 5)] for n, s in ranking[:10]],
        "calibration_cache": {"file": cache_path.name, "hit": why == "hit", "reason": why,
                              "key": cal.cache_key(components)},
        "ort_session": f"disabled optimizers {q8.DISABLED_ORT_OPTIMIZERS} (breaks fp16 Q/DQ graphs)",
        "seconds": round(time.time() - t0, 2),
    }
    return entry


def _eval_set(eval_data, spec: InputSpec, data: "cal.CalibrationData", batch: int | None):
    """(inputs, labels or None, description) the budget is measured on."""
    if eval_data is None:
        return data.array, None, f"calibration data ({len(data)} samples; pass eval_data for a held-out set)"
    labels, source = None, "eval_data"
    if isinstance(eval_data, np.ndarray):
        x = eval_data
    elif hasattr(eval_data, "array"):
        x, labels = eval_data.array, getattr(eval_data, "labels", None)
        source = getattr(eval_data, "source", "") or source
        names = getattr(eval_data, "class_names", [])
        if labels is not None and names:
            labels = _integer_labels(names, labels)
    else:
        loaded = cal.load_calibration_data(eval_data, spec, samples=10**6, batch=batch)
        x, source = loaded.array, loaded.source
        if loaded.labels is not None:
            from ..data import load_image_folder

            names = load_image_folder(eval_data, spec, limit=1).class_names
            labels = _integer_labels(names, loaded.labels)
    if batch:
        keep = len(x) - len(x) % batch
        x = x[:keep]
        labels = labels[:keep] if labels is not None else None
    if len(x) == 0:
        raise CalibrationError("the evaluation set is empty")
    return x.astype(np.float32), labels, f"{source} ({len(x)} samples)"


def _integer_labels(class_names: list[str], labels: np.ndarray) -> np.ndarray | None:
    """Class subfolders named by class index ('0', '207', ...) give labels; other names don't."""
    if not all(n.isdigit() for n in class_names):
        return None
    return np.array([int(class_names[i]) for i in labels])


def _fp16(model: onnx.ModelProto, out_dir: Path, name: str, recipe, spec: InputSpec) -> dict:
    from ..data import packaged_crops, random_inputs
    from ..metrics import compare_outputs
    from .fp16 import convert_fp16

    # magnitudes are probed on natural images (what deployment sees) and on noise
    sample = random_inputs(spec, 4, seed=0)
    if spec.channels in (1, 3):
        sample = np.concatenate([packaged_crops(spec, 8, seed=7).array, sample])
    model16, details = convert_fp16(model, sample)
    ref, out = q8.run(model, sample), q8.run(model16, sample)
    if not np.isfinite(out).all():
        raise PrecisionError(
            f"{name}: the FP16 graph overflows (non-finite logits on sample images) even with "
            f"{len(details['kept_fp32_nodes'])} node(s) kept FP32",
            fix="deploy FP32 (--precision fp32) or INT8; random-init weights often have activations "
                "beyond FP16 range, trained weights rarely do")
    parity = compare_outputs(ref, out)
    tol = recipe.tolerance("fp16")
    details["parity_vs_fp32_onnx"] = {k: round(v, 6) for k, v in parity.items()}
    details["within_tolerance"] = bool(parity["rel_max_abs"] <= tol.rel_max_abs
                                       and parity["top1_agreement"] >= tol.min_top1_agreement)
    _producer(model16, "fp16")
    entry = _write(model16, out_dir, f"{name}.fp16.onnx", "fp16")
    entry["details"] = details
    return entry


def _producer(model: onnx.ModelProto, what: str) -> None:
    model.producer_name = "zoo-exporter"
    model.doc_string = f"zoo-exporter quantize stage: {what}"


def _write(model: onnx.ModelProto, out_dir: Path, filename: str, precision: str) -> dict:
    """Check, then write atomically (nothing left behind on error); returns the manifest entry."""
    try:
        onnx.checker.check_model(model)
        write_bytes_atomic(out_dir / filename, model.SerializeToString())
    except Exception as err:
        raise PrecisionError(f"could not write {filename}: {err}") from err
    entry = artifact_entry(out_dir / filename, "onnx", precision)
    del entry["details"]  # the caller fills in the stage's details
    return entry
