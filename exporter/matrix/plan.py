"""A matrix plan: models x formats x precisions x options, read from TOML and checked up front.

```toml
models = ["lenet5", "nin", "resnet*", "torchvision:regnet_x_400mf"]   # names, specs, globs
formats = ["onnx", "torchscript"]                                      # from the backend registry
precisions = ["fp32", "int8"]
reduced = true            # each recipe's test size (or input_size = N); seed, weights, batch, ...
[calibration]             # shared by every INT8 job
data = "packaged"         # samples, method, target, max_accuracy_drop, min_agreement, eval_images, eval_samples
[parity]                  # samples, random, latency, runs, warmup, rounds, batch_sizes, threads
[resources]               # gpu = "H100": the GPU model TensorRT jobs are built and timed on
```

:func:`load_plan` validates everything (every problem in one :class:`PlanError`, exit code 4)
and :meth:`Plan.jobs` expands the matrix into :class:`JobSpec` s, one per model x precision x
device group (the formats needing no device share one CPU job; a device format such as TensorRT
gets its own GPU job). A (format, precision) cell the format cannot produce is dropped and listed
in :attr:`Plan.dropped`.
"""
from __future__ import annotations

import re

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ExporterError, PlanError
from ..validate import quant_problems

TOP_KEYS = {"models", "formats", "precisions", "reduced", "input_size", "seed", "weights", "batch",
            "opset", "exporter", "simplifier", "calibration", "parity", "resources"}
CALIBRATION_KEYS = {"data": "calibration", "samples": "samples", "method": "method",
                    "target": "target", "max_accuracy_drop": "max_accuracy_drop",
                    "min_agreement": "min_agreement", "max_kept_fraction": "max_kept_fraction",
                    "eval_images": "eval_data",
                    "eval_samples": "eval_samples", "weight_rounding": "weight_rounding",
                    "range_tuning": "range_tuning", "lever_retry": "lever_retry"}
PARITY_KEYS = {"samples", "random", "latency", "runs", "warmup", "rounds", "batch_sizes", "threads"}
RESOURCE_KEYS = {"gpu", "cpus_per_job"}
MODEL_KEYS = ("seed", "weights", "batch", "opset", "exporter", "simplifier")


@dataclass(frozen=True)
class JobSpec:
    """One job of the matrix, plain data: what to export, where, and what it needs to run."""

    key: str  # "<model>[@size]/<precision>[-<device formats>]": also its directory under --output
    model: str  # the model spec as the plan gives it (recipe name, torchvision:..., file.py:...)
    formats: tuple[str, ...]
    precision: str
    output: str  # the job's artifact directory
    input_size: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)  # seed, weights, batch, opset, ...
    quant: dict[str, Any] = field(default_factory=dict)  # calibration source, samples, method, ...
    parity: dict[str, Any] = field(default_factory=dict)  # samples, random, latency, runs, ...
    device: str = "cpu"  # cpu | cuda: where its runtimes run
    gpu_model: str | None = None  # accelerator type a device job must be placed on
    threads: int | None = None  # intra-op threads; the executor sets it from its slots

    @property
    def needs_gpu(self) -> bool:
        return self.device != "cpu"


@dataclass
class Plan:
    """A validated plan (see the module docstring)."""

    source: str
    models: list[tuple[str, str, int | None]]  # (spec, name, input size or None)
    formats: tuple[str, ...]
    precisions: tuple[str, ...]
    model_options: dict[str, Any] = field(default_factory=dict)
    quant: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    gpu_model: str | None = None
    cpus_per_job: int | None = None
    dropped: list[str] = field(default_factory=list)  # cells no format produces, said to the user
    cli: bool = False  # from an --zoo command line (its messages name flags), not a plan file

    def jobs(self, output: Path | str) -> list[JobSpec]:
        from ..backends import registry

        out, jobs = str(output).rstrip("/"), []
        for spec, name, size in self.models:
            for precision in self.precisions:
                able = [f for f in self.formats if precision in registry.get(f).precisions]
                groups: dict[str | None, list[str]] = {}
                for fmt in able:
                    groups.setdefault(registry.get(fmt).device, []).append(fmt)
                for device, formats in groups.items():
                    key = f"{name}{f'@{size}' if size else ''}/{precision}"
                    if device:
                        key += "-" + "+".join(formats)
                    jobs.append(JobSpec(
                        key=key, model=spec, formats=tuple(formats), precision=precision,
                        output=f"{out}/{key}", input_size=size, model_options=dict(self.model_options),
                        quant=dict(self.quant) if precision == "int8" else {},
                        parity=dict(self.parity), device=device or "cpu",
                        gpu_model=self.gpu_model if device else None))
        return jobs


