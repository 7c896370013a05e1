"""OpenVINO and ncnn backends: zoo-wide FP32 parity at test size, the CLI as users run it (export,
parity, INT8, fp16 rows, refusals), and the one-line error when an extra is not installed.

Zoo-wide: a few representative models run by default, the rest with --runslow (VGG/AlexNet only
then, via ``zoo_recipe``). Nothing is mocked: the runtimes run the artifacts the CLI wrote.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporter.recipes import all_recipes
from quant_helpers import zoo_recipe

# slow as a module: its subprocess runs outgrow the default suite's ~20 min on 2 cores (run with --runslow)
pytestmark = pytest.mark.slow

NEEDS = {"openvino": ("openvino",), "ncnn": ("ncnn", "pnnx"), "coreml": ("coremltools",)}
DEFAULT_ZOO = ("lenet5", "mobilenet_v3_small", "shufflenet_v2_x1_0")


def need(*formats: str) -> None:
    for fmt in formats:
        for package in NEEDS[fmt]:
            if importlib.util.find_spec(package) is None:
                pytest.skip(f"{package} is not installed: pip install 'zoo-exporter[{fmt}]'")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=900, env=env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ zoo-wide parity
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT_ZOO else pytest.mark.slow)
                                  for n in all_recipes()])
def test_fp32_parity_over_the_zoo(name, request, tmp_path):
    """Each recipe exported to OpenVINO IR and ncnn at its test size; both FP32 rows (f32 compute,
    fp16 off) within the recipe's fp32 tolerance versus eager PyTorch."""
    from exporter.pipeline import ExportRequest, export

    need("openvino", "ncnn")
    recipe = zoo_recipe(name, request)
    spec = recipe.input
    size = None if spec.fixed_size or spec.test_size == max(spec.size) else spec.test_size
    result = export(ExportRequest(model=name, formats=("openvino", "ncnn"), input_size=size,
                                  output=tmp_path / name, fail_on_breach=False))
    rows = {row["format"]: row for row in result.parity}
    assert set(rows) == {"openvino", "ncnn"}
    tol = recipe.tolerance("fp32")
    assert rows["openvino"]["provider"] == "CPU f32"
    assert rows["ncnn"]["provider"] == "CPU fp32 arithmetic"
    for fmt, row in rows.items():
        assert row["status"] == "ok" and not row["breach"], (fmt, row["breach"])
        assert row["rel_max_abs"] <= tol.rel_max_abs, (fmt, row["rel_max_abs"])
        assert row["cosine"] >= tol.min_cosine, (fmt, row["cosine"])
        assert row["top1_agreement"] >= tol.min_top1_agreement, (fmt, row["top1_agreement"])


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def lenet_fp16(tmp_path_factory):
    """`exporter export lenet5 --format openvino,ncnn --precision fp16` (FP32 + FP16 of each)."""
    need("openvino", "ncnn")
    out = tmp_path_factory.mktemp("edge") / "lenet5"
    proc = run_cli("export", "lenet5", "--format", "openvino,ncnn", "--precision", "fp16",
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_export_writes_ir_and_ncnn_with_every_file_hashed(lenet_fp16):
    out, proc = lenet_fp16
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {(a["format"], a["precision"]): a for a in manifest["artifacts"]}
    assert set(entries) == {("openvino", "fp32"), ("openvino", "fp16"), ("ncnn", "fp32"), ("ncnn", "fp16")}
    assert entries[("openvino", "fp32")]["file"] == "lenet5.openvino.xml"
    assert entries[("ncnn", "fp16")]["file"] == "lenet5.fp16.ncnn.param"
    for entry in entries.values():
        (companion,) = entry["companions"]  # the .bin next to the .xml / .param
        assert companion["file"].endswith(".bin")
        assert companion["sha256"] == sha256(out / companion["file"])
        assert entry["sha256"] == sha256(out / entry["file"])
        assert entry["bytes"] == (out / entry["file"]).stat().st_size + companion["bytes"]
    # fp16 weights halve the .bin
    fp32_bin = entries[("openvino", "fp32")]["companions"][0]["bytes"]
    fp16_bin = entries[("openvino", "fp16")]["companions"][0]["bytes"]
    assert 0.45 < fp16_bin / fp32_bin < 0.55
    assert entries[("ncnn", "fp32")]["details"]["outputs"] == ["out0"]
    assert {"openvino", "ncnn", "pnnx"} <= set(manifest["versions"])
    assert "lenet5.openvino.xml on CPU f32" in proc.stdout
    assert "lenet5.ncnn.param on CPU fp32 arithmetic" in proc.stdout


def test_parity_report_has_a_row_per_runtime_with_latency(lenet_fp16, tmp_path):
    """`exporter parity --artifacts DIR`: every OpenVINO/ncnn row has metrics, latency, the
    compute precision and thread count that ran; fp16 rows checked against the fp16 tolerance."""
    out, _ = lenet_fp16
    proc = run_cli("parity", "--artifacts", str(out), "--batch-sizes", "1", "--runs", "5",
                   "--warmup", "1", "--rounds", "1", "--threads", "2", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())["reports"][0]
    rows = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert len(rows) == 4
    for (fmt, precision), row in rows.items():
        assert row["status"] == "ok" and row["threads"] == 2
        assert row["latency"]["1"]["p50_ms"] > 0
        assert row["summary"]["rel_max_abs"] <= row["tolerance"]["rel_max_abs"]
    assert rows[("openvino", "fp32")]["summary"]["rel_max_abs"] <= 1e-4
    assert rows[("openvino", "fp32")]["provider"] == "CPU f32"
    assert rows[("openvino", "fp16")]["tolerance"]["rel_max_abs"] == 2e-2
    assert "INFERENCE_NUM_THREADS=2" in " ".join(rows[("openvino", "fp32")]["notes"])
    fp16_notes = " ".join(rows[("openvino", "fp16")]["notes"])
    if "INFERENCE_PRECISION_HINT=f32" in fp16_notes:  # no FP16 compute here: never 'ran in f16'
        assert "convolutions ran in f32 (f16 weights) x3" in fp16_notes, fp16_notes
    assert rows[("ncnn", "fp16")]["provider"].startswith("CPU fp16 storage")
    assert "fp16" in rows[("ncnn", "fp16")]["name"]
    markdown = (tmp_path / "report.md").read_text()
    assert "openvino 2" in markdown and "ncnn 1" in markdown  # versions of the runtimes that ran


def test_openvino_int8_is_our_qdq_read_by_openvino(tmp_path):
    need("openvino")
    out = tmp_path / "lenet5"
    proc = run_cli("export", "lenet5", "--format", "openvino", "--precision", "int8",
                   "--calibration", "packaged", "--calibration-samples", "32", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = next(a for a in manifest["artifacts"] if a["precision"] == "int8")
    assert int8["file"] == "lenet5.int8.openvino.xml"
    assert int8["details"]["quantize"]["target"] == "cpu"
    assert int8["details"]["quantize"]["int8_convs"] >= 1
    assert int8["details"]["options"]["calibration"] == "packaged"
    assert "lenet5.int8.openvino.xml on CPU int8 kernels + f32" in proc.stdout
    # the summary gives the INT8 facts as for the ONNX it was converted from, and says so
    assert "(the Q/DQ ONNX this IR was converted from, cpu placement" in proc.stdout
    assert "    int8: 3/3 convs INT8 (100.0%)" in proc.stdout and "    budget: top-1 agreement" in proc.stdout
    assert (out / "lenet5.int8.calib.json").is_file()  # the next export re-uses the ranges


@pytest.mark.parametrize("args, code, message", [
    (["--format", "ncnn", "--precision", "int8", "--calibration", "packaged"], 6,
     "not available on this machine"),
    (["--format", "openvino", "--precision", "int8", "--calibration", "packaged", "--target",
      "tensorrt"], 2, "uses the cpu Q/DQ placement"),
    (["--format", "onnx,openvino", "--precision", "int8", "--calibration", "packaged", "--target",
      "tensorrt"], 2, "uses the cpu Q/DQ placement"),  # refused before the ONNX INT8 is made
    (["--format", "coreml", "--precision", "int8", "--calibration", "packaged"], 2,
     "not produced by --format coreml"),
])
def test_refused_requests_exit_with_one_line_and_no_artifacts(tmp_path, args, code, message):
    need("openvino", "ncnn")
    out = tmp_path / "out"
    proc = run_cli("export", "lenet5", *args, "--output", str(out))
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and "calibration:" not in proc.stderr  # before any work
    assert not out.exists()


BLOCKER = textwrap.dedent("""
    import sys

    class _Hide:  # the packages named in ZOO_EXPORTER_TEST_HIDE cannot be found or imported
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HIDDEN}:
                raise ModuleNotFoundError(f"No module named '{{name}}' (hidden)", name=name)
            return None

    sys.meta_path.insert(0, _Hide())
""")


@pytest.mark.parametrize("fmt", sorted(NEEDS))
def test_missing_extra_is_one_line_naming_it(tmp_path, fmt):
    """A Python whose site hides the runtime package (a sitecustomize import blocker): export
    exits 5 with one line naming the extra, before any work, and writes nothing."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(HIDDEN=repr(set(NEEDS[fmt]))))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = tmp_path / "out"
    proc = run_cli("export", "lenet5", "--format", fmt, "--output", str(out), env=env)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: --format {fmt} needs the '{NEEDS[fmt][0]}' package")
    assert lines[1].strip() == f"fix: pip install 'zoo-exporter[{fmt}]'"
    assert len(lines) == 2 and not out.exists()


def test_ncnn_refuses_a_param_with_ops_pnnx_left_unconverted(tmp_path):
    """pnnx keeps an op it cannot map under its torch name; the export stops with a typed error
    naming it instead of writing a .param ncnn cannot load."""
    from exporter.backends.ncnn import check_converted
    from exporter.errors import ExportError

    param = tmp_path / "m.ncnn.param"
    param.write_text("7767517\n3 3\nInput in0 0 1 in0\n"
                     "torch.index_select sel 1 1 in0 1\nReLU relu 1 1 1 out0\n")
    with pytest.raises(ExportError, match=r"ncnn has no layer for torch\.index_select"):
        check_converted(param)
    param.write_text("7767517\n2 2\nInput in0 0 1 in0\nReLU relu 1 1 in0 out0\n")
    check_converted(param)  # all ncnn layers: accepted


def test_shufflenet_v1_ncnn_traces_its_shuffles_as_reshape(tmp_path):
    """ShuffleNetV1's index_select shuffle has no ncnn layer; the ncnn export traces the
    reshape-transpose form (the same permutation) and records which modules it swapped."""
    from exporter.pipeline import ExportRequest, export

    need("ncnn")
    result = export(ExportRequest(model="shufflenet_v1", formats=("ncnn",), input_size=64,
                                  output=tmp_path / "sv1"))
    entry = next(a for a in result.manifest["artifacts"] if a["format"] == "ncnn")["details"]
    assert len(entry["channel_shuffles_as_reshape"]) == 16, entry["channel_shuffles_as_reshape"]
    assert not any("." in t for t in entry["layer_types"])
    row = next(r for r in result.parity if r["format"] == "ncnn")
    assert row["status"] == "ok" and row["rel_max_abs"] <= 1e-4, row


def test_openvino_int8_alone_reuses_the_calibration_cache_and_sends_no_telemetry(tmp_path):
    """`--format openvino --precision int8` run twice recomputed its ranges ('no cache') with the
    cache beside it: only the ONNX path staged it. OpenVINO's converter loaded its telemetry, whose
    child processes tried the network and printed tracebacks on Ctrl-C."""
    need("openvino")
    cmd = ["export", "lenet5", "--format", "openvino", "--precision", "int8", "--calibration", "packaged",
           "--calibration-samples", "32", "--eval-samples", "40", "-o", str(tmp_path / "ov")]
    first = run_cli(*cmd)
    assert first.returncode == 0 and "cache miss (no cache)" in first.stdout, first.stderr[-2000:]
    again = run_cli(*cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cache hit" in again.stdout and "computing ranges" not in again.stderr, again.stdout
    probe = ("from exporter.backends import openvino as b; b._ov(); "
             "import openvino.tools.ovc.convert_impl as ci; print(ci.tm.__name__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "openvino.tools.ovc.telemetry_stub", out.stderr[-2000:]
