"""Parity: eager PyTorch versus every artifact of a directory, on the same inputs.

``run_parity`` runs the eager reference and every artifact listed in the manifest (through
``backends.base.runner_for``) on the same preprocessed inputs, compares the logits
(``metrics.compare_outputs``), checks each artifact against ``recipe.tolerance(precision)``, and
times everything in one process (``latency.benchmark``). The result is a :class:`ParityReport`;
``report.breaches()`` lists what broke the tolerance and ``report.error()`` turns that into a
:class:`ParityError` naming the file, the output, the numbers and the command to run next.

Which numbers are checked:

* max-abs error relative to ``max|eager logits|`` (worst over every input set) against
  ``rel_max_abs`` - relative because random-init logits range from 1e-2 to 1e11;
* cosine similarity (worst sample over every input set) against ``min_cosine``;
* top-1 agreement on the real images (random tensors only when no image was given) against
  ``min_top1_agreement``; random tensors are out-of-distribution, their argmax is not a meaningful
  prediction, so they test the numbers, the images test the predictions.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from torch import nn

from .artifacts import read_manifest, sha256_file
from .data import ImageBatch, load_image_folder, packaged_crops, random_inputs
from .errors import BackendUnavailableError, ParityError
from .latency import (DEFAULT_ROUNDS, DEFAULT_RUNS, DEFAULT_WARMUP, LatencyStats, benchmark,
                      set_threads, speedup)
from .metrics import accuracy, compare_outputs
from .recipes import InputSpec, Recipe, Tolerance

OUTPUT_NAME = "logits"
DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SAMPLES = 16
DEFAULT_RANDOM = 8
MAX_CHUNK = 16  # images per forward when computing outputs (bounds memory at native sizes)


# --------------------------------------------------------------------------------------- inputs
@dataclass
class InputSet:
    """One named batch of preprocessed inputs every runner sees identically."""

    name: str  # "images", "photos", "random"
    array: np.ndarray  # NCHW float32, already through data.py's preprocessing
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    real: bool = True  # natural images (agreement is judged on these) vs random tensors
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "samples": len(self), "source": self.source, "real": self.real,
                "labelled": self.labels is not None, "classes": len(self.class_names),
                "shape": list(self.array.shape[1:]), "notes": list(self.notes)}

    @classmethod
    def from_batch(cls, name: str, batch: ImageBatch) -> "InputSet":
        notes = [f"{len(batch.skipped)} file(s) skipped"] if batch.skipped else []
        notes += [f"{count} converted {what}" for what, count in batch.conversions.items()]
        return cls(name, batch.array, batch.labels, list(batch.class_names), batch.source, True, notes)


def build_inputs(spec: InputSpec, *, images: str | Path | None = None,
                 samples: int = DEFAULT_SAMPLES, random: int = DEFAULT_RANDOM,
                 seed: int = 0) -> list[InputSet]:
    """The parity inputs: an image folder (class subfolders give labels), else crops of the
    photos shipped by installed packages, plus ``random`` standard-normal tensors.

    Everything goes through :mod:`exporter.data`, the preprocessing every runner and the INT8
    calibration share.
    """
    sets: list[InputSet] = []
    if images is not None:
        sets.append(InputSet.from_batch("images", load_image_folder(images, spec, limit=samples or None)))
    elif samples:
        sets.append(InputSet.from_batch("photos", packaged_crops(spec, samples, seed=seed + 1000)))
    if random:
        sets.append(InputSet("random", random_inputs(spec, random, seed=seed), source=f"N(0,1) seed {seed}",
                             real=False))
    return sets


def _as_input_sets(inputs: Any) -> list[InputSet]:
    if isinstance(inputs, InputSet):
        return [inputs]
    if isinstance(inputs, ImageBatch):
        return [InputSet.from_batch("images", inputs)]
    if isinstance(inputs, np.ndarray):
        return [InputSet("inputs", inputs.astype(np.float32), source="array", real=True)]
    sets = [s if isinstance(s, InputSet) else _as_input_sets(s)[0] for s in inputs]
    if not sets:
        raise ValueError("run_parity needs at least one input set")
    return sets


def run_chunked(runner: Callable[[np.ndarray], np.ndarray], array: np.ndarray,
                batch: int | None = None) -> np.ndarray:
    """Run ``array`` through ``runner`` in chunks; a fixed ``batch`` pads the last chunk."""
    if batch:
        outs = []
        for i in range(0, len(array), batch):
            chunk = array[i:i + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            outs.append(np.asarray(runner(chunk))[:n])
        return np.concatenate(outs)
    step = MAX_CHUNK
    return np.concatenate([np.asarray(runner(array[i:i + step])) for i in range(0, len(array), step)])


def per_sample_rel_error(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """max |ref - cand| of each sample divided by max |ref| of the set (rel_max_abs per sample)."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    scale = float(np.max(np.abs(ref))) or 1.0
    return np.max(np.abs(ref - cand), axis=1) / scale


