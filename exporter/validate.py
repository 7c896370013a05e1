"""Validation up front: every argument, path and file of a request is checked before any model is
built or any file is written, and a bad one is a typed error that names the value and the fix."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .defaults import WEIGHT_ROUNDING
from .errors import CalibrationError, UsageError

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


def check_model_options(request: Any) -> None:
    """The options of an ExportRequest (``pipeline.ExportRequest``), files included."""
    from .checkpoints import sniff

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
    quant = request.quant or {}
    positive("--calibration-samples", quant.get("samples"))
    positive("--eval-samples", quant.get("eval_samples"))
    agreement = quant.get("min_agreement")
    if agreement is not None and not 0 <= agreement <= 1:
        raise UsageError(f"--min-agreement must be a fraction 0..1, got {agreement}",
                         fix="e.g. --min-agreement 0.95")
    kept = quant.get("max_kept_fraction")
    if kept is not None and not 0 <= kept <= 1:
        raise UsageError(f"--max-kept-fraction must be a fraction 0..1, got {kept}",
                         fix="e.g. --max-kept-fraction 0.5 (at most half the convs out of INT8)")
    calibration = quant.get("calibration")
    try:
        packaged = calibration is not None and packaged_seed(str(calibration), 0) is not None
    except ValueError as err:
        raise UsageError(f"--calibration {calibration}: {err}",
                         fix="use --calibration packaged or packaged:SEED, e.g. packaged:1") from None
    for flag, value in (("--calibration", calibration), ("--eval-images", quant.get("eval_data"))):
        if isinstance(value, str) and value == "packaged" and Path(value).exists():
            raise UsageError(f"{flag} packaged names the photos installed packages ship, and a "
                             f"'packaged' {'folder' if Path(value).is_dir() else 'file'} exists here too",
                             fix=f"pass {flag} ./packaged for yours, or {flag} packaged:0 for the "
                                 "shipped photos")
    if calibration and not packaged and not Path(calibration).exists():
        raise UsageError(f"--calibration {calibration} does not exist",
                         fix="pass an image folder, an .npy of NCHW tensors, or packaged[:SEED]")
    levers = lever_problems(quant)
    if levers:
        raise UsageError(levers[0][0], fix=levers[0][1])
    overlap = data_overlap(quant)
    if overlap:
        raise CalibrationError(overlap[0], fix=overlap[1])
    if quant.get("max_accuracy_drop") is not None and not 0 <= quant["max_accuracy_drop"] <= 100:
        raise UsageError(f"--max-accuracy-drop must be 0..100 points, got {quant['max_accuracy_drop']}",
                         fix="e.g. --max-accuracy-drop 1")


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
        raise UsageError(f"--images {args.images} is {what}, not a directory",
                         fix="pass a folder of images (class subfolders give accuracy)")
