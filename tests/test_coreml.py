"""Core ML: conversion over the zoo with structural checks read back from the .mlpackage, how the
manifest hashes a directory artifact, parity's "converted, not run" row off macOS, and (marked
``macos``) predictions within tolerance where Core ML can run."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from exporter.recipes import all_recipes
from quant_helpers import zoo_recipe

DEFAULT_ZOO = ("lenet5", "mobilenet_v3_small")

# slow as a module: its subprocess runs outgrow the default suite's ~20 min on 2 cores (run with --runslow)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("coremltools") is None,
                                reason="coremltools is not installed: pip install 'zoo-exporter[coreml]'")]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT_ZOO else pytest.mark.slow)
                                  for n in all_recipes()])
def test_conversion_and_structure_over_the_zoo(name, request, tmp_path):
    from exporter.backends.coreml import structure
    from exporter.pipeline import ExportRequest, export

    recipe = zoo_recipe(name, request)
    spec = recipe.input
    size = None if spec.fixed_size or spec.test_size == max(spec.size) else spec.test_size
    result = export(ExportRequest(model=name, formats=("coreml",), input_size=size,
                                  output=tmp_path / name, verify=False))
    (entry,) = result.manifest["artifacts"]
    found = entry["details"]["structure"]
    want = [result.spec.channels, *result.spec.size]
    assert found["model_type"] == "mlProgram" and found["spec_version"] >= 7
    assert [i["name"] for i in found["inputs"]] == ["input"]
    assert found["inputs"][0]["dtype"] == "FLOAT32" and found["inputs"][0]["shape"] == [1, *want]
    assert found["inputs"][0]["ranges"][0] == [1, 64]  # dynamic batch 1..64
    assert [(o["name"], o["dtype"]) for o in found["outputs"]] == [("logits", "FLOAT32")]
    assert found["ops"] >= 3 and found["op_types"].get("conv", 0) >= 2
    on_disk = structure(tmp_path / name / entry["file"])  # read back: what the manifest says
    assert json.loads(on_disk["metadata"]["zoo-exporter.preprocessing"])["mean"] == list(spec.mean)
    on_disk.pop("metadata")
    assert on_disk == found
    # VGG's 7x7 / AlexNet's 6x6 pool at the 64 px test size: written as MatMuls (exporter.adaptive_pool)
    swapped = entry["details"]["adaptive_pools_as_matmul"]
    assert bool(swapped) == (name.startswith("vgg") or name == "alexnet"), swapped
    # torchvision's ShuffleNetV2 shuffles with sizes read from x.size(): traced in the shape-free form
    shuffles = entry["details"]["channel_shuffles_shape_free"]
    assert shuffles == (16 if name.startswith("shufflenet_v2") else 0), shuffles


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """`exporter export lenet5 --format coreml --precision fp16`: FP32 and FP16 ML Programs."""
    out = tmp_path_factory.mktemp("coreml") / "lenet5"
    proc = run_cli("export", "lenet5", "--format", "coreml", "--precision", "fp16", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_export_fp32_and_fp16_programs_with_preprocessing(lenet):
    out, proc = lenet
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {a["precision"]: a for a in manifest["artifacts"]}
    assert entries["fp32"]["file"] == "lenet5.mlpackage"
    assert entries["fp16"]["file"] == "lenet5.fp16.mlpackage"
    assert entries["fp16"]["details"]["compute_precision"] == "fp16"
    assert entries["fp16"]["details"]["structure"]["op_types"].get("cast", 0) >= 2  # fp32 I/O
    assert "cast" not in entries["fp32"]["details"]["structure"]["op_types"]
    assert entries["fp32"]["details"]["preprocessing"]["mean"] == [0.1307]
    # the fp16 weight file is about half the fp32 one
    weights = {p: next(c["bytes"] for c in e["contents"] if c["file"].endswith("weight.bin"))
               for p, e in entries.items()}
    assert 0.4 < weights["fp16"] / weights["fp32"] < 0.6
    assert "converted, not run: needs macOS" in proc.stdout or sys.platform == "darwin"


def test_a_directory_artifact_hashes_every_file_in_a_fixed_order(lenet, tmp_path):
    from exporter.artifacts import changed_files, sha256_path

    out, _ = lenet
    entry = json.loads((out / "manifest.json").read_text())["artifacts"][0]
    package = out / entry["file"]
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())
    assert [c["file"] for c in entry["contents"]] == files
    for item in entry["contents"]:
        assert item["sha256"] == hashlib.sha256((package / item["file"]).read_bytes()).hexdigest()
    assert entry["bytes"] == sum(c["bytes"] for c in entry["contents"])
    lines = "".join(f"{c['file']} {c['sha256']}\n" for c in entry["contents"])
    assert entry["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    copy = tmp_path / package.name  # same bytes elsewhere: same digest
    shutil.copytree(package, copy)
    assert sha256_path(copy) == entry["sha256"] and changed_files(entry, tmp_path) == []
    with open(copy / "Manifest.json", "a") as fh:  # one file inside changed: the entry says so
        fh.write(" ")
    assert changed_files(entry, tmp_path) == [f"{package.name} differs from the manifest "
                                              "(sha256 changed since export)"]


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the row runs (test below)")
def test_parity_row_says_converted_not_run_off_macos(lenet, tmp_path):
    out, _ = lenet
    proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())["reports"][0]
    for row in report["artifacts"]:
        assert row["status"] == "skipped"
        assert row["error"].startswith("converted, not run: needs macOS")
        assert any(n.startswith("structure checked at export: spec v") for n in row["notes"])


@pytest.mark.macos
def test_predictions_within_tolerance_on_macos(lenet, tmp_path):
    out, _ = lenet
    proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())["reports"][0]
    for row in report["artifacts"]:
        assert row["status"] == "ok", row
        assert row["summary"]["rel_max_abs"] <= row["tolerance"]["rel_max_abs"]
