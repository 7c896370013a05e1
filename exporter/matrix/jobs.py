"""The one job function of the matrix: export (or re-use) one model x precision, prove parity.

:func:`run_job` takes only plain data (a :class:`~exporter.matrix.plan.JobSpec`) plus what the
driver shares - the calibration data and the eager reference (:mod:`.reference`: the parity inputs
and the eager outputs on them), each in memory (Ray resolves its object-store reference before the
call) or a :class:`SharedFile` the driver wrote once - writes the job's artifact directory through
the ordinary pipeline (``reuse.export_or_reuse``: atomic, hash-manifested; for a URL ``--output``
into a local scratch directory, then uploaded by :mod:`.storage`), runs ``parity.run_parity`` on
the job's artifacts against the shared eager outputs (the eager model is still timed here when
latency is on) and returns a plain dict: the parity report
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


def job_request(job: JobSpec, directory: Path | None = None):
    """The ExportRequest the job exports into ``directory`` (default: its output; a URL output's
    job writes a local scratch directory first); device formats start from the ONNX of the
    precision."""
    from ..backends import registry
    from ..pipeline import ExportRequest

    formats = tuple(f for f in job.formats if registry.get(f).exportable) or ("onnx",)
    options = dict(job.model_options)
    return ExportRequest(model=job.model, formats=formats, output=directory or Path(job.output),
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
    from ..artifacts import MANIFEST, changed_files, read_manifest_if_any
    from ..reuse import manifest_matches, missing_artifacts
    from . import storage

    if storage.is_url(job.output):  # the remote result and manifest, not the artifacts
        stored = storage.read_json(storage.join(job.output, RESULT_FILE))
        manifest = storage.read_json(storage.join(job.output, MANIFEST)) if stored else None
        request = job_request(job, Path("."))
        present = manifest is not None and storage.has_files(
            job.output, [a for a in manifest.get("artifacts", []) if a["file"] in _job_files(manifest, job)])
    else:
        directory = Path(job.output)
        try:
            stored = json.loads((directory / RESULT_FILE).read_text())
        except (OSError, ValueError):
            return None
        manifest = read_manifest_if_any(directory)
        request = job_request(job)
        present = manifest is not None and not missing_artifacts(manifest, directory, request) \
            and not any(changed_files(a, directory) for a in manifest.get("artifacts", [])
                        if a["file"] in _job_files(manifest, job))  # hashed: an edited file reruns
    if (not stored or not present or stored.get("fingerprint") != fingerprint(job)
            or stored.get("status") not in ("ok", "breach")
            or not manifest_matches(manifest, request)
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


def _shared_reference(job: JobSpec, reference: Any):
    """The driver's shared eager reference when it was computed for this very job, else None."""
    from .reference import reference_key

    shared = resolve(reference)
    return shared if shared is not None and shared.key == reference_key(job) else None


def _run(job: JobSpec, directory: Path, calibration: Any, reference: Any, say) -> dict[str, Any]:
    from ..artifacts import read_manifest, write_json_atomic
    from ..backends import registry
    from ..builders import resolve_model
    from ..latency import DEFAULT_ROUNDS, DEFAULT_RUNS, DEFAULT_WARMUP, set_threads
    from ..parity import run_parity
    from ..quantize import calibration as cal
    from ..reuse import export_or_reuse
    from .reference import parity_inputs

    threads = set_threads(job.threads)
    if calibration is not None:
        _, spec = resolve_model(job.model, input_size=job.input_size)
        cal.preload(cal.preload_key(job.quant["calibration"], spec, *calibration_args(job.quant)),
                    resolve(calibration))
    shared = _shared_reference(job, reference)
    p = job.parity
    latency = p.get("latency", True)
    _clear_stale_staging(directory)
    t0 = time.perf_counter()
    # the eager model is needed to time it, or to compute its outputs when none were shared
    ready = export_or_reuse(job_request(job, directory), verify=False, say=say,
                            reference=latency or shared is None)
    for fmt in job.formats:
        if not registry.get(fmt).exportable:
            BUILDERS[fmt](job, ready)
    export_s = time.perf_counter() - t0
    files = _job_files(read_manifest(directory), job)
    inputs = shared.inputs if shared else parity_inputs(job, ready.spec)
    report = run_parity(directory, ready.reference if latency or shared is None else None,
                        ready.spec, ready.recipe, inputs, job.device,
                        eager_outputs=shared.eager if shared else None,
                        artifacts=list(files), latency=latency,
                        batch_sizes=tuple(p.get("batch_sizes", (1, 8))),
                        warmup=p.get("warmup", DEFAULT_WARMUP), runs=p.get("runs", DEFAULT_RUNS),
                        rounds=p.get("rounds", DEFAULT_ROUNDS), threads=threads, progress=say)
    report.directory = job.output  # where the artifacts end up (a URL output: uploaded there)
    result = {"status": "ok" if report.ok else "breach", "note": ready.note,
              "eager_reference": "shared by the driver" if shared else "computed in the job",
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


def _in_place(job: JobSpec, calibration: Any, reference: Any) -> dict[str, Any]:
    """The job in its output directory; for a URL output, in a local scratch directory that is
    then uploaded (:mod:`exporter.matrix.storage`) and removed."""
    from ..scratch import make_scratch

    from ..artifacts import MANIFEST
    from . import storage

    say = lambda _msg: None  # noqa: E731
    if not storage.is_url(job.output):
        return _run(job, Path(job.output), calibration, reference, say)
    storage.filesystem(job.output)  # fsspec and the protocol are there before any work
    scratch = make_scratch("job")
    try:
        directory = scratch / job.key.replace("/", "-")
        result = _run(job, directory, calibration, reference, say)
        storage.upload(directory, job.output, last=(MANIFEST, RESULT_FILE))
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_job(job: JobSpec, calibration: Any = None, executor: str = "local",
            reference: Any = None) -> dict[str, Any]:
    """Run one job; returns plain data (see the module docstring). Raises only on a crash.
    ``calibration`` / ``reference``: the driver's shared calibration split and eager reference
    (:mod:`exporter.matrix.reference`), or None (the job reads / computes its own)."""
    start = time.perf_counter()
    head = {"key": job.key, "model": job.model, "precision": job.precision,
            "formats": list(job.formats), "output": job.output, "where": _where(executor),
            "threads": job.threads}
    try:
        body = _in_place(job, calibration, reference)
    except ExporterError as err:
        body = {"status": "error", "error": f"{type(err).__name__}: {err.message}",
                "fix": err.fix, "exit_code": err.exit_code}
    return {**head, **body, "seconds": round(time.perf_counter() - start, 3)}
