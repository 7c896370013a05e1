"""Two executors behind one small interface: a local process pool and Ray tasks.

An executor runs :func:`~exporter.matrix.jobs.run_job` - the same function on both - and knows
only how to share a value with every job (``share``: the calibration data and the eager reference),
start a job (``submit``), collect finished
ones (``wait``: the job's result, or the exception of a crashed attempt), check that the jobs'
resources exist (``check``) and stop (``close``). Retries, skips and progress live in the driver
(:mod:`exporter.matrix.driver`), once for both.

* :class:`LocalExecutor` - ``--jobs N`` spawned worker processes on this machine, each job's
  intra-op threads = usable cores // N; shared values are pickled once under ``<output>/.matrix``
  (a URL ``--output``: a local scratch directory, removed on close).
* :class:`RayExecutor` - ``--ray auto|ADDRESS``: one Ray task per job with its resources
  (``num_cpus``; ``num_gpus=1`` and the plan's GPU model as ``accelerator_type`` for device jobs,
  ``num_gpus=0`` otherwise); shared values go to Ray's object store once (``ray.put``). Ray is
  imported only here, lazily (``pip install 'zoo-exporter[ray]'``).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import BackendUnavailableError
from .jobs import SharedFile, run_job
from .plan import JobSpec

RAY_HINT = "pip install 'zoo-exporter[ray]'"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _gpu_missing(jobs: Sequence[JobSpec], where: str) -> BackendUnavailableError:
    names = [j.key for j in jobs if j.needs_gpu]
    return BackendUnavailableError(
        f"{len(names)} job(s) need a GPU ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}) "
        f"and {where} has none", fix="run the plan on a cluster with GPUs (--ray ADDRESS), or drop "
                                     "the GPU formats from the plan")


class _Stopped(SystemExit):
    """SIGTERM in a worker: unwinds the running job (its staging directory is removed)."""


def _stop(signum, _frame) -> None:
    raise _Stopped(128 + signum)


def _run_job_in_worker(*args: Any) -> dict[str, Any]:
    """:func:`run_job`, and the worker's end once a SIGTERM has unwound it: the pool would send
    the SystemExit back as the job's result and start the next queued job."""
    try:
        return run_job(*args)
    except _Stopped as stop:
        os._exit(stop.code)


