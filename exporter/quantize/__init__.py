"""Quantize stage: FP32 ONNX -> FP16 ONNX, or INT8 explicit Q/DQ ONNX within an accuracy budget.

``quantize_stage`` returns the manifest artifact entry (``file``, ``format``, ``precision``,
``sha256``, ``bytes``, ``details``). The artifact is written to a temporary name and renamed into
place only when everything succeeded; the calibration cache (``<model>.int8.calib.json``, keyed
by the hashes of model, preprocessing, data and method) is written next to it on success too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import onnx

from ..artifacts import artifact_entry, sha256_file, write_bytes_atomic
from ..defaults import WEIGHT_ROUNDING
from ..errors import CalibrationError, PrecisionError, UsageError
from ..recipes import InputSpec
from . import budget as bud
from . import judging
from . import calibration as cal
from . import equalize as eq
from . import int8 as q8
from . import levers as lv
from .placement import (TARGETS, Graph, constant_weights_to_initializers, ensure_node_names, float_readers,
                        plan as make_plan)
from .samples import (Scratch, copies_note, drop_calibration_copies, exhausted, judging_notes,
                      require_disjoint, require_held)
from .rules import exclusion_reasons, refuse_nothing_left
from .shift import find_shifts
from .thresholds import METHODS, PERCENTILE, compute_ranges

DEFAULT_METHOD = "mse"  # best measured on both targets (benchmarks/INT8_RESULTS.md)
DEFAULT_SAMPLES = 256
PRECISIONS = ("fp16", "int8")

__all__ = ["quantize_stage", "DEFAULT_METHOD", "TARGETS", "PRECISIONS"]


def quantize_stage(fp32_onnx: Path, out_dir: Path, recipe, spec: InputSpec, precision: str, *,
                   calibration: str | os.PathLike | None = None, method: str = DEFAULT_METHOD,
                   samples: int = DEFAULT_SAMPLES, target: str = "tensorrt",
                   max_accuracy_drop: float | None = None, eval_data: Any = None,
                   eval_samples: int = cal.DEFAULT_HOLDOUT, min_agreement: float | None = None,
                   bias_correction: bool | None = None, range_search: bool = True,
                   equalize: bool = True, weight_rounding: str | None = None,
                   range_tuning: bool | None = None, lever_retry: bool = False,
                   max_kept_fraction: float = bud.MAX_KEPT_FRACTION,
                   force_kept: list[str] | None = None, budget: bool = True, seed: int = 0,
                   speed_guard: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Produce ``<model>.fp16.onnx`` or ``<model>.int8.<target>.onnx`` in ``out_dir``.
    ``speed_guard``: the ``cpu`` budget refuses a model with layers kept that ONNX Runtime runs
    slower than FP32 (off for a runtime other than ONNX Runtime reading the Q/DQ graph).
    ``range_tuning``: tune the activation ranges end to end against the prediction's KL
    (:mod:`.tune`; opt-in: benchmarks/INT8_TUNE.md). ``lever_retry`` (opt-in): when the budget refuses
    and neither lever was chosen (both None), retry once with ``levers.RETRY_LEVERS``, and say so."""
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
    constant_weights_to_initializers(model)
    if method not in METHODS:
        raise UsageError(f"unknown --calibration-method '{method}'", fix=f"use one of {METHODS}")
    # weight_rounding None = round-to-nearest (benchmarks/INT8_GPTQ.md: GPTQ lowers the tensorrt KL,
    # but not top-1 on held-out crops), kept apart from an explicit "nearest" for the lever retry
    if weight_rounding is not None and weight_rounding not in WEIGHT_ROUNDING:
        raise UsageError(f"unknown weight rounding '{weight_rounding}'", fix=f"use one of {WEIGHT_ROUNDING}")
    scratch = Scratch()
    try:
        return _int8(model, fp32_onnx, out_dir, name, spec, scratch, log, calibration=calibration,
                     method=method, samples=samples, target=target, eval_data=eval_data,
                     eval_samples=eval_samples, max_accuracy_drop=max_accuracy_drop,
                     min_agreement=min_agreement, bias_correction=bias_correction,
                     range_search=range_search, equalize=equalize, weight_rounding=weight_rounding,
                     range_tuning=range_tuning, lever_retry=lever_retry,
                     max_kept_fraction=max_kept_fraction, force_kept=force_kept, budget=budget,
                     seed=seed, speed_guard=speed_guard)
    finally:
        scratch.close()


