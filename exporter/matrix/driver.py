"""The driver: share the calibration data and the eager reference once (:mod:`.reference`), run
every job on an executor (skip what an earlier run already proved, retry a crashed attempt once,
keep going past failures), show progress.

Works the same on every executor (:mod:`exporter.matrix.executors`); Ctrl-C cancels the jobs
in flight and stops the workers before the KeyboardInterrupt goes on to the CLI (exit 130).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

from .jobs import cached_result, calibration_args
from .plan import JobSpec

MAX_ATTEMPTS = 2  # a crashed job is retried once


def share_calibration(jobs: Sequence[JobSpec], executor) -> dict[str, Any]:
    """Read each distinct calibration split once (per source, preprocessing, sample counts and
    seed: the calibration set and the held-out set the INT8 budget is judged on) and share it
    through the executor; returns {job key: shared reference}. A bad source fails here,
    before any job runs."""
    from ..builders import resolve_model
    from ..quantize import calibration as cal

    by_key: dict[tuple, Any] = {}
    refs: dict[str, Any] = {}
    for job in jobs:
        source = job.quant.get("calibration")
        if job.precision != "int8" or not source:
            continue
        _, spec = resolve_model(job.model, input_size=job.input_size)
        samples, holdout, seed = calibration_args(job.quant)
        key = cal.preload_key(source, spec, samples, holdout, seed)
        if key not in by_key:
            split = cal.in_memory(cal.load_split(source, spec, samples, holdout, seed=seed))
            by_key[key] = executor.share(f"calibration-{key[1][:12]}-{samples}-{holdout}-{seed}", split)
        refs[job.key] = by_key[key]
    return refs


class Progress:
    """One tqdm bar on a terminal's stderr: done / running / failed / skipped, rate and ETA; in a
    log (stderr not a terminal) a plain line per finished job instead of carriage-return frames."""

    def __init__(self, total: int, enabled: bool = True):
        from tqdm import tqdm

        self.counts = {"running": 0, "failed": 0, "skipped": 0, "retried": 0}
        self.total, self.done = total, 0
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="matrix", unit="job", file=sys.stderr,
                        dynamic_ncols=True, disable=not enabled or self.lines, mininterval=0.5)

    def update(self, finished: int = 0, **counts: int) -> None:
        self.counts.update(counts)
        self.bar.set_postfix(self.counts, refresh=False)
        self.bar.update(finished)
        self.done += finished
        if self.lines and finished:
            print(f"matrix: {self.done}/{self.total} job(s) done ("
                  + ", ".join(f"{k} {v}" for k, v in self.counts.items()) + ")", file=sys.stderr, flush=True)

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _crash(job: JobSpec, err: BaseException, attempts: int) -> dict[str, Any]:
    return {"key": job.key, "model": job.model, "precision": job.precision,
            "formats": list(job.formats), "output": job.output, "status": "error",
            "error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}",
            "fix": "rerun the plan (finished jobs are skipped); run this model alone with "
                   f"`exporter parity {job.model}` to see the failure", "exit_code": 1,
            "attempts": attempts, "where": {"executor": "?"}, "seconds": 0.0}


def run_jobs(jobs: Sequence[JobSpec], executor, *, progress: bool = True,
             say: Callable[[str], None] | None = None,
             share_reference: bool = True,
             reword: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every job's result dict, in plan order (see :func:`exporter.matrix.jobs.run_job`).
    ``share_reference=False``: every job computes its own eager reference; ``reword``: how a
    result's error and fix are said (a plan file's keys for the command line's flags)."""
    from .reference import SharedReferences

    bar = Progress(len(jobs), enabled=progress)
    say = say or bar.write
    results: dict[str, dict[str, Any]] = {}
    pending: dict[Any, tuple[JobSpec, int, float]] = {}
    try:
        todo = []
        for job in jobs:
            cached = cached_result(job)
            if cached is not None:
                results[job.key] = {**cached, "key": job.key, "attempts": 0}
            else:
                todo.append(job)
        skipped = len(results)
        bar.update(skipped, skipped=skipped)
        shared = share_calibration(todo, executor)
        references = SharedReferences(todo, executor, say, enabled=share_reference)
        for job in todo:  # a reference is computed when its first job is submitted
            pending[executor.submit(job, shared.get(job.key), references.get(job))] = (job, 1, time.time())
        failed = retried = 0
        while pending:
            bar.update(running=min(executor.slots, len(pending)))
            for handle, outcome in executor.wait(list(pending), timeout=1.0):
                job, attempt, _ = pending.pop(handle)
                if isinstance(outcome, BaseException):
                    if isinstance(outcome, KeyboardInterrupt):
                        raise outcome
                    if attempt < MAX_ATTEMPTS:
                        retried += 1
                        say(f"{job.key}: attempt {attempt} crashed ({type(outcome).__name__}); retrying")
                        pending[executor.submit(job, shared.get(job.key), references.get(job))] = \
                            (job, attempt + 1, time.time())
                        bar.update(retried=retried)
                        continue
                    outcome = _crash(job, outcome, attempt)
                outcome = reword(outcome) if reword else outcome
                results[job.key] = {**outcome, "attempts": attempt}
                if outcome["status"] == "error":
                    failed += 1
                    say(f"{job.key}: {outcome['error']}")
                bar.update(1, failed=failed, running=min(executor.slots, len(pending)))
    except BaseException:
        executor.close(cancel=True, pending=list(pending))
        bar.close()
        raise
    bar.close()
    executor.close()
    return [results[j.key] for j in jobs]
