"""torch.export formats: ``--format pt2`` (ExportedProgram) and ``--format aoti`` (AOTInductor
package) exported, run in parity, and carrying the artifact metadata - through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from exporter.metadata import EXTRA_FILE, decode


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=1200)


def _rows(out) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    return {r["format"]: r for r in manifest["parity"]}


def test_pt2_export_parity_and_metadata(tmp_path):
    out = tmp_path / "mv3"
    proc = run_cli("export", "mobilenet_v3_small", "--input-size", "64", "--format", "pt2",
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    row = _rows(out)["pt2"]
    assert row["rel_max_abs"] < 1e-5 and row["top1_agreement"] == 1.0
    files = {EXTRA_FILE: ""}
    program = torch.export.load(str(out / "mobilenet_v3_small.pt2"), extra_files=files)
    meta = decode(json.loads(files[EXTRA_FILE]))
    assert meta["format"] == "pt2" and meta["input_shape"] == ["batch", 3, 64, 64]
    assert len(meta["class_names"]) == 1000
    assert program.module()(torch.zeros(3, 3, 64, 64)).shape == (3, 1000)  # dynamic batch
    proc = run_cli("parity", "--artifacts", str(out), "--samples", "4", "--runs", "3",
                   "--warmup", "1", "--rounds", "1", "--batch-sizes", "1")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "mobilenet_v3_small.pt2" in proc.stdout


@pytest.mark.slow  # AOTInductor compiles C++: ~2 min even for LeNet-5 on 2 cores
def test_aoti_export_parity_and_metadata(tmp_path):
    out = tmp_path / "lenet"
    proc = run_cli("export", "lenet5", "--format", "aoti", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    row = _rows(out)["aoti"]
    assert row["rel_max_abs"] < 1e-5 and row["top1_agreement"] == 1.0
    from exporter.backends.aoti import read_metadata

    meta = read_metadata(out / "lenet5.aoti.pt2")
    assert meta["format"] == "aoti" and meta["model"] == "lenet5"
    assert json.loads(meta["mean"]) and meta["AOTI_DEVICE_KEY"] == "cpu"
    assert "class_names" not in meta  # 10 classes: no ImageNet names invented
    proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--samples", "4")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "lenet5.aoti.pt2" in proc.stdout


def test_aoti_without_compiler_is_an_environment_error(tmp_path):
    env = {"PATH": str(tmp_path), "CXX": "", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "exporter", "export", "lenet5", "--format", "aoti",
                           "--output", str(tmp_path / "x")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 5, proc.stderr
    assert "needs a C++ compiler" in proc.stderr and "--format pt2" in proc.stderr
    assert not (tmp_path / "x").exists()