def _int8(model, fp32_onnx, out_dir, name, spec, scratch, log, *, calibration, method, samples,
          target, eval_data, eval_samples, max_accuracy_drop, min_agreement, bias_correction,
          range_search, equalize, weight_rounding, range_tuning, lever_retry,
          max_kept_fraction, force_kept, budget, seed, speed_guard) -> dict:
    t0 = time.time()
    batch = q8.fixed_batch(model)
    split = eval_samples if (eval_data is None and budget) else 0
    data, held = cal.load_split(calibration, spec, samples, split, batch=batch, seed=seed,
                                scratch=scratch)
    log(f"calibration: {len(data)} sample(s) from {data.source}"
        + (f"; {len(held)} other sample(s) held out to judge the budget" if held is not None else ""))
    for note, count in data.conversions.items():
        log(f"calibration: converted {count} image(s) {note}")
    if data.skipped:
        log(f"calibration: skipped {len(data.skipped)} unreadable/non-image file(s)")
    # the judging set before any calibration work: a bad --eval-images fails in seconds
    judged = _eval_set(eval_data, held, data, spec, batch, eval_samples, scratch, budget)
    x_eval, labels, eval_source = judged.inputs, judged.labels, judged.description
    judging.check_labels(labels, _output_classes(model), eval_source, judged.class_names)
    criterion = judging.Criterion.make(labels, max_accuracy_drop, min_agreement, judged.unlabelled,
                                       source_exhausted=judged.exhausted)
    fp32_model = model
    if bias_correction is None:  # measured on both targets: benchmarks/INT8_LEVERS.md, INT8_EXACT.md
        bias_correction = True
    equalized = {"pairs": 0}
    if equalize:  # into dense consumers and streams only with bias correction: INT8_EQ_DENSE/STREAM.md
        model, equalized = eq.equalize(model, data.array,
                                       dense_alpha=eq.DENSE_ALPHA if bias_correction else None,
                                       stream_alpha=eq.STREAM_ALPHA if bias_correction else None)
        if equalized["pairs"] or equalized.get("streams"):
            log(f"calibration: {equalized['pairs']} activation(s) equalized into their consumers"
                + (f", {equalized['dense_pairs']} of them into dense convs" if equalized.get("dense_pairs") else "")
                + _streams_said(equalized)
                + f" (per-channel scale up to {equalized['max_scale']:g})")
    components = {"model": sha256_file(fp32_onnx), "preprocessing": cal.preprocessing_sha(spec),
                  "data": data.sha256, "method": f"{method}:{PERCENTILE if method == 'percentile' else ''}"
                  + (f":equalized:cap{eq.CAP:g}" if equalized["pairs"] else "")
                  + (f":dense{equalized['dense_alpha']:g}" if equalized.get("dense_pairs") else "")
                  + (f":stream{equalized['stream_alpha']:g}" if equalized.get("streams") else "")}
    cache_path = out_dir / f"{name}.int8.calib.json"
    cached, why = cal.read_cache(cache_path, components)
    if cached is None:
        log(f"calibration: computing ranges ({why})")
        stats = cal.collect_statistics(model, data.array, log=log)
        ranges = compute_ranges(stats, method)
        cached = {"ranges": {k: list(v) for k, v in ranges.items()}, "bias": {}}
    ranges = {k: tuple(v) for k, v in cached["ranges"].items()}
    rule_reasons = exclusion_reasons(model, target)
    rule_kept = list(rule_reasons)
    refuse_nothing_left(model, rule_reasons, target)
    kept_base = list(dict.fromkeys(rule_kept + list(force_kept or [])))
    searched = None
    if range_search:
        ranges, searched = lv.searched_ranges(model, target, set(rule_kept), ranges, data, cached, log)

    fp32_layers = lv.fp16_unsafe(model, target, data.array, log)  # model and data only: once

    def calibrate_and_fit(levers: dict, untried: str) -> tuple[lv.Calibrated, _Fitted]:
        calibrated = lv.apply_levers(model, target, set(rule_kept), ranges, data, cached,
                                     bias_correction=bias_correction, seed=seed, log=log,
                                     fp32_layers=fp32_layers, **levers)
        return calibrated, _fit(model, fp32_model, target, calibrated, x_eval, labels, criterion,
                                data, kept_base, spec, batch, budget=budget,
                                max_kept_fraction=max_kept_fraction, speed_guard=speed_guard,
                                untried=untried, log=log)

    levers = {"weight_rounding": weight_rounding or "nearest", "range_tuning": bool(range_tuning)}
    retried, first_best = None, None
    try:
        calibrated, fitted = calibrate_and_fit(levers, lv.untried_levers(levers["weight_rounding"]))
    except bud.BudgetRefused as first:  # leaving the block frees the first try's frames
        if not (lever_retry and weight_rounding is None and range_tuning is None):
            raise
        first_best = first.best
    if first_best is not None:
        t_retry = time.time()
        log(f"int8 budget: the default calibration's best was {first_best}; retrying with the "
            f"opt-in lever {lv.RETRY_FLAGS} (--lever-retry; minutes more)")
        try:
            calibrated, fitted = calibrate_and_fit(lv.RETRY_LEVERS, "")
        except bud.BudgetRefused as again:
            raise bud.BudgetRefused(
                f"{again.message}, with the opt-in lever {lv.RETRY_FLAGS} (retried after the "
                f"default calibration's best, {first_best})", fix=again.fix, best=again.best) from None
        retried = {"levers": lv.RETRY_FLAGS, "default_best": first_best,
                   "seconds": round(time.time() - t_retry, 1)}
    weights = calibrated.weights
    qmodel, kept, measurement = fitted.model, fitted.kept, fitted.measurement
    history, ranking, latency = fitted.history, fitted.ranking, fitted.latency
    final_plan = make_plan(model, target, set(kept))
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    int8_convs = [n for n in final_plan.quantized if n in convs]
    if target == "cpu" and latency is None:  # the speed guard's timing, when it timed this model
        latency = _cpu_latency(fp32_model, qmodel, spec, batch)
    if latency:
        log(f"int8 latency on ONNX Runtime CPU, batch {latency['batch']}: {latency['int8_ms']:.2f} ms "
            f"vs FP32 {latency['fp32_ms']:.2f} ms ({latency['speedup']:.2f}x)")
    filename = f"{name}.int8.{target}.onnx"
    _producer(qmodel, f"int8 {target}")
    entry = _write(qmodel, out_dir, filename, "int8")
    cal.write_cache(cache_path, components, cached)
    entry["details"] = {
        "target": target, "method": method,
        "percentile": PERCENTILE if method == "percentile" else None,
        "calibration": data.summary(), "samples_used": len(data),
        "skipped_files": len(data.skipped), "conversions": dict(data.conversions),
        "activations": "int8 symmetric, zero-point 0" if final_plan.signed else "uint8 asymmetric",
        "zero_centred": sorted(find_shifts(Graph(model), final_plan, calibrated.ranges)),
        "weights": "int8 symmetric per-channel (axis 0 = output channels), zero-point 0",
        "bias": "float (not quantized)" if final_plan.signed else "int32 (input x weight scale)",
        "bias_correction": bias_correction, "range_search": searched,
        "range_tuning": calibrated.tuned, "lever_retry": retried,
        "weight_rounding": {"method": calibrated.rounding, "layers": len(weights)},
        "equalization": {k: v for k, v in equalized.items() if k != "tensors"},
        "int8_convs": len(int8_convs), "convs": len(convs),
        "int8_conv_fraction": round(len(int8_convs) / max(len(convs), 1), 4),
        "int8_layers": final_plan.quantized, "kept_fp16_layers": kept,
        "float_out_layers": final_plan.float_out,
        "float_readers": float_readers(model, final_plan) if target == "cpu" else {},
        "kept_by_rule": rule_reasons,
        "kept_layers_precision": q8.kept_precision(target),
        "kept_fp32_layers": {n: why for n, why in calibrated.fp32_layers.items() if n in kept},
        "criterion": criterion.describe(), "budget_met": measurement.ok,
        "measured": measurement.metrics, "measured_on": eval_source,
        "judging_floor": fitted.floor,
        "budget_warning": criterion.warning(measurement.metrics),
        "measured_held_out": eval_data is not None or held is not None,
        "judged_on_split": eval_data is None and held is not None,  # held out of the calibration source
        "budget_history": history, "sensitivity_top": [[n, round(s, 5)] for n, s in ranking[:10]],
        "latency_cpu": latency,
        "calibration_cache": {"file": cache_path.name, "hit": why == "hit", "reason": why,
                              "key": cal.cache_key(components)},
        "ort_session": f"disabled optimizers {q8.DISABLED_ORT_OPTIMIZERS} (breaks fp16 Q/DQ graphs)",
        "seconds": round(time.time() - t0, 2),
    }
    return entry


