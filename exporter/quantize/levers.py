"""The calibration levers between the activation ranges and the accuracy budget: the output-error
range search, the weight rounding (round-to-nearest, or the opt-in ``exact``/``gptq``), bias
correction, and the opt-in end-to-end range tuning. :func:`apply_levers` composes them;
``RETRY_LEVERS`` are what an export retries with when asked to (``lever_retry``, opt-in) and the
default calibration misses the budget: exact rounding alone. Range tuning is not among them: on
photos the calibration never saw it made real MobileNetV2 worse, and exact rounding was neutral
there (benchmarks/INT8_PHOTO_SPLIT.md), so the retry is off by default.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from ..errors import PrecisionError
from . import int8 as q8
from .bias import bias_correction as correct_biases
from .placement import plan as make_plan

RETRY_LEVERS = {"weight_rounding": "exact", "range_tuning": False}
RETRY_FLAGS = f"--weight-rounding {RETRY_LEVERS['weight_rounding']}"  # as typed


@dataclass
class Calibrated:
    """What the levers chose: ranges, int8 weights (empty: round-to-nearest), bias deltas; and the
    layers that stay fp32 where kept out of int8 on a fp16 target (name -> why)."""
    ranges: dict
    weights: dict
    rounding: str
    bias: dict
    tuned: dict | str | None
    fp32_layers: dict = field(default_factory=dict)


def apply_levers(model, target: str, excluded: set, ranges: dict, data, cached: dict, *,
                 weight_rounding: str, range_tuning: bool, bias_correction: bool, seed: int,
                 log, fp32_layers: dict | None = None) -> Calibrated:
    """Weight rounding, then bias correction (cached per target and rounding: the bias follows
    the weights), then range tuning, on top of ``ranges``; ``ranges`` itself is not changed.
    ``fp32_layers`` (:func:`fp16_unsafe`'s) is carried into the result and the tuned model."""
    fp32_layers = fp32_layers or {}
    weights, rounding = rounded_weights(model, target, excluded, ranges, data, weight_rounding, seed, log)
    bias: dict = {}
    if bias_correction:
        bias_key = target if rounding == "nearest" else f"{target}:{rounding}"
        stored = cached.setdefault("bias", {}).get(bias_key)
        if stored is None:
            log("calibration: bias correction")
            bias = correct_biases(model, make_plan(model, target), ranges, data.array,
                                      weights=weights)
            cached["bias"][bias_key] = {k: v.tolist() for k, v in bias.items()}
        else:
            bias = {k: np.asarray(v, np.float32) for k, v in stored.items()}
    tuned = None
    if range_tuning:
        ranges, tuned = tuned_ranges(model, target, excluded, ranges, bias, weights, data, seed, log,
                                     fp32_layers)
    return Calibrated(ranges, weights, rounding, bias, tuned, fp32_layers)


def fp16_unsafe(model, target: str, data, log) -> dict[str, str]:
    """Layers that stay fp32 where the target keeps layers out of int8 in fp16 (none elsewhere)."""
    if q8.kept_precision(target) != "fp16":
        return {}
    from .fp16 import fp16_unsafe_layers

    unsafe = fp16_unsafe_layers(model, make_plan(model, target).quantized, data)
    if unsafe:
        log(f"calibration: {len(unsafe)} layer(s) beyond fp16's range stay fp32 if kept out of int8 "
            f"(e.g. {next(iter(unsafe))}: {next(iter(unsafe.values()))})")
    return unsafe


def untried_levers(weight_rounding: str) -> str:
    """The opt-in lever the budget's refusal may suggest when this export did not use it: exact
    rounding only (range tuning made the model worse on unseen photos: INT8_PHOTO_SPLIT.md)."""
    return "--weight-rounding exact" if weight_rounding == "nearest" else ""


def searched_ranges(model, target: str, excluded: set, ranges: dict, data, cached: dict, log):
    """Ranges re-chosen for the consumers' output error (``range_search``), cached per target;
    a graph the search cannot walk keeps the histogram ranges, and the manifest says why."""
    stored = cached.setdefault("searched", {}).get(target)
    if stored is not None:
        return {**ranges, **{k: tuple(v) for k, v in stored.items()}}, "output-error search (cached)"
    from .range_search import search_ranges

    log("calibration: searching ranges against the consuming layers' output error")
    try:
        found = search_ranges(model, make_plan(model, target, excluded), ranges, data.array, log=log)
    except PrecisionError as err:
        log(f"calibration: range search skipped ({err.message}); histogram ranges kept")
        return ranges, f"output-error search skipped ({err.message})"
    changed = {k: list(v) for k, v in found.items() if tuple(v) != tuple(ranges.get(k, ()))}
    cached["searched"][target] = changed
    return found, "output-error search"


def tuned_ranges(model, target: str, excluded: set, ranges: dict, bias: dict, weights: dict, data,
                 seed: int, log, fp32_layers: Collection[str] = ()) -> tuple[dict, dict | str]:
    """(ranges, report) after the end-to-end tuning (:mod:`.tune`); a graph the torch walk cannot
    run keeps its ranges, and the report says why."""
    from .tune import tune_ranges

    log("calibration: tuning the activation ranges against the prediction's KL")
    report: dict = {}
    try:
        tuned = tune_ranges(model, make_plan(model, target, excluded), ranges, data.array, bias,
                            weights, seed=seed, log=log, report=report, fp32_layers=fp32_layers)
    except PrecisionError as err:
        log(f"calibration: range tuning skipped ({err.message}); ranges kept")
        return ranges, f"skipped: {err.message}"
    return tuned, report


def rounded_weights(model, target: str, excluded: set, ranges: dict, data, how: str, seed: int,
                    log) -> tuple[dict, str]:
    """({layer: int8 weight}, what was done): the exact search of depthwise convs (``exact``; with
    GPTQ for the other layers: ``gptq``), or round-to-nearest when asked or when the graph has an op
    the reconstruction walk cannot run."""
    if how == "nearest":
        return {}, "nearest"
    from .gptq import round_weights

    log(f"calibration: {how} weight rounding")
    try:
        return round_weights(model, make_plan(model, target, excluded), ranges, data.array,
                             mode=how, seed=seed, log=log), how
    except PrecisionError as err:
        log(f"calibration: {how} rounding skipped ({err.message}); round-to-nearest weights")
        return {}, f"nearest ({how} rounding skipped: {err.message})"
