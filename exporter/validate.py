"""Validation up front: every argument, path and file of a request is checked before any model is
built or any file is written, and a bad one is a typed error that names the value and the fix."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .defaults import WEIGHT_ROUNDING
from .errors import CalibrationError, InputError, UsageError

MAX_SEED = 2**32 - 1


def packaged_seed(text: str, default: int) -> int | None:
    """The crop seed ``--calibration packaged[:SEED]`` asks for (``default`` without one); None for
    any other source. ValueError when the seed is not a non-negative integer."""
    if text != "packaged" and not text.startswith("packaged:"):
        return None
    if ":" not in text:
        return default
    seed = text.split(":", 1)[1]
    if not seed.isdecimal():  # exactly what int() reads (isdigit also admits '²')
        raise ValueError(f"the seed after 'packaged:' must be a non-negative integer, got {seed!r}")
    return int(seed)


def opset_range(exporter: str) -> tuple[int, int]:
    """ONNX opsets torch's ``exporter`` writes (read from torch, not hard-coded)."""
    from torch.onnx import _constants as c

    low = max(c.ONNX_MIN_OPSET, getattr(c, "ONNX_CONSTANT_FOLDING_MIN_OPSET", 9))
    if exporter == "torchscript":
        return low, c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    return low, c.ONNX_MAX_OPSET