@dataclass
class _Fitted:
    """The model a budget loop chose, what it kept out of INT8, and what it measured."""
    model: onnx.ModelProto
    kept: list[str]
    measurement: judging.Measurement
    history: list[dict]
    ranking: list
    latency: dict | None
    floor: dict | None = None  # judging.noise_floor of the judging samples


def _fit(model, fp32_model, target: str, calibrated: lv.Calibrated, x_eval, labels, criterion, data,
         kept_base: list[str], spec: InputSpec, batch: int | None, *, budget: bool,
         max_kept_fraction: float, speed_guard: bool, untried: str, log) -> _Fitted:
    """The budget loop over ``calibrated`` (or, budget off, the plan with ``kept_base`` out)."""
    ranges, bias, weights = calibrated.ranges, calibrated.bias, calibrated.weights
    ref = q8.run(model, x_eval)
    floor = judging.noise_floor(lambda a: q8.run(model, a), x_eval, spec.std, ref, criterion)
    if not budget:
        qmodel = q8.build_qdq(model, make_plan(model, target, set(kept_base)), ranges, bias,
                              weights=weights, fp32_layers=calibrated.fp32_layers)
        return _Fitted(qmodel, kept_base, judging.measure(ref, q8.run(qmodel, x_eval), labels, criterion),
                       [], [], None, floor)
    speed = (lambda m: _cpu_latency(fp32_model, m, spec, batch)) \
        if target == "cpu" and speed_guard else None
    result = bud.fit_budget(model, target, ranges, bias, x_eval, labels, criterion,
                            bud.sensitivity_inputs(data.array), max_kept_fraction=max_kept_fraction,
                            force_kept=kept_base, log=log, weights=weights, speed=speed,
                            untried=untried, fp32_layers=calibrated.fp32_layers, floor=floor, ref=ref)
    return _Fitted(result.model, result.kept, result.measurement, result.history,
                   result.sensitivity, result.latency, floor)


