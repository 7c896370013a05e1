"""Latency a person can trust: an erratic runner (a real model run, then a random sleep) must be
flagged unstable and its speed-up never shown as a result; a steady one is not flagged for spread
or drift; the terminal table fits 100 columns and shows throughput."""
from __future__ import annotations

import io
import random
import time

import numpy as np
import pytest

from exporter import latency
from exporter.backends.eager import TorchModuleRunner


class SleepyRunner(TorchModuleRunner):
    """Runs the model for real (parity outputs); its timed call sleeps: ``erratic`` 5 ms, or 80 ms
    one time in three (seeded), steady 20 ms - sleeps, so the machine's own load barely moves them."""

    def __init__(self, module, erratic: bool, seed: int = 0):
        super().__init__(module, "cpu", name="sleepy", runtime="test sleeper")
        self.erratic, self.rng = erratic, random.Random(seed)

    def timed_call(self, batch):
        return (lambda: time.sleep((0.080 if self.rng.random() < 1 / 3 else 0.005) if self.erratic
                                   else 0.020)), "perf_counter"


@pytest.fixture(scope="module")
def lenet():
    from exporter.builders import build_model, resolve_model
    from exporter.prepare import prepare_for_deploy

    recipe, spec = resolve_model("lenet5")
    model, _ = build_model(recipe, seed=0)
    reference, _ = prepare_for_deploy(model, recipe, fold=False)
    return recipe, spec, reference


def test_erratic_runner_is_flagged_steady_is_not(lenet):
    _, spec, reference = lenet
    runners = {"erratic": SleepyRunner(reference, erratic=True),
               "steady": SleepyRunner(reference, erratic=False)}
    batch = np.zeros((1, spec.channels, *spec.size), np.float32)
    result = latency.benchmark(runners, {1: batch}, warmup=1, runs=12, rounds=3)
    erratic, steady = result["erratic"][1], result["steady"][1]
    assert not erratic.stable and erratic.attempts == 2  # measured again, still unstable
    assert erratic.attempts == steady.attempts == 2  # the retry re-times every runner
    assert any(r.startswith(("spread", "drift")) for r in erratic.unstable), erratic.unstable
    assert erratic.spread > latency.SPREAD_LIMIT or erratic.drift > latency.DRIFT_LIMIT
    assert not [r for r in steady.unstable if not r.startswith("load")], steady.unstable
    assert steady.spread < latency.SPREAD_LIMIT and steady.p50_ms >= 20


def test_unstable_speedup_is_marked_in_table_and_report(lenet, tmp_path):
    from rich.console import Console

    from exporter.parity import build_inputs, run_parity
    from exporter.report import TERMINAL_COLUMNS, print_report, render_table
    from exporter.report_files import to_json, write_report

    recipe, spec, reference = lenet
    manifest = {"model": "lenet5", "artifacts": [], "input": {}}
    runners = {"lenet5.erratic.tensorrt.onnx": SleepyRunner(reference, erratic=True, seed=1)}
    report = run_parity(tmp_path, reference, spec, recipe, build_inputs(spec, samples=0, random=4),
                        manifest=manifest, runners=runners, batch_sizes=(1, 4), warmup=1, runs=9,
                        rounds=3)
    [art] = report.artifacts
    assert art.status == "ok" and art.summary["rel_max_abs"] == 0.0  # outputs are the model's
    assert art.speedup_stable == {1: False, 4: False}
    assert any("unstable timings" in n for n in report.notes)
    assert art.latency[4].throughput == pytest.approx(4 / (art.latency[4].p50_ms / 1000))
    assert art.memory_mb is not None and art.memory_mb >= 0

    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=300))
    text = buffer.getvalue()
    table = io.StringIO()
    Console(file=table, width=300).print(render_table(report))
    lines = table.getvalue().splitlines()
    assert max(len(line) for line in lines) <= TERMINAL_COLUMNS, "\n".join(lines)
    row = next(line for line in lines if ".erratic.tensorrt.onnx" in line)
    assert "unstable" in row and "x " not in row.split("unstable")[0][-12:]  # no ratio shown
    assert "img/s b4" in table.getvalue() and "unstable" in text
    paths = write_report([report], tmp_path / "rep")
    assert "unstable (" in paths["markdown"].read_text()
    assert "tolerance |" in paths["markdown"].read_text() and "| rel <= " in paths["markdown"].read_text()
    doc = to_json([report])
    assert doc["reports"][0]["artifacts"][0]["speedup_stable"] == {"1": False, "4": False}
    # the ship line names the fastest artifact but never quotes its unstable speed-up as a number
    ship = report.ship_line()
    assert "speed-up vs eager unstable on this machine (not a result" in ship and "x eager" not in ship
    # and the pick itself compares unstable timings: a guess, and it says so
    assert ship.startswith("fastest within tolerance (batch 1) by unstable timings (a guess, not a result")
    assert f"ship {ship}" in text.replace("\n", " ") or "unstable on this machine" in text
    record = doc["reports"][0]["fastest_within_tolerance"]
    assert record["speedup_vs_eager"] is None and record["speedup_stable"] is False
    assert record["pick_stable"] is False
    assert "x eager" not in paths["markdown"].read_text().split("**Ship:**")[1].splitlines()[0]
