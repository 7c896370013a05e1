"""Parity results: one :class:`ArtifactResult` per artifact, the :class:`ParityReport` of a run,
and the tolerance check that turns metrics into breaches."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExporterError, InputError, ParityError
from ..latency import LatencyStats
from ..recipes import Tolerance

OUTPUT_NAME = "logits"

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
    status: str = "ok"  # ok | breach | error | skipped | unsupported | reference
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # input set -> metrics
    summary: dict[str, float] = field(default_factory=dict)  # worst case over the sets
    agreement_on: str = ""
    agreement_samples: int = 0  # how many inputs top-1 agreement was judged on
    agreement_judged_by_budget: str = ""  # why the INT8 budget, not this run, judges agreement
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # labelled set -> top1/top5
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)  # eager p50 / this p50
    speedup_stable: dict[int, bool] = field(default_factory=dict)  # False: not a result
    memory_mb: float | None = None  # resident memory added by loading and running it (CPU)
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
            "summary": self.summary, "agreement_on": self.agreement_on,
            "agreement_samples": self.agreement_samples,
            "agreement_judged_by_budget": self.agreement_judged_by_budget, "accuracy": self.accuracy,
            "latency": {str(b): s.to_dict() for b, s in self.latency.items()},
            "speedup_vs_eager": {str(b): v for b, v in self.speedup.items()},
            "speedup_stable": {str(b): v for b, v in self.speedup_stable.items()},
            "throughput_ips": {str(b): s.throughput for b, s in self.latency.items()},
            "memory_mb": self.memory_mb,
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
    label: str = ""  # the row name where one model has several reports (a matrix job: "lenet5/int8")
    tolerance_flags: list[str] = field(default_factory=list)  # ["--atol 1e-12"]: set on the command line

    def breaches(self) -> list[Breach]:
        return [b for a in self.artifacts for b in a.breaches]

    @property
    def ok(self) -> bool:
        return not self.breaches()

    def locate_command(self) -> str:
        return " ".join([f"exporter parity {self.model_spec} --artifacts {self.directory}",
                         *self.tolerance_flags, "--locate"])

    def error(self) -> "ParityError | ExporterError | None":
        """The ParityError describing every breach (None when all artifacts are within tolerance)."""
        breaches = self.breaches()
        if not breaches:
            return None
        files = sorted({b.file for b in breaches})
        detail = "; ".join(str(b) for b in breaches)
        if all(b.metric == "error" for b in breaches):  # nothing ran: a damaged file, not a tolerance
            return InputError(f"{self.model}: {len(files)} artifact(s) could not be loaded: {detail}",
                              fix=f"re-export them (exporter export {self.model_spec} with the options the "
                                  "export was made with); a file changed since the export is damaged")
        breaching = [a for a in self.artifacts if a.file in files]
        located = [loc for file, loc in self.locations.items() if file in files]
        if any(loc.get("first") for loc in located):
            fix = "see the first diverging layer above"
        elif located:
            fix = ("--locate ran and names no layer (its summary above says why): the divergence is in "
                   "the last layers or the output itself")
        elif any(a.format == "onnx" for a in breaching):
            fix = f"find the first diverging layer with `{self.locate_command()}`"
        else:  # --locate reads named intermediate tensors, which only the ONNX graphs have
            formats = sorted({a.format for a in breaching})
            has_onnx = any(a.format == "onnx" for a in self.artifacts)
            fix = (f"--locate reads ONNX graphs only, not {', '.join(formats)}: "
                   + ("" if has_onnx else "export the model with --format onnx too, then ")
                   + f"if the ONNX is within tolerance, the {'/'.join(formats)} conversion"
                   f"{'s are' if len(formats) > 1 else ' is'} where the outputs diverge")
        fix += (f"; re-export with `exporter export {self.model_spec}` and the options the export "
                "was made with; `--no-fail` reports without failing")
        overridden = bool(self.tolerance_flags)
        if overridden:
            fix = ("the tolerance is the one --atol/--rtol gave: loosen it or drop it for the recipe's; "
                   + fix)
        which = "the tolerance --atol/--rtol set" if overridden else "the recipe's tolerance"
        return ParityError(f"{self.model}: {len(files)} artifact(s) breach {which} vs eager PyTorch: "
                           f"{detail}", fix=fix)

    def fastest_within_tolerance(self) -> ArtifactResult | None:
        """The artifact to ship: the lowest p50 at the first timed batch size among those within
        their tolerance (None without latency or without such an artifact)."""
        if not self.batch_sizes:
            return None
        first = self.batch_sizes[0]
        timed = [a for a in self.artifacts if a.status == "ok" and first in a.latency]
        return min(timed, key=lambda a: a.latency[first].p50_ms, default=None)

    def ship_line(self) -> str:
        """One sentence naming the fastest artifact within tolerance, with its p50 and speed-up."""
        best = self.fastest_within_tolerance()
        if best is None:
            return "no artifact within tolerance was timed"
        first = self.batch_sizes[0]
        speed = best.speedup.get(first)
        if speed and not best.speedup_stable.get(first, True):
            said = ", speed-up vs eager unstable on this machine (not a result; see the note)"
        else:
            said = f", {speed:.2f}x eager" if speed else ""
        how = "" if self.pick_is_stable() else \
            " by unstable timings (a guess, not a result: rerun on a quiet machine)"
        return (f"fastest within tolerance (batch {first}){how}: {best.file} ({best.format} "
                f"{best.precision}, {best.runtime}) p50 {best.latency[first].p50_ms:.3g} ms" + said)

    def pick_is_stable(self) -> bool:
        """Every candidate's timing at the first batch size is stable: the pick compares results."""
        first = self.batch_sizes[0] if self.batch_sizes else None
        return all(a.latency[first].stable for a in self.artifacts
                   if a.status == "ok" and first in a.latency)

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
            "notes": self.notes, "locations": self.locations, "tolerance_flags": self.tolerance_flags,
            "fastest_within_tolerance": self._ship_record(),
        }

    def _ship_record(self) -> dict[str, Any] | None:
        best = self.fastest_within_tolerance()
        if best is None:
            return None
        first = self.batch_sizes[0]
        stable = best.speedup_stable.get(first, True)
        return {"file": best.file, "format": best.format, "precision": best.precision,
                "batch": first, "p50_ms": best.latency[first].p50_ms,
                "speedup_vs_eager": best.speedup.get(first) if stable else None,
                "speedup_stable": stable, "pick_stable": self.pick_is_stable()}


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
    if tol.max_abs is not None and not s["max_abs"] <= tol.max_abs:
        add("max_abs", s["max_abs"], tol.max_abs,
            f"max-abs error {s['max_abs']:.3g} exceeds --atol {tol.max_abs:.0e}")
    if s["cosine"] < tol.min_cosine or not np.isfinite(s["cosine"]):
        add("cosine", s["cosine"], tol.min_cosine,
            f"cosine similarity {s['cosine']:.6f} below the {result.precision} minimum {tol.min_cosine}")
    if s["top1_agreement"] < tol.min_top1_agreement:
        add("top1_agreement", s["top1_agreement"], tol.min_top1_agreement,
            f"top-1 agreement {s['top1_agreement']:.3f} on {result.agreement_on} below the "
            f"{result.precision} minimum {tol.min_top1_agreement}")
    return out


