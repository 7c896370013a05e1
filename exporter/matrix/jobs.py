"""The one job function of the matrix: export (or re-use) one model x precision, prove parity.

:func:`run_job` takes only plain data (a :class:`~exporter.matrix.plan.JobSpec`) plus the shared
calibration data (an in-memory :class:`CalibrationData` - Ray resolves its object-store reference
before the call - or a :class:`SharedFile` the driver wrote once), writes the job's artifact
directory through the ordinary pipeline (``reuse.export_or_reuse``: atomic, hash-manifested), runs
``parity.run_parity`` on the job's artifacts and returns a plain dict: the parity report
(``ParityReport.to_dict()``), the artifacts' sha256, timings, and where it ran. A typed
:class:`ExporterError` is a result (``status: error``, its exit code and fix), not an exception:
it is deterministic and not worth a retry; anything else propagates to the executor, which retries
the job once.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ExporterError, UsageError
from .plan import JobSpec

RESULT_FILE = "matrix-job.json"  # the job's result beside its manifest: a re-run skips the job


@dataclass(frozen=True)
class SharedFile:
    """A value the driver pickled once to a path every worker can read (the local executor)."""

    path: str

    @classmethod
    def write(cls, directory: Path, name: str, value: Any) -> "SharedFile":
        from ..artifacts import write_bytes_atomic

        path = Path(directory) / f"{name}.pkl"
        write_bytes_atomic(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        return cls(str(path))

    def load(self) -> Any:
        with open(self.path, "rb") as fh:
            return pickle.load(fh)


def resolve(value: Any) -> Any:
    """A shared value as the job uses it (a :class:`SharedFile` is read; anything else is as is)."""
    return value.load() if isinstance(value, SharedFile) else value


def fingerprint(job: JobSpec) -> str:
    """What decides a job's result (not where or with how many threads it runs)."""
    data = {k: v for k, v in asdict(job).items() if k not in ("threads", "output")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_request(job: JobSpec):
    """The ExportRequest the job exports (device formats start from the ONNX of the precision)."""
    from ..backends import registry
    from ..pipeline import ExportRequest

    formats = tuple(f for f in job.formats if registry.get(f).exportable) or ("onnx",)
    options = dict(job.model_options)
    return ExportRequest(model=job.model, formats=formats, output=Path(job.output),
                         input_size=job.input_size, precision=job.precision, quant=dict(job.quant),
                         verify=False, fail_on_breach=False, **options)


def calibration_args(quant: dict[str, Any]) -> tuple[int, int, int]:
    """(samples, held-out samples, seed) the quantize stage reads its calibration split with
    (its own defaults where the plan names none). Should they ever differ from the stage's own
    call, the shared split is simply not found and the job reads the data itself."""
    import inspect

    from ..quantize import quantize_stage

    defaults = {k: v.default for k, v in inspect.signature(quantize_stage).parameters.items()}
    holdout = quant.get("eval_samples", defaults["eval_samples"]) if quant.get("eval_data") is None \
        and quant.get("budget", True) else 0
    return (int(quant.get("samples", defaults["samples"])), int(holdout),
            int(quant.get("seed", defaults["seed"])))


def _job_files(manifest: dict[str, Any], job: JobSpec) -> dict[str, str]:
    """{file: sha256} of the job's own artifacts (its formats at its precision)."""
    return {a["file"]: a.get("sha256", "") for a in manifest.get("artifacts", [])
            if a["format"] in job.formats and a.get("precision", "fp32") == job.precision}


def cached_result(job: JobSpec) -> dict[str, Any] | None:
    """The stored result of an identical earlier run whose artifacts are still there unchanged
    (the manifest matches the request as ``reuse`` decides, nothing missing), else None."""
    from ..artifacts import read_manifest_if_any
    from ..reuse import manifest_matches, missing_artifacts

    directory = Path(job.output)
    try:
        stored = json.loads((directory / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    manifest = read_manifest_if_any(directory)
    request = job_request(job)
    if (manifest is None or stored.get("fingerprint") != fingerprint(job)
            or stored.get("status") not in ("ok", "breach")
            or not manifest_matches(manifest, request) or missing_artifacts(manifest, directory, request)
            or _job_files(manifest, job) != stored.get("artifacts")):
        return None
    return {**stored, "skipped": True}


def _clear_stale_staging(directory: Path) -> None:
    """Staging directories a killed earlier attempt of this job left beside its directory."""
    for stale in directory.parent.glob(f".{directory.name}.staging-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _build_tensorrt(job: JobSpec, ready) -> None:
    """The engine of the job's precision from the exported ONNX, recorded in its manifest."""
    from ..backends.tensorrt import build_engine, require_tensorrt
    from ..commands.build import DEFAULT_WORKSPACE_MIB, _record

    require_tensorrt(job.device)
    onnx = [a for a in ready.manifest["artifacts"] if a["format"] == "onnx"
            and a["precision"] == job.precision
            and (job.precision != "int8" or ".tensorrt." in a["file"])]
    if not onnx:
        raise UsageError(f"{job.key}: the export wrote no {job.precision} ONNX for TensorRT",
                         fix="for int8 use the tensorrt placement ([calibration] target = \"tensorrt\")")
    batch = job.model_options.get("batch")
    lo, hi = (batch, batch) if batch else (1, 32)
    entry = build_engine(ready.directory / onnx[-1]["file"], ready.directory, job.precision, lo, hi,
                         hi, DEFAULT_WORKSPACE_MIB << 20, None, ready.spec, device=job.device,
                         model_name=ready.recipe.name)
    _record(ready.directory, entry)


# formats written by a build step of their own rather than by `exporter export`
BUILDERS = {"tensorrt": _build_tensorrt}


def _run(job: JobSpec, calibration: Any, say) -> dict[str, Any]:
    from ..artifacts import read_manifest, write_json_atomic
    from ..backends import registry
    from ..builders import resolve_model
    from ..latency import DEFAULT_ROUNDS, DEFAULT_RUNS, DEFAULT_WARMUP, set_threads
    from ..parity import DEFAULT_RANDOM, DEFAULT_SAMPLES, build_inputs, run_parity
    from ..quantize import calibration as cal
    from ..reuse import export_or_reuse

    threads = set_threads(job.threads)
    if calibration is not None:
        _, spec = resolve_model(job.model, input_size=job.input_size)
        cal.preload(cal.preload_key(job.quant["calibration"], spec, *calibration_args(job.quant)),
                    resolve(calibration))
    directory = Path(job.output)
    _clear_stale_staging(directory)
    t0 = time.perf_counter()
    ready = export_or_reuse(job_request(job), verify=False, say=say)
    for fmt in job.formats:
        if not registry.get(fmt).exportable:
            BUILDERS[fmt](job, ready)
    export_s = time.perf_counter() - t0
    files = _job_files(read_manifest(directory), job)
    p = job.parity
    inputs = build_inputs(ready.spec, samples=p.get("samples", DEFAULT_SAMPLES),
                          random=p.get("random", DEFAULT_RANDOM),
                          seed=job.model_options.get("seed") or 0)
    report = run_parity(directory, ready.reference, ready.spec, ready.recipe, inputs, job.device,
                        artifacts=list(files), latency=p.get("latency", True),
                        batch_sizes=tuple(p.get("batch_sizes", (1, 8))),
                        warmup=p.get("warmup", DEFAULT_WARMUP), runs=p.get("runs", DEFAULT_RUNS),
                        rounds=p.get("rounds", DEFAULT_ROUNDS), threads=threads, progress=say)
    result = {"status": "ok" if report.ok else "breach", "note": ready.note,
              "report": json.loads(json.dumps(report.to_dict(), default=_plain)),
              "artifacts": files, "fingerprint": fingerprint(job),
              "seconds_export": round(export_s, 3),
              "seconds_parity": round(time.perf_counter() - t0 - export_s, 3)}
    write_json_atomic(directory / RESULT_FILE, {**result, "where": _where("")})
    return result


def _plain(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _where(executor: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "executor": executor}


def run_job(job: JobSpec, calibration: Any = None, executor: str = "local") -> dict[str, Any]:
    """Run one job; returns plain data (see the module docstring). Raises only on a crash."""
    start = time.perf_counter()
    head = {"key": job.key, "model": job.model, "precision": job.precision,
            "formats": list(job.formats), "output": job.output, "where": _where(executor),
            "threads": job.threads}
    try:
        body = _run(job, calibration, say=lambda _msg: None)
    except ExporterError as err:
        body = {"status": "error", "error": f"{type(err).__name__}: {err.message}",
                "fix": err.fix, "exit_code": err.exit_code}
    return {**head, **body, "seconds": round(time.perf_counter() - start, 3)}