def _problem(problems: list[str], err: ExporterError) -> None:
    problems.append(err.message + (f" (fix: {err.fix})" if err.fix else ""))


def _strings(data: dict, key: str, problems: list[str]) -> list[str]:
    value = data.get(key)
    if isinstance(value, str):
        value = [value]
    if not value or not all(isinstance(v, str) and v for v in value):
        problems.append(f"'{key}' must be a non-empty list of strings (got {value!r})")
        return []
    return list(dict.fromkeys(value))


def _expand_models(patterns: list[str], problems: list[str]) -> list[str]:
    from ..recipes import recipes_matching

    out: list[str] = []
    for pattern in patterns:
        if ":" not in pattern and any(c in pattern for c in "*?["):
            hits = recipes_matching(pattern)
            if not hits:
                problems.append(f"model pattern '{pattern}' matches no recipe (fix: `exporter list` "
                                "shows the recipe names)")
            out += hits
        else:
            out.append(pattern)
    return list(dict.fromkeys(out))


def _model_size(recipe_spec, reduced: bool, input_size: int | None) -> int | None:
    """The input size a model runs at: its reduced test size, ``input_size``, or native (None)."""
    size = recipe_spec.test_size if reduced and recipe_spec.test_size else input_size
    if size is not None and (recipe_spec.fixed_size or size == max(recipe_spec.size)):
        return None
    return size


def _models(data: dict, problems: list[str]) -> list[tuple[str, str, int | None]]:
    from ..builders import resolve_model

    reduced, size = bool(data.get("reduced", False)), data.get("input_size")
    out, seen = [], {}
    for spec in _expand_models(_strings(data, "models", problems), problems):
        try:
            recipe, _ = resolve_model(spec)
        except ExporterError as err:
            _problem(problems, err)
            continue
        at = _model_size(recipe.input, reduced, size)
        if at is not None:
            try:
                resolve_model(spec, input_size=at)
            except ExporterError as err:
                _problem(problems, err)
                continue
        name = recipe.name
        if name in seen:
            problems.append(f"models '{seen[name]}' and '{spec}' are both named '{name}'")
        seen[name] = spec
        out.append((spec, name, at))
    return out


def _formats_precisions(data: dict, problems: list[str]) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    from ..backends import registry

    formats = tuple(_strings(data, "formats", problems))
    precisions = tuple(_strings(data, "precisions", problems)) if "precisions" in data else ("fp32",)
    unknown = [f for f in formats if f not in registry.BACKENDS]
    if unknown:
        problems.append(f"unknown format(s) {unknown} (fix: use formats of the backend registry: "
                        f"{list(registry.BACKENDS)})")
    known = {p for b in registry.BACKENDS.values() for p in b.precisions}
    bad = [p for p in precisions if p not in known]
    if bad:
        problems.append(f"unknown precision(s) {bad} (fix: use {sorted(known)})")
    formats = tuple(f for f in formats if f in registry.BACKENDS)
    dropped = []
    for precision in (p for p in precisions if p in known):
        able = [f for f in formats if precision in registry.get(f).precisions]
        if formats and not able:
            producers = [f for f, b in registry.BACKENDS.items() if precision in b.precisions]
            problems.append(f"no format of {list(formats)} produces {precision} (fix: add one of "
                            f"{producers} to formats, or drop {precision})")
        dropped += [f"{f} x {precision}: {f} produces only {list(registry.get(f).precisions)}"
                    for f in formats if f not in able]
    return formats, precisions, dropped


def _table(data: dict, key: str, allowed, problems: list[str]) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        problems.append(f"[{key}] must be a table")
        return {}
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        problems.append(f"[{key}]: unknown key(s) {unknown} (fix: allowed keys: {sorted(allowed)})")
    return {k: v for k, v in table.items() if k in allowed}


