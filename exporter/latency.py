"""Latency measurement (methodology: docs/LATENCY.md).

* warm-up runs are executed and discarded;
* then N timed runs, each one inference on an input already staged where the runtime reads it;
* threads are fixed (torch intra-op threads and ORT ``intra_op_num_threads`` get the same count)
  and reported with every number;
* p50 / p90 / p99 (and mean, min, max) in milliseconds;
* speed-ups are ratios of p50s measured in the *same process*, runners interleaved round by round
  so that drift of a noisy machine hits every runner alike;
* every timing is checked for stability (:func:`stability`): the spread p90/p50, the drift
  between the medians of the interleaved rounds, and the load other processes put on the CPUs; an
  unstable batch size is measured once more, and what stays unstable is marked, never presented
  as a result (a speed-up with an unstable side is shown as "unstable");
* on CUDA, PyTorch (eager, TorchScript) is timed with CUDA events around each run and a
  synchronize before reading them; ONNX Runtime's CUDA provider returns only after the device is
  done (I/O binding keeps host<->device copies out), so it is timed with ``perf_counter``.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .defaults import DEFAULT_ROUNDS, DEFAULT_RUNS, DEFAULT_WARMUP  # noqa: F401
CLOCKS = ("perf_counter", "cuda-events")
SPREAD_LIMIT = 1.5  # p90 / p50 above this: the runs disagree
DRIFT_LIMIT = 1.3  # slowest / fastest round median above this: the machine changed under us
LOAD_LIMIT = 0.5  # 1-min load average from *other* processes per CPU core above this: contended
RETRIES = 1  # an unstable batch size is measured this many more times


@dataclass
class LatencyStats:
    """Timing of one runner at one batch size."""

    batch: int
    runs: int
    warmup: int
    threads: int
    clock: str  # perf_counter | cuda-events
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    samples_ms: list[float] = field(default_factory=list, repr=False)
    spread: float = 1.0  # p90 / p50
    drift: float = 1.0  # max / min of the interleaved rounds' medians
    other_load: float | None = None  # load average of other processes per core, when measured
    unstable: list[str] = field(default_factory=list)  # why these numbers are not a result
    attempts: int = 1

    @property
    def stable(self) -> bool:
        return not self.unstable

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch / (self.p50_ms / 1000.0) if self.p50_ms > 0 else float("inf")

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not samples:
            data.pop("samples_ms")
        data["throughput_ips"] = self.throughput
        return data


def summarize(samples_ms: Sequence[float], *, batch: int, warmup: int, threads: int,
              clock: str = "perf_counter") -> LatencyStats:
    """Percentiles (linear interpolation) of a list of per-run milliseconds."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return LatencyStats(batch=batch, runs=int(arr.size), warmup=warmup, threads=threads, clock=clock,
                        p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                        mean_ms=float(arr.mean()), min_ms=float(arr.min()), max_ms=float(arr.max()),
                        samples_ms=[float(v) for v in arr])


def other_load_per_core(threads: int) -> float | None:
    """1-minute load average minus this benchmark's own threads, per CPU core (None: unknown)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    return max(0.0, load - threads) / (os.cpu_count() or 1)


def stability(stats: LatencyStats, round_samples: Sequence[Sequence[float]],
              other_load: float | None) -> LatencyStats:
    """Fill ``stats``' spread, drift, load and the reasons (if any) it is not a result."""
    stats.spread = stats.p90_ms / stats.p50_ms if stats.p50_ms > 0 else float("inf")
    medians = [float(np.median(r)) for r in round_samples if len(r)]
    stats.drift = max(medians) / min(medians) if len(medians) > 1 and min(medians) > 0 else 1.0
    stats.other_load = other_load
    stats.unstable = []
    if stats.spread > SPREAD_LIMIT:
        stats.unstable.append(f"spread p90/p50 {stats.spread:.2f} > {SPREAD_LIMIT}")
    if stats.drift > DRIFT_LIMIT:
        stats.unstable.append(f"drift between rounds {stats.drift:.2f}x > {DRIFT_LIMIT}x")
    if other_load is not None and other_load > LOAD_LIMIT:
        stats.unstable.append(f"load from other processes {other_load:.1f}/core > {LOAD_LIMIT}")
    return stats


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (None keeps it) and return the count in force.

    ORT runners created afterwards default to the same count (see backends/onnxruntime.py).
    """
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return int(torch.get_num_threads())


def _time_runs(fn: Callable[[], Any], runs: int, clock: str) -> list[float]:
    if clock == "cuda-events":
        import torch

        starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        torch.cuda.synchronize()
        for start, end in zip(starts, ends):
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [float(s.elapsed_time(e)) for s, e in zip(starts, ends)]
    if clock != "perf_counter":
        raise ValueError(f"unknown clock '{clock}' (use one of {CLOCKS})")
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _warm(fn: Callable[[], Any], warmup: int, clock: str) -> None:
    for _ in range(warmup):
        fn()
    if clock == "cuda-events":
        import torch

        torch.cuda.synchronize()


def time_callable(fn: Callable[[], Any], *, batch: int, warmup: int = DEFAULT_WARMUP,
                  runs: int = DEFAULT_RUNS, threads: int | None = None,
                  clock: str = "perf_counter") -> LatencyStats:
    """Warm up ``fn`` (discarded), then time ``runs`` calls."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    threads = set_threads(threads)
    _warm(fn, warmup, clock)
    return summarize(_time_runs(fn, runs, clock), batch=batch, warmup=warmup, threads=threads,
                     clock=clock)


