"""benchmarks/cpu_zoo_fusion.py: the placement it loads from git as the baseline is the one that
ran a conv read by a float op in float, and its row says so beside today's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import cpu_zoo_fusion  # noqa: E402


def test_row_shows_the_baseline_ran_hardswish_readers_in_float():
    baseline = "b88d114"
    if subprocess.run(["git", "cat-file", "-e", f"{baseline}^{{commit}}"], cwd=ROOT,
                      capture_output=True).returncode != 0:
        pytest.skip(f"commit {baseline} not in this clone's history")
    line = cpu_zoo_fusion.row("mobilenet_v3_small", cpu_zoo_fusion.baseline_placement(baseline),
                              runs=1, rounds=1)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "mobilenet_v3_small"
    assert cells[2] == "24/52" and cells[3] == "none"  # 28 convs ran in float before
    assert cells[5] == "52/52" and cells[6] == "HardSwish x19, HardSigmoid x9"