# ModelOpt's TensorRT exclusions: tiny-channel convs (a 3-channel stem) gain nothing from INT8 and
# lose accuracy; a batch-1 classifier GEMM is a GEMV, memory-bound, where INT8 buys no speed.
# On ONNX Runtime CPU no rule: a float stem was faster for MobileNetV2 in one profile and slower in
# in-process timings, slower for ResNet/VGG (benchmarks/INT8_RESULTS.md, reading).
def _streams_said(equalized: dict) -> str:
    """', and N residual stream(s) and M conv -> conv link(s)' of the equalization's record."""
    residual = equalized.get("residual_streams", 0)
    links = equalized.get("streams", 0) - residual
    said = [f"{residual} residual stream(s)"] * bool(residual) + [f"{links} conv -> conv link(s)"] * bool(links)
    return f", and {' and '.join(said)}" if said else ""


def _cpu_latency(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, spec: InputSpec,
                 batch: int | None, runs: int = 60, rounds: int = 3) -> dict:
    """Median batch latency of FP32 vs INT8 on ONNX Runtime CPU, in one process, in interleaved
    rounds of consecutive runs. Alternating single runs measured each session while the other's
    worker threads still spun: both ran about 2x slow and the ratio swung (1.25-1.70x for one model
    that measures 1.75x in rounds)."""
    from ..latency import benchmark

    b = batch or 1
    x = np.random.default_rng(0).standard_normal((b, spec.channels, *spec.size)).astype(np.float32)
    sessions = {"fp32": q8.make_session(fp32, threads=2), "int8": q8.make_session(qmodel, threads=2)}
    name = sessions["fp32"].get_inputs()[0].name
    runners = {key: (lambda arr, s=sess: s.run(None, {name: arr})) for key, sess in sessions.items()}
    stats = benchmark(runners, {b: x}, warmup=5, runs=runs, rounds=rounds, retries=0)
    fp, iq = stats["fp32"][b].p50_ms, stats["int8"][b].p50_ms
    return {"batch": b, "threads": 2, "runs": runs, "rounds": rounds, "fp32_ms": round(fp, 3),
            "int8_ms": round(iq, 3), "speedup": round(fp / iq, 3)}


