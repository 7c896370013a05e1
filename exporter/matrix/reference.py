"""The eager reference of a matrix, computed once and shared: per distinct eager model (model
spec and model options: weights, checkpoint, seed, input size, batch, ...) and parity inputs
(samples, random tensors, their seed), the driver builds the eager model once, runs it over the
parity inputs once, and shares the inputs with the outputs (:class:`SharedReference`) through
``executor.share`` - a pickled file on local workers, Ray's object store on Ray. Every job of that
model (fp32, int8, ...) compares its artifacts against those outputs instead of recomputing them.

What stays in the job: latency. Timing is a measurement of the job's own process, so a job that
times (latency on) still runs its eager model - the one its export builds - for the timings;
with ``--no-latency`` a job that re-uses an exported directory does not build the eager model.

Shared only where it saves work: a reference two or more jobs use (one job computes its own,
in parallel with the others), and CPU jobs only (a GPU job's eager reference runs on the job's
GPU, which the driver may not have).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import ExporterError
from .jobs import job_request
from .plan import JobSpec


@dataclass
class SharedReference:
    """The parity inputs of one eager model and its outputs on them (plain data)."""

    key: str  # reference_key() of the jobs it serves
    inputs: list  # [parity.InputSet]
    eager: Any  # parity.EagerOutputs


def reference_key(job: JobSpec) -> str | None:
    """What decides the eager outputs a job compares against; None for a device (GPU) job."""
    from ..defaults import DEFAULT_RANDOM, DEFAULT_SAMPLES, MODEL_OPTION_KEYS
    from ..pipeline import json_value

    if job.needs_gpu:
        return None
    request = job_request(job)
    data = {k: json_value(getattr(request, k)) for k in MODEL_OPTION_KEYS}
    data.update(samples=job.parity.get("samples", DEFAULT_SAMPLES),
                random=job.parity.get("random", DEFAULT_RANDOM), input_seed=input_seed(job),
                device=job.device)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_seed(job: JobSpec) -> int:
    return int(job.model_options.get("seed") or 0)


def parity_inputs(job: JobSpec, spec) -> list:
    """The job's parity inputs (photo crops + random tensors), as ``exporter parity`` builds them."""
    from ..parity import DEFAULT_RANDOM, DEFAULT_SAMPLES, build_inputs

    return build_inputs(spec, samples=job.parity.get("samples", DEFAULT_SAMPLES),
                        random=job.parity.get("random", DEFAULT_RANDOM), seed=input_seed(job))


def compute_reference(job: JobSpec) -> SharedReference:
    """Build ``job``'s eager model (prepared, unfolded: what parity compares against) and run it
    over the job's parity inputs, with the job's thread count."""
    from ..backends.eager import EagerRunner
    from ..latency import set_threads
    from ..parity import EagerOutputs
    from ..pipeline import load_stage
    from ..prepare import prepare_for_deploy

    set_threads(job.threads)
    recipe, spec, model, _ = load_stage(job_request(job))
    reference, _ = prepare_for_deploy(model, recipe, fold=False)
    inputs = parity_inputs(job, spec)
    eager = EagerOutputs.of(EagerRunner(reference, job.device), inputs,
                            job.model_options.get("batch"))
    return SharedReference(reference_key(job), inputs, eager)


class SharedReferences:
    """The driver's references: each computed on the first job that needs it, shared once."""

    def __init__(self, jobs: Sequence[JobSpec], executor, say: Callable[[str], None],
                 enabled: bool = True):
        self.executor, self.say = executor, say
        self.users: dict[str, list[str]] = {}
        for job in jobs:
            key = reference_key(job) if enabled else None
            if key is not None:
                self.users.setdefault(key, []).append(job.key)
        self.refs: dict[str, Any] = {}
        self.computed: Counter[str] = Counter()

    def get(self, job: JobSpec) -> Any:
        """The shared reference for ``job``, or None (the job computes its own)."""
        key = reference_key(job) if self.users else None
        users = self.users.get(key, []) if key else []
        if len(users) < 2:
            return None
        if key not in self.refs:
            try:
                value = compute_reference(job)
            except ExporterError:
                self.refs[key] = None  # each job reports the error itself
                return None
            self.computed[key] += 1
            self.refs[key] = self.executor.share(f"reference-{key}", value)
            self.say(f"eager reference {job.model} [{key}]: computed once in the driver, shared "
                     f"by {len(users)} job(s) ({', '.join(users)})")
        return self.refs[key]