def positive(name: str, value: int | float | None, minimum: int = 1) -> None:
    """``value`` (when given) is a number >= ``minimum``."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value) or value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}",
                         fix=f"pass {name} {minimum} or more" + (" (or omit it)" if minimum else ""))


def check_tolerances(atol: Any, rtol: Any) -> None:
    """--atol/--rtol overrides are finite numbers >= 0 (NaN would pass every comparison)."""
    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not (_number(value) and value >= 0):
            raise UsageError(f"{flag} must be a finite number >= 0, got {value}",
                             fix=f"e.g. {flag} {'1e-4' if flag == '--atol' else '1e-3'}, or leave it out "
                                 "for the recipe's tolerance")


def check_model_options(request: Any) -> None:
    """The options of an ExportRequest (``pipeline.ExportRequest``), files included."""
    from .checkpoints import sniff

    check_tolerances(getattr(request, "atol", None), getattr(request, "rtol", None))
    positive("--batch", request.batch)
    positive("--input-size", request.input_size)
    positive("--channels", request.channels)
    positive("--num-classes", request.num_classes)
    if not 0 <= request.seed <= MAX_SEED:
        raise UsageError(f"--seed must be in 0..{MAX_SEED}, got {request.seed}", fix="e.g. --seed 0")
    low, high = opset_range(request.exporter)
    if not low <= request.opset <= high:
        raise UsageError(f"--opset {request.opset} is outside what torch's {request.exporter} "
                         f"ONNX exporter writes ({low}..{high})",
                         fix=f"pass --opset between {low} and {high} (default 18)")
    for name in ("mean", "std"):
        values = getattr(request, name)
        if values is not None and not all(math.isfinite(v) for v in values):
            raise UsageError(f"--{name} {','.join(map(str, values))} has a non-finite value",
                             fix=f"pass finite numbers to --{name}")
    if request.std is not None and any(v <= 0 for v in request.std):
        raise UsageError(f"--std {','.join(map(str, request.std))} must be > 0 for every channel",
                         fix="pass positive standard deviations, e.g. --std 0.229,0.224,0.225")
    if getattr(request, "output_index", None) is not None and request.output_index < 0:
        raise UsageError(f"--output-index must be >= 0, got {request.output_index}",
                         fix="pass the position of the logits in the model's outputs")
    if request.checkpoint is not None:
        sniff(request.checkpoint)  # names a directory, empty, truncated or random file for what it is
    problems = quant_problems(request.quant or {})
    if problems:
        what, fix, kind = problems[0]
        raise kind(what, fix=fix)


def two_budgets(max_accuracy_drop: Any, min_agreement: Any) -> tuple[str, str] | None:
    """(what, fix) when both INT8 budgets were asked for (the request check and the quantizer's
    own entry point say it the same way); None otherwise."""
    if max_accuracy_drop is None or min_agreement is None:
        return None
    drop, agreement = (f"{v:g}" if _number(v) else repr(v) for v in (max_accuracy_drop, min_agreement))
    return (f"--max-accuracy-drop {drop} and --min-agreement {agreement} are two budgets; the INT8 "
            "budget is one of them",
            "pass --max-accuracy-drop (labelled --eval-images) or --min-agreement, not both")


def quant_problems(quant: dict) -> list[tuple[str, str, type]]:
    """(what, fix, error type) for each INT8 option value that cannot work, by the quantize stage's
    names (CLI, API or a plan's [calibration] table), checked before any model is built."""
    from .defaults import CALIBRATION_METHODS, INT8_TARGETS

    problems: list[tuple[str, str, type]] = []

    def usage(what: str, fix: str) -> None:
        problems.append((what, fix, UsageError))

    for flag, key in (("--calibration-samples", "samples"), ("--eval-samples", "eval_samples")):
        value = quant.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            usage(f"{flag} must be >= 1, got {value!r}", f"pass {flag} N, a whole number 1 or more")
    if quant.get("target") is not None and quant["target"] not in INT8_TARGETS:
        usage(f"unknown --target {quant['target']!r}", f"use one of {', '.join(INT8_TARGETS)}")
    if quant.get("method") is not None and quant["method"] not in CALIBRATION_METHODS:
        usage(f"unknown --calibration-method {quant['method']!r}",
              f"use one of {', '.join(CALIBRATION_METHODS)}")
    for flag, key, fix in (("--min-agreement", "min_agreement", "e.g. --min-agreement 0.95"),
                           ("--max-kept-fraction", "max_kept_fraction",
                            "e.g. --max-kept-fraction 0.5 (at most half the convs out of INT8)")):
        value = quant.get(key)
        if value is not None and not (_number(value) and 0 <= value <= 1):
            usage(f"{flag} must be a fraction 0..1, got {value!r}", fix)
    drop = quant.get("max_accuracy_drop")
    if drop is not None and not (_number(drop) and 0 <= drop <= 100):
        usage(f"--max-accuracy-drop must be 0..100 points, got {drop!r}", "e.g. --max-accuracy-drop 1")
    both = two_budgets(drop, quant.get("min_agreement"))
    if both:
        usage(*both)
    calibration = quant.get("calibration")
    try:
        packaged = calibration is not None and packaged_seed(str(calibration), 0) is not None
    except ValueError as err:
        usage(f"--calibration {calibration}: {err}",
              "use --calibration packaged or packaged:SEED, e.g. packaged:1")
        packaged = True
    if drop is not None and packaged and quant.get("eval_data") is None:
        usage(f"--max-accuracy-drop {drop:g} needs labelled held-out images, and the packaged photos "
              "have no labels", "pass --eval-images DIR with class subfolders named by class index, "
              "or judge by agreement with FP32: --min-agreement 0.95")
    for flag, value in (("--calibration", calibration), ("--eval-images", quant.get("eval_data"))):
        if isinstance(value, str) and value == "packaged" and Path(value).exists():
            usage(f"{flag} packaged names the photos installed packages ship, and a 'packaged' "
                  f"{'folder' if Path(value).is_dir() else 'file'} exists here too",
                  f"pass {flag} ./packaged for yours, or {flag} packaged:0 for the shipped photos")
    if calibration and _path(calibration) and not packaged and not Path(calibration).exists():
        shipped = Path(calibration).name == "packaged"  # ./packaged or packaged/: the photos meant?
        problems.append((f"--calibration {calibration} does not exist",
                         "pass an image folder, an .npy of NCHW tensors, or packaged[:SEED]"
                         + (" (the shipped photos: --calibration packaged, as one word)" if shipped else ""),
                         InputError))
    problems += [(what, fix, UsageError) for what, fix in lever_problems(quant)]
    overlap = data_overlap(quant)
    if overlap:
        problems.append((overlap[0], overlap[1], CalibrationError))
    return problems


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def lever_problems(quant: dict) -> list[tuple[str, str]]:
    """(what, fix) for each opt-in INT8 lever given a value it cannot take (CLI, API or plan)."""
    problems = []
    rounding = quant.get("weight_rounding")
    if rounding is not None and rounding not in WEIGHT_ROUNDING:
        problems.append((f"weight rounding {rounding!r} is not one of {', '.join(WEIGHT_ROUNDING)}",
                         "pass --weight-rounding exact (a plan: weight_rounding = \"exact\"), or "
                         "leave it out for round-to-nearest"))
    if quant.get("range_tuning") not in (None, True, False):
        problems.append((f"range tuning must be true or false, got {quant['range_tuning']!r}",
                         "pass --range-tuning (a plan: range_tuning = true), or leave it out"))
    if quant.get("lever_retry") not in (None, True, False):
        problems.append((f"lever retry must be true or false, got {quant['lever_retry']!r}",
                         "pass --lever-retry (a plan: lever_retry = true), or leave it out"))
    return problems


def _within(inner: str | os.PathLike, outer: str | os.PathLike) -> bool:
    """``inner`` is ``outer`` or lies inside it (both resolved)."""
    inner, outer = Path(inner).resolve(), Path(outer).resolve()
    return inner == outer or outer in inner.parents


def _path(value: Any) -> bool:
    """A data source given as a path (the API also takes arrays and sample sets)."""
    return isinstance(value, (str, os.PathLike))


def check_output_outside_data(output: Path, quant: dict) -> None:
    """The export's folder must not lie inside an image folder it reads: it would read its own
    artifacts (and staging files) as images, differently on every run."""
    for flag, data in (("--calibration", quant.get("calibration")), ("--eval-images", quant.get("eval_data"))):
        if _path(data) and Path(data).is_dir() and _within(output, data):
            raise UsageError(f"the output folder '{output}' lies inside the {flag} folder '{data}': "
                             "the export would read its own artifacts as images",
                             fix=f"write the export outside '{data}' (-o DIR)")


def data_overlap(quant: dict) -> tuple[str, str] | None:
    """(what, fix) when ``--eval-images`` is the calibration folder or file, lies inside it or holds
    it: the budget would judge on the images it calibrated on. Found from the paths alone, before
    anything is read (the quantize stage also compares the samples themselves, which catches a
    copied file)."""
    calibration, judged = quant.get("calibration"), quant.get("eval_data")
    if not (_path(calibration) and _path(judged) and str(calibration) and str(judged)) \
            or packaged_seed(str(calibration), 0) is not None:
        return None
    if Path(calibration).resolve() == Path(judged).resolve():
        relation = "is the --calibration source"
    elif _within(judged, calibration):
        relation = f"lies inside the --calibration folder '{calibration}'"
    elif _within(calibration, judged):
        relation = f"holds the --calibration source '{calibration}'"
    else:
        return None
    return (f"--eval-images '{judged}' {relation}: the INT8 budget would judge INT8 on the images "
            "its ranges were fitted to",
            "pass --eval-images a folder that holds none of the calibration images, or leave "
            "it out: the budget then judges on a deterministic "
            "split of the calibration source")


def check_parity_options(args: Any) -> None:
    """``exporter parity``'s input and timing options; export options with artifacts that exist
    already (--artifacts DIR, a FILE) would change nothing, so they are a UsageError."""
    from .artifact_file import looks_like_file
    from .cli_options import _QUANT_NAMES

    existing = ("--artifacts" if getattr(args, "artifacts", None)
                else "a FILE" if getattr(args, "model", None) and looks_like_file(args.model) else None)
    given = (["--format"] if getattr(args, "format", None) is not None else []) \
        + (["--precision"] if getattr(args, "precision", "fp32") != "fp32" else []) \
        + ["--" + src.replace("_", "-") for src in _QUANT_NAMES if getattr(args, src, None) is not None]
    if existing and given:
        raise UsageError(f"{', '.join(given)} only shape{'s' if len(given) == 1 else ''} an export, "
                         f"and with {existing} nothing is exported (the artifacts there are compared "
                         "as they are)",
                         fix=f"drop {' '.join(given)}, or export first (exporter export MODEL "
                             f"{' '.join(given)} ... -o DIR) and compare that folder")
    positive("--samples", args.samples, 0)
    check_tolerances(getattr(args, "atol", None), getattr(args, "rtol", None))
    positive("--random", args.random, 0)
    if args.samples == 0 and args.random == 0:
        raise UsageError("--samples 0 --random 0 leaves nothing to compare",
                         fix="pass --samples N (images) and/or --random N (random tensors), N >= 1")
    positive("--threads", args.threads)
    positive("--runs", args.runs)
    positive("--warmup", args.warmup, 0)
    positive("--rounds", args.rounds)
    if args.images is not None and not Path(args.images).is_dir():
        what = "a file" if Path(args.images).exists() else "missing"
        raise InputError(f"--images {args.images} is {what}, not a directory",
                         fix="pass a folder of images (class subfolders give accuracy)")