class JudgingSet(NamedTuple):
    """What the budget is judged on: never the calibration set."""
    inputs: np.ndarray
    labels: np.ndarray | None
    description: str
    unlabelled: str = ""  # why a folder gave no labels
    class_names: Sequence[str] = ()  # the folder's class subfolders, when labelled
    exhausted: bool = False  # its source holds no more samples than these


def _eval_set(eval_data, held, data, spec: InputSpec, batch: int | None, eval_samples: int,
              scratch: Scratch, budget: bool = True) -> JudgingSet:
    """The held-out part of the calibration source, or ``eval_data`` (an array, a sample set or
    a path), checked disjoint from the calibration set."""
    if eval_data is None:
        if held is None and not budget:  # nothing to judge: report on the calibration data, say so
            return JudgingSet(data.array, None, f"calibration data ({len(data)} samples, not held out)")
        copies = 0
        if held is not None:
            copies = drop_calibration_copies(data, held)
            held.trim_to_batch(batch)
        require_held(held, data, batch)
        return JudgingSet(
            held.array, held.labels,
            f"{held.source}: {len(held)} samples, split deterministically from the calibration source"
            + (f" ({copies_note(copies)})" if copies else "") + judging_notes(held),
            held.unlabelled, held.class_names if held.labels is not None else [], exhausted(held))
    labels, source, paths, notes, unlabelled, short = None, "eval_data", None, "", "", False
    class_names = list(getattr(eval_data, "class_names", None) or [])
    if isinstance(eval_data, np.ndarray):
        x = eval_data
    elif hasattr(eval_data, "array"):
        x, labels = eval_data.array, getattr(eval_data, "labels", None)
        source = getattr(eval_data, "source", "") or source
        paths = getattr(eval_data, "paths", None)
    else:
        loaded = cal.load_judging(eval_data, spec, eval_samples, batch=batch, scratch=scratch)
        x, source, paths, labels = loaded.array, loaded.source, loaded.paths, loaded.labels
        notes, unlabelled, short = judging_notes(loaded), loaded.unlabelled, exhausted(loaded)
        class_names = loaded.class_names if loaded.labels is not None else []
    require_disjoint(data, x, paths)
    if batch:
        keep = len(x) - len(x) % batch
        x = x[:keep]
        labels = labels[:keep] if labels is not None else None
    if len(x) == 0:
        raise CalibrationError("the evaluation set is empty",
                               fix="pass --eval-images DIR with at least one image per batch")
    return JudgingSet(x, labels, f"{source} ({len(x)} samples{notes})", unlabelled, class_names, short)


def _output_classes(model: onnx.ModelProto) -> int:
    """The static size of the first output's last axis (the class count), 0 when not static."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else 0


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