# --------------------------------------------------------------------------------------- results
@dataclass
class Breach:
    """One artifact metric outside its recipe's tolerance."""

    file: str
    output: str
    precision: str
    metric: str  # rel_max_abs | cosine | top1_agreement | error
    value: float
    limit: float
    detail: str

    def __str__(self) -> str:
        return f"{self.file} output '{self.output}': {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "output": self.output, "precision": self.precision,
                "metric": self.metric, "value": self.value, "limit": self.limit,
                "detail": self.detail}


@dataclass
class ArtifactResult:
    """Parity and latency of one artifact (or of the eager reference itself)."""

    file: str
    format: str
    precision: str
    name: str = ""
    runtime: str = ""
    provider: str = ""
    output_name: str = OUTPUT_NAME
    threads: int | None = None
    status: str = "ok"  # ok | breach | error | skipped | reference
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # input set -> metrics
    summary: dict[str, float] = field(default_factory=dict)  # worst case over the sets
    agreement_on: str = ""
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # labelled set -> top1/top5
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)  # eager p50 / this p50
    tolerance: Tolerance | None = None
    breaches: list[Breach] = field(default_factory=list)
    sample_errors: list[float] = field(default_factory=list)  # per-sample rel max-abs
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return self.file or self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "format": self.format, "precision": self.precision, "name": self.name,
            "runtime": self.runtime, "provider": self.provider, "output": self.output_name,
            "threads": self.threads, "status": self.status, "metrics": self.metrics,
            "summary": self.summary, "agreement_on": self.agreement_on, "accuracy": self.accuracy,
            "latency": {str(b): s.to_dict() for b, s in self.latency.items()},
            "speedup_vs_eager": {str(b): v for b, v in self.speedup.items()},
            "tolerance": None if self.tolerance is None else vars(self.tolerance),
            "breaches": [b.to_dict() for b in self.breaches],
            "sample_errors": [float(f"{v:.4g}") for v in self.sample_errors],
            "notes": self.notes, "error": self.error,
        }