def _init_worker(threads: int) -> None:
    """Thread variables before torch / onnxruntime load; Ctrl-C is the driver's to handle (it
    terminates the workers), SIGTERM unwinds the running job."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)


class LocalExecutor:
    """``jobs`` spawned worker processes; a pool broken by a killed worker is started again."""

    name = "local"

    def __init__(self, jobs: int | None, output: Path | str):
        from .storage import is_url

        self.slots = max(1, jobs or usable_cpus())
        self.threads = max(1, usable_cpus() // self.slots)
        self._scratch = None  # a URL output: the shared values live in a local scratch directory
        if is_url(output):
            from ..scratch import make_scratch

            self._scratch = self.shared_dir = make_scratch("matrix")
        else:
            self.shared_dir = Path(output) / ".matrix"
        self._shared: list[Path] = []  # files share() wrote: removed by close()
        self._pool: cf.ProcessPoolExecutor | None = None

    def _start(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                self.slots, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self.threads,))
        return self._pool

    def check(self, jobs: Sequence[JobSpec]) -> None:
        if any(j.needs_gpu for j in jobs):
            import torch

            if not torch.cuda.is_available():
                raise _gpu_missing(jobs, "this machine")

    def share(self, name: str, value: Any) -> SharedFile:
        shared = SharedFile.write(self.shared_dir, name, value)
        self._shared.append(Path(shared.path))
        return shared

    def submit(self, job: JobSpec, calibration: Any = None, reference: Any = None) -> cf.Future:
        try:
            return self._start().submit(_run_job_in_worker, job, calibration, self.name, reference)
        except cf.process.BrokenProcessPool:  # a worker died: its pool is gone, start a new one
            self._pool = None
            return self._start().submit(_run_job_in_worker, job, calibration, self.name, reference)

    def wait(self, handles: Iterable[cf.Future], timeout: float) -> list[tuple[cf.Future, Any]]:
        done, _ = cf.wait(list(handles), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out = []
        for future in done:
            try:
                out.append((future, future.result()))
            except BaseException as err:  # noqa: BLE001 - a crashed attempt; the driver retries
                out.append((future, err))
        return out

    def close(self, cancel: bool = False, pending: Iterable[Any] = ()) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            self._remove_shared()
            return
        if cancel:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()  # our own workers only; their staging directories die with them
        pool.shutdown(wait=True, cancel_futures=cancel)
        self.close()  # the scratch directory, once no worker reads it


    def _remove_shared(self) -> None:
        """The pickles share() wrote (no worker reads them any more), and their folder once empty:
        the output keeps the artifacts and report only."""
        import shutil

        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            return
        for path in self._shared:
            path.unlink(missing_ok=True)
        self._shared.clear()
        try:
            self.shared_dir.rmdir()
        except OSError:  # absent, or holds files this run did not write
            pass


class RayExecutor:
    """One Ray task per job on a running cluster (``ADDRESS``) or, with ``auto``, the cluster this
    machine is part of, else a local Ray instance started for the run."""

    name = "ray"

    def __init__(self, address: str, cpus_per_job: int | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as err:
            raise BackendUnavailableError(f"--ray needs the 'ray' package, which is not installed "
                                          f"({err})", fix=RAY_HINT) from err
        self.ray = ray
        self.started = False
        options = {"include_dashboard": False, "log_to_driver": False,
                   "configure_logging": False}
        if not ray.is_initialized():
            try:
                ray.init(address=address, **options)
            except ConnectionError:
                if address != "auto":
                    raise BackendUnavailableError(
                        f"cannot reach the Ray cluster at {address}",
                        fix="start it (`ray start --head`) or pass its address, e.g. ray://head:10001")
                ray.init(num_cpus=num_cpus, **options)  # no cluster here: a local one for this run
            self.started = True
        self.cpus_per_job = max(1, int(cpus_per_job or 1))
        self.threads = self.cpus_per_job
        self.resources = ray.cluster_resources()
        self.slots = max(1, int(self.resources.get("CPU", 1) // self.cpus_per_job))
        self._task = ray.remote(run_job)

    def check(self, jobs: Sequence[JobSpec]) -> None:
        if any(j.needs_gpu for j in jobs) and not self.resources.get("GPU"):
            raise _gpu_missing(jobs, "the Ray cluster")
        for model in {j.gpu_model for j in jobs if j.needs_gpu and j.gpu_model}:
            if f"accelerator_type:{model}" not in self.resources:
                have = sorted(k.split(":", 1)[1] for k in self.resources if k.startswith("accelerator_type:"))
                raise BackendUnavailableError(
                    f"the plan asks for GPU model {model}; the Ray cluster has {have or 'none'}",
                    fix="set [resources] gpu to one of the cluster's accelerator types, or add such nodes")

    def share(self, name: str, value: Any) -> Any:
        return self.ray.put(value)

    def submit(self, job: JobSpec, calibration: Any = None, reference: Any = None) -> Any:
        options: dict[str, Any] = {"num_cpus": self.cpus_per_job, "max_retries": 0,
                                   "num_gpus": 1 if job.needs_gpu else 0, "name": job.key}
        if job.needs_gpu and job.gpu_model:
            options["accelerator_type"] = job.gpu_model
        return self._task.options(**options).remote(job, calibration, self.name, reference)

    def wait(self, handles: Iterable[Any], timeout: float) -> list[tuple[Any, Any]]:
        ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except BaseException as err:  # noqa: BLE001 - worker died, task error: the driver retries
                out.append((ref, err))
        return out

    def close(self, cancel: bool = False, pending: Iterable[Any] = ()) -> None:
        if cancel:
            for ref in pending:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished
                    pass
        if self.started:
            self.ray.shutdown()


def make_executor(ray: str | None, jobs: int | None, output: Path | str,
                  cpus_per_job: int | None = None):
    """``--ray auto|ADDRESS`` -> :class:`RayExecutor`; otherwise :class:`LocalExecutor`."""
    if ray:
        return RayExecutor(ray, cpus_per_job, num_cpus=jobs)
    return LocalExecutor(jobs, output)


def describe(executor) -> str:
    return (f"{executor.name}: {executor.slots} job(s) at a time, {executor.threads} intra-op "
            "thread(s) each")