def _plan_keys(text: str, table: str = "") -> str:
    """A quantize-option message with the plan's [calibration] keys for the command-line flags;
    with ``table`` each reads ``[calibration] key = VALUE``."""
    flags = {"--" + dest.replace("_", "-"): key for key, dest in CALIBRATION_KEYS.items()}
    flags.update({"--calibration-samples": "samples", "--calibration-method": "method",
                  "--calibration": "data", "--eval-images": "eval_images",
                  "--eval-samples": "eval_samples", "--target": "target"})
    for flag in sorted(flags, key=len, reverse=True):
        key = table + flags[flag]
        if table:  # a value after the flag is the key's value
            text = re.sub(re.escape(flag) + r" (?!(?:or|and|to|of|with|is)\b)(?=[\w.\"'])", key + " = ", text)
        text = re.sub(re.escape(flag) + r"(?![\w-])", key, text)
    return text


def job_in_plan_keys(result: dict[str, Any]) -> dict[str, Any]:
    """A failed job's error and fix in the plan file's keys, not the command line's flags (a job
    raises the errors ``exporter export`` does)."""
    said = {}
    for field_name in ("error", "fix"):
        text = result.get(field_name)
        if text:
            text = _plan_keys(text, "[calibration] ")
            text = re.sub(r"--precision (\w+)", r'precisions = ["\1"]', text)
            for key in MODEL_KEYS:
                text = re.sub(rf"--{key}(?![\w-])", f"the plan's {key}", text)
            said[field_name] = text
    return {**result, **said}


def parse_plan(data: dict[str, Any], source: str = "<plan>", cli: bool = False) -> Plan:
    """Validate a parsed plan mapping; every problem is listed in one :class:`PlanError` (by the
    plan's keys, or with ``cli`` - a --zoo command line - by its flags)."""
    problems: list[str] = []
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown} (fix: allowed keys: {sorted(TOP_KEYS)})")
    formats, precisions, dropped = _formats_precisions(data, problems)
    models = _models(data, problems)
    calibration = _table(data, "calibration", CALIBRATION_KEYS, problems)
    quant = {CALIBRATION_KEYS[k]: v for k, v in calibration.items()}
    if "int8" in precisions and not quant.get("calibration"):
        problems.append("int8 needs calibration data (fix: add [calibration] data = \"packaged\", an "
                        "image folder or an .npy of preprocessed tensors)")
    keys = (lambda text: text) if cli else _plan_keys
    problems += [f"[calibration] {keys(what)} (fix: {keys(fix)})" for what, fix, _ in quant_problems(quant)]
    parity = _table(data, "parity", PARITY_KEYS, problems)
    resources = _table(data, "resources", RESOURCE_KEYS, problems)
    if problems:
        raise PlanError(f"{source}: {len(problems)} problem(s) in the plan: " + "; ".join(problems),
                        fix="correct the plan file; nothing was run")
    return Plan(source=source, models=models, formats=formats, precisions=precisions,
                model_options={k: data[k] for k in MODEL_KEYS if k in data}, quant=quant,
                parity=parity, gpu_model=resources.get("gpu"),
                cpus_per_job=resources.get("cpus_per_job"), dropped=dropped, cli=cli)


def load_plan(path: str | Path, **overrides: Any) -> Plan:
    """Read and validate a plan file; ``overrides`` are top-level keys given on the command line."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise PlanError(f"cannot read the plan '{path}': {err.strerror or err}",
                        fix="pass the path of a plan TOML file (see README: exporter matrix)") from err
    except tomllib.TOMLDecodeError as err:
        raise PlanError(f"{path}: not valid TOML ({err})", fix="check the plan's syntax") from err
    for key, value in overrides.items():
        if key == "parity":
            data["parity"] = {**data.get("parity", {}), **value}
        elif value is not None:
            data[key] = value
    return parse_plan(data, str(path))


def with_threads(job: JobSpec, threads: int) -> JobSpec:
    """``job`` with its intra-op thread count, unless the plan fixed one."""
    return replace(job, threads=job.parity.get("threads") or threads)