@dataclass
class ParityReport:
    """Everything one parity run measured for one model directory."""

    model: str
    model_spec: str
    directory: Path
    device: str  # cpu | cuda[:i]
    device_label: str
    measured_on: str  # a sentence: where the numbers come from
    threads: int
    inputs: list[dict[str, Any]]
    eager: ArtifactResult
    artifacts: list[ArtifactResult]
    batch_sizes: tuple[int, ...] = ()
    warmup: int = 0
    runs: int = 0
    rounds: int = 0
    machine: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    input_spec: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    locations: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> locate result

    def breaches(self) -> list[Breach]:
        return [b for a in self.artifacts for b in a.breaches]

    @property
    def ok(self) -> bool:
        return not self.breaches()

    def locate_command(self) -> str:
        return f"exporter parity {self.model_spec} --artifacts {self.directory} --locate"

    def error(self) -> ParityError | None:
        """The ParityError describing every breach (None when all artifacts are within tolerance)."""
        breaches = self.breaches()
        if not breaches:
            return None
        files = sorted({b.file for b in breaches})
        detail = "; ".join(str(b) for b in breaches)
        fix = (f"find the first diverging layer with `{self.locate_command()}`"
               if not self.locations else "see the first diverging layer above")
        fix += (f"; re-export with `exporter export {self.model_spec}`; `--no-fail` reports "
                "without failing")
        return ParityError(f"{self.model}: {len(files)} artifact(s) breach the recipe's tolerance "
                           f"vs eager PyTorch: {detail}", fix=fix)

    def raise_for_breaches(self) -> None:
        err = self.error()
        if err is not None:
            raise err

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "model_spec": self.model_spec, "directory": str(self.directory),
            "device": self.device, "device_label": self.device_label,
            "measured_on": self.measured_on, "threads": self.threads, "inputs": self.inputs,
            "input_spec": self.input_spec, "weights": self.weights,
            "latency_method": {"batch_sizes": list(self.batch_sizes), "warmup": self.warmup,
                               "runs": self.runs, "rounds": self.rounds},
            "machine": self.machine, "ok": self.ok,
            "breaches": [b.to_dict() for b in self.breaches()],
            "eager": self.eager.to_dict(), "artifacts": [a.to_dict() for a in self.artifacts],
            "notes": self.notes, "locations": self.locations,
        }


# --------------------------------------------------------------------------------------- checks
def check_tolerance(result: ArtifactResult, tol: Tolerance) -> list[Breach]:
    """Breaches of ``tol`` by the summary metrics of one artifact."""
    s, out = result.summary, []

    def add(metric: str, value: float, limit: float, detail: str) -> None:
        out.append(Breach(result.file, result.output_name, result.precision, metric, value, limit,
                          detail))

    if s["rel_max_abs"] > tol.rel_max_abs or not np.isfinite(s["rel_max_abs"]):
        add("rel_max_abs", s["rel_max_abs"], tol.rel_max_abs,
            f"max-abs error {s['max_abs']:.3g} = {s['rel_max_abs']:.2e} of max|eager| exceeds the "
            f"{result.precision} tolerance {tol.rel_max_abs:.0e}")
    if s["cosine"] < tol.min_cosine or not np.isfinite(s["cosine"]):
        add("cosine", s["cosine"], tol.min_cosine,
            f"cosine similarity {s['cosine']:.6f} below the {result.precision} minimum {tol.min_cosine}")
    if s["top1_agreement"] < tol.min_top1_agreement:
        add("top1_agreement", s["top1_agreement"], tol.min_top1_agreement,
            f"top-1 agreement {s['top1_agreement']:.3f} on {result.agreement_on} below the "
            f"{result.precision} minimum {tol.min_top1_agreement}")
    return out


def _summarize(sets: Sequence[InputSet], refs: dict[str, np.ndarray],
               outs: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, float]], dict[str, float], str]:
    per_set = {s.name: compare_outputs(refs[s.name], outs[s.name]) for s in sets}
    agree_sets = [s for s in sets if s.real] or list(sets)
    ref = np.concatenate([refs[s.name] for s in agree_sets])
    cand = np.concatenate([outs[s.name] for s in agree_sets])
    agree = compare_outputs(ref, cand)
    values = list(per_set.values())
    summary = {
        "max_abs": max(m["max_abs"] for m in values),
        "rel_max_abs": max(m["rel_max_abs"] for m in values),
        "mean_abs": max(m["mean_abs"] for m in values),
        "cosine": min(m["cosine"] for m in values),
        "top1_agreement": agree["top1_agreement"],
        "top5_agreement": agree["top5_agreement"],
    }
    on = " + ".join(f"{len(s)} {s.name}" for s in agree_sets)
    return per_set, summary, on