def timed_call(runner: Any, batch: np.ndarray) -> tuple[Callable[[], Any], str]:
    """The runner's staged call (``runner.timed_call``) or, failing that, ``runner(batch)``."""
    if hasattr(runner, "timed_call"):
        return runner.timed_call(batch)
    return (lambda: runner(batch)), "perf_counter"


def measure_runner(runner: Any, batch: np.ndarray, *, warmup: int = DEFAULT_WARMUP,
                   runs: int = DEFAULT_RUNS, threads: int | None = None) -> LatencyStats:
    """Latency of one runner on one batch."""
    fn, clock = timed_call(runner, batch)
    return time_callable(fn, batch=int(batch.shape[0]), warmup=warmup, runs=runs, threads=threads,
                         clock=clock)


def benchmark(runners: dict[str, Any], batches: dict[int, np.ndarray], *,
              warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, rounds: int = DEFAULT_ROUNDS,
              threads: int | None = None,
              on_error: Callable[[str, int, Exception], None] | None = None,
              retries: int = RETRIES) -> dict[str, dict[int, LatencyStats]]:
    """Time every runner at every batch size in one process, interleaved.

    For each batch size: every runner is warmed up (``warmup`` runs, discarded), then ``rounds``
    rounds each give every runner ``runs / rounds`` timed runs in turn. Returns
    ``{runner key: {batch: LatencyStats}}``; a runner that raises is reported to ``on_error``
    and left out of that batch size. A batch size with a spread or drifting timing is measured
    again (up to ``retries`` times, all runners, still interleaved; load from other processes alone
    is marked, not retried); each runner keeps its most stable attempt, ``attempts`` says how many
    were made.
    """
    threads = set_threads(threads)
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]
    results: dict[str, dict[int, LatencyStats]] = {key: {} for key in runners}
    for size, array in batches.items():
        best: dict[str, LatencyStats] = {}
        for attempt in range(1 + max(0, retries)):
            measured = _measure_batch(runners, size, array, per_round, warmup, threads, on_error)
            for key, stats in measured.items():
                if key not in best or len(stats.unstable) < len(best[key].unstable):
                    best[key] = stats
            if not any(r.startswith(("spread", "drift")) for s in best.values() for r in s.unstable):
                break  # stable, or only the machine's load: measuring again would not cure that
        for key, stats in best.items():
            stats.attempts = attempt + 1
            results[key][size] = stats
    return results


def _measure_batch(runners, size, array, per_round, warmup, threads, on_error
                   ) -> dict[str, LatencyStats]:
    """One interleaved measurement of every runner at one batch size, stability filled in."""
    calls: dict[str, tuple[Callable[[], Any], str]] = {}
    for key, runner in runners.items():
        try:
            fn, clock = timed_call(runner, array)
            _warm(fn, warmup, clock)
            calls[key] = (fn, clock)
        except Exception as err:  # noqa: BLE001 - reported, the others still run
            if on_error is None:
                raise
            on_error(key, size, err)
    samples: dict[str, list[list[float]]] = {key: [] for key in calls}
    for count in per_round:
        for key, (fn, clock) in list(calls.items()):
            try:
                samples[key].append(_time_runs(fn, count, clock))
            except Exception as err:  # noqa: BLE001
                if on_error is None:
                    raise
                on_error(key, size, err)
                calls.pop(key)
                samples.pop(key)
    load = other_load_per_core(threads)
    return {key: stability(summarize([v for r in per for v in r], batch=size, warmup=warmup,
                                     threads=threads, clock=calls[key][1]), per, load)
            for key, per in samples.items()}


def ratio_is_stable(reference: LatencyStats, candidate: LatencyStats) -> bool:
    """A speed-up is a result only when both of its timings are stable."""
    return reference.stable and candidate.stable


def speedup(reference: LatencyStats, candidate: LatencyStats) -> float:
    """How many times faster the candidate's median is than the reference's (same batch)."""
    return reference.p50_ms / candidate.p50_ms if candidate.p50_ms > 0 else float("inf")