CONSISTENT_AT = 0.01  # a one-sided binomial test: below this, the data differ from the budget's


def defer_agreement_to_budget(result: ArtifactResult, details: dict[str, Any]) -> None:
    """An INT8 artifact whose accuracy budget was met on more held-out samples than this run
    judges top-1 agreement on, and whose agreement here is plausible at the budget's (at least
    ``CONSISTENT_AT`` likely at the lower end of the budget's 95% interval): the budget's
    judgment stands and the gate's agreement breach becomes a note (a few photos flip on
    near-ties). An agreement here that the budget's cannot explain (other data than it was
    judged on) stays a breach, as do the other checks (error, cosine, finite outputs)."""
    from ..quantize.judging import Measurement, binomial_tail

    measured = details.get("measured") or {}
    samples, n = int(measured.get("samples", 0)), result.agreement_samples
    gate = [b for b in result.breaches if b.metric == "top1_agreement"]
    if not (gate and n and details.get("budget_met") and details.get("measured_held_out")
            and samples > n):
        return
    agreed = round(result.summary["top1_agreement"] * n)
    chance = binomial_tail(agreed, n, measured["top1_agreement_ci95"][0])
    if chance < CONSISTENT_AT:
        return
    result.breaches = [b for b in result.breaches if b.metric != "top1_agreement"]
    result.agreement_judged_by_budget = (
        f"{gate[0].detail} ({agreed} of {n}, a {chance:.0%} chance at the budget's lower bound), "
        f"but the INT8 accuracy budget judged this artifact on {samples} held-out samples and "
        f"met it ({details.get('criterion')}: {Measurement(measured, True).describe()}); the "
        "judgment on more samples stands")
    result.notes.append(result.agreement_judged_by_budget)
    result.status = "breach" if result.breaches else "ok"