def _accuracy(sets: Sequence[InputSet], outs: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {s.name: accuracy(outs[s.name], s.labels) for s in sets if s.labels is not None}


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Machine and versions the numbers were measured with."""
    import torch

    from .artifacts import tool_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "cuda_available": torch.cuda.is_available(),
            "versions": tool_versions()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):  # other jobs on the machine inflate absolute times
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _measured_on(device: str, label: str, threads: int) -> str:
    import torch

    if device.startswith("cuda"):
        return (f"CUDA: {label}; PyTorch timed with CUDA events (synchronized, warm-up excluded), "
                f"ONNX Runtime with the CUDA execution provider where installed; {threads} CPU threads")
    why = "no CUDA device found" if not torch.cuda.is_available() else "CPU requested"
    return f"CPU ({why}): measured on CPU with {threads} intra-op threads for every runtime"


# --------------------------------------------------------------------------------------- runner
def _artifact_runner(entry: dict[str, Any], directory: Path, device: str):
    from .backends.base import runner_for

    return runner_for(entry, directory, device)


def run_parity(directory: str | Path, reference: nn.Module, spec: InputSpec, recipe: Recipe,
               inputs: Any, device: str = "cpu", *, manifest: dict[str, Any] | None = None,
               artifacts: Iterable[str] | None = None,
               runners: dict[str, Any] | None = None,
               latency: bool = True, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
               warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, rounds: int = DEFAULT_ROUNDS,
               threads: int | None = None, progress: Callable[[str], None] | None = None,
               ) -> ParityReport:
    """Eager ``reference`` versus every artifact of ``directory`` on ``inputs``.

    ``inputs``: a list of :class:`InputSet` (see :func:`build_inputs`), an ``ImageBatch`` or an
    NCHW array. ``artifacts``: only these files (or formats). ``runners``: ``{file: runner}`` to
    use instead of the manifest's backend for that file (a runner for a file absent from the
    manifest is run too, with format ``custom``) - the plug-in point for other runtimes, and how
    the tests feed an artifact wrongly preprocessed inputs.
    """
    from .backends.eager import EagerRunner, device_label, resolve_device

    directory = Path(directory)
    say = progress or (lambda _msg: None)
    device = resolve_device(device)
    threads = set_threads(threads)
    manifest = manifest if manifest is not None else read_manifest(directory)
    sets = _as_input_sets(inputs)
    fixed_batch = (manifest.get("input") or {}).get("batch")
    if fixed_batch:
        batch_sizes = (int(fixed_batch),)
    notes: list[str] = []

    say("eager reference")
    eager = EagerRunner(reference, device)
    refs = {s.name: run_chunked(eager, s.array, fixed_batch) for s in sets}
    eager_result = ArtifactResult(file="", format="pytorch", precision="fp32", name="eager",
                                  runtime=eager.runtime, provider=eager.provider,
                                  threads=threads, status="reference", notes=list(eager.notes),
                                  accuracy=_accuracy(sets, refs))

    real = [refs[s.name] for s in sets if s.real and len(s) > 1]
    if real and len(np.unique(np.argmax(np.concatenate(real), axis=1))) == 1:
        notes.append("eager predicts the same class for every image (random weights?): top-1 "
                     "agreement says little here; the error and cosine checks still hold")

    entries = list(manifest.get("artifacts", []))
    wanted = set(artifacts) if artifacts is not None else None
    if wanted is not None:
        entries = [e for e in entries if e["file"] in wanted or e["format"] in wanted]
    extra = dict(runners or {})
    for file in extra:
        if not any(e["file"] == file for e in entries):
            entries.append({"file": file, "format": "custom", "precision": getattr(extra[file], "precision", "fp32")})

    live: dict[str, Any] = {"eager": eager}
    results: list[ArtifactResult] = []
    for entry in entries:
        file = entry["file"]
        result = ArtifactResult(file=file, format=entry["format"], precision=entry.get("precision", "fp32"),
                                tolerance=recipe.tolerance(entry.get("precision", "fp32")))
        results.append(result)
        path = directory / file
        if entry.get("sha256") and path.exists() and file not in extra:
            if sha256_file(path) != entry["sha256"]:
                result.notes.append("file differs from the manifest (sha256 changed since export)")
        say(f"{file}")
        if file not in extra and entry["format"] == "tensorrt" and not device.startswith("cuda"):
            result.status = "skipped"
            result.error = "TensorRT engines run on a CUDA GPU; this run is on CPU"
            result.notes.append(f"skipped: {result.error}")
            continue
        try:
            runner = extra[file] if file in extra else _artifact_runner(entry, directory, device)
        except (BackendUnavailableError, ImportError) as err:
            result.status = "skipped"
            result.error = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
            result.notes.append(f"skipped: {result.error}")
            continue
        except Exception as err:  # noqa: BLE001 - a broken artifact is a finding, not a crash
            result.status, result.error = "error", f"{type(err).__name__}: {err}"
            result.breaches.append(Breach(file, OUTPUT_NAME, result.precision, "error", float("nan"),
                                          float("nan"), f"could not be loaded: {result.error}"))
            continue
        result.name = getattr(runner, "name", entry["format"])
        result.runtime = getattr(runner, "runtime", "")
        result.provider = getattr(runner, "provider", "")
        result.output_name = getattr(runner, "output_name", OUTPUT_NAME)
        result.threads = getattr(runner, "threads", threads)
        result.notes.extend(getattr(runner, "notes", []))
        runner_batch = fixed_batch or getattr(runner, "fixed_batch", None)
        try:
            outs = {s.name: run_chunked(runner, s.array, runner_batch) for s in sets}
            result.metrics, result.summary, result.agreement_on = _summarize(sets, refs, outs)
        except Exception as err:  # noqa: BLE001
            result.status, result.error = "error", f"{type(err).__name__}: {err}"
            result.breaches.append(Breach(file, result.output_name, result.precision, "error",
                                          float("nan"), float("nan"), f"failed to run: {result.error}"))
            continue
        result.accuracy = _accuracy(sets, outs)
        result.sample_errors = [float(v) for s in sets
                                for v in per_sample_rel_error(refs[s.name], outs[s.name])]
        result.breaches.extend(check_tolerance(result, result.tolerance))
        result.status = "breach" if result.breaches else "ok"
        live[file] = runner

    if latency and batch_sizes:
        say("latency")
        biggest = max(batch_sizes)
        pool = random_inputs(spec, biggest, seed=12345)
        batches = {int(b): pool[:b] for b in batch_sizes}

        def failed(key: str, size: int, err: Exception) -> None:
            target = eager_result if key == "eager" else next(r for r in results if r.file == key)
            target.notes.append(f"latency at batch {size} failed: {type(err).__name__}: {err}")

        timings = benchmark(live, batches, warmup=warmup, runs=runs, rounds=rounds, threads=threads,
                            on_error=failed)
        eager_result.latency = timings.get("eager", {})
        for result in results:
            result.latency = timings.get(result.file, {})
            for size, stats in result.latency.items():
                if size in eager_result.latency:
                    result.speedup[size] = speedup(eager_result.latency[size], stats)

    model_spec = manifest.get("model_spec") or (manifest.get("model_options") or {}).get("model") \
        or manifest.get("model") or recipe.name
    return ParityReport(
        model=manifest.get("model", recipe.name), model_spec=model_spec, directory=directory,
        device=device, device_label=device_label(device),
        measured_on=_measured_on(device, device_label(device), threads), threads=threads,
        inputs=[s.describe() for s in sets], eager=eager_result, artifacts=results,
        batch_sizes=tuple(int(b) for b in batch_sizes) if latency else (), warmup=warmup,
        runs=runs, rounds=rounds, machine=machine_info(device),
        weights=dict(manifest.get("weights") or {}), input_spec=dict(manifest.get("input") or spec.to_dict()),
        notes=notes,
    )
