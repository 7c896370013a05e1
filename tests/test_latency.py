"""Latency measurement: warm-up discarded, N timed runs, percentiles, threads, interleaving."""
from __future__ import annotations

import numpy as np
import pytest

from exporter import latency


@pytest.fixture()
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_summarize_percentiles():
    stats = latency.summarize(list(range(1, 101)), batch=4, warmup=3, threads=2)
    assert stats.runs == 100 and stats.batch == 4 and stats.warmup == 3 and stats.threads == 2
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.min_ms == 1 and stats.max_ms == 100 and stats.mean_ms == pytest.approx(50.5)
    assert stats.throughput == pytest.approx(4 / 0.0505)
    assert "samples_ms" not in stats.to_dict() and len(stats.to_dict(samples=True)["samples_ms"]) == 100
    with pytest.raises(ValueError):
        latency.summarize([], batch=1, warmup=0, threads=1)


def test_warmup_runs_are_discarded(restore_threads):
    calls = []

    def fn():
        calls.append(1)

    stats = latency.time_callable(fn, batch=1, warmup=4, runs=7, threads=1)
    assert len(calls) == 11  # 4 warm-up + 7 timed
    assert stats.runs == 7 and len(stats.samples_ms) == 7 and stats.warmup == 4
    assert stats.threads == 1 and stats.clock == "perf_counter"


def test_slow_warmup_does_not_pollute_percentiles(restore_threads):
    import time

    state = {"n": 0}

    def fn():
        state["n"] += 1
        if state["n"] <= 2:  # a slow first call (lazy init, JIT, allocation)
            time.sleep(0.05)

    stats = latency.time_callable(fn, batch=1, warmup=2, runs=5)
    assert stats.max_ms < 25


def test_set_threads_fixes_and_reports(restore_threads):
    import torch

    assert latency.set_threads(1) == 1 == torch.get_num_threads()
    assert latency.set_threads(None) == 1  # None keeps the count in force


class _Fake:
    def __init__(self, name, log, fail_at=None):
        self.name, self.log, self.fail_at = name, log, fail_at

    def __call__(self, batch):
        if self.fail_at is not None and batch.shape[0] == self.fail_at:
            raise RuntimeError("boom")
        self.log.append((self.name, batch.shape[0]))
        return batch


def test_benchmark_interleaves_rounds_and_reports_errors(restore_threads):
    log = []
    runners = {"a": _Fake("a", log), "b": _Fake("b", log), "broken": _Fake("x", log, fail_at=2)}
    batches = {1: np.zeros((1, 3, 4, 4), np.float32), 2: np.zeros((2, 3, 4, 4), np.float32)}
    errors = []
    out = latency.benchmark(runners, batches, warmup=1, runs=6, rounds=3, threads=1, retries=0,
                            on_error=lambda k, b, e: errors.append((k, b, str(e))))
    assert set(out["a"]) == {1, 2} and set(out["b"]) == {1, 2}
    assert set(out["broken"]) == {1}
    assert errors == [("broken", 2, "boom")]
    assert all(s.runs == 6 and s.warmup == 1 and s.threads == 1 for s in out["a"].values())
    # batch 1 timed part: a,a,b,b,x,x repeated 3 times (warm-ups first)
    timed = [n for n, b in log if b == 1][3:]
    assert timed == ["a", "a", "b", "b", "x", "x"] * 3


def test_benchmark_uses_runner_timed_call(restore_threads):
    staged = []

    class Staged:
        def __call__(self, batch):
            raise AssertionError("the timed loop must use the staged call")

        def timed_call(self, batch):
            staged.append(batch.shape)
            return (lambda: None), "perf_counter"

    out = latency.benchmark({"s": Staged()}, {4: np.zeros((4, 1), np.float32)}, warmup=0, runs=2,
                            retries=0)
    assert out["s"][4].runs == 2 and staged == [(4, 1)]


def test_speedup_ratio():
    a = latency.summarize([10.0] * 3, batch=1, warmup=0, threads=1)
    b = latency.summarize([2.5] * 3, batch=1, warmup=0, threads=1)
    assert latency.speedup(a, b) == pytest.approx(4.0)


def test_eager_runner_timing_on_cpu(restore_threads):
    import torch

    from exporter.backends.eager import EagerRunner

    runner = EagerRunner(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))
    fn, clock = runner.timed_call(np.zeros((2, 3, 8, 8), np.float32))
    assert clock == "perf_counter"
    stats = latency.measure_runner(runner, np.zeros((2, 3, 8, 8), np.float32), warmup=1, runs=3,
                                   threads=1)
    assert stats.batch == 2 and stats.runs == 3 and runner.provider == "cpu"


@pytest.mark.gpu
def test_cuda_events_clock():
    import torch

    from exporter.backends.eager import EagerRunner

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten())
    runner = EagerRunner(model, "cuda")
    fn, clock = runner.timed_call(np.zeros((8, 3, 64, 64), np.float32))
    assert clock == "cuda-events"
    stats = latency.time_callable(fn, batch=8, warmup=3, runs=10, clock=clock)
    assert stats.clock == "cuda-events" and stats.p50_ms > 0
    assert runner.provider.startswith("cuda:0")
    assert next(model.parameters()).device.type == "cpu"  # the caller's module stays put
