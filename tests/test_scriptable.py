"""Scriptable CLI: --json gives exactly one JSON document on stdout (logs on stderr), --quiet,
exit codes, ``exporter parity FILE`` without a manifest, and --atol/--rtol overrides."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    out = tmp_path_factory.mktemp("json") / "lenet"
    proc = run_cli("export", "lenet5", "--format", "onnx,pt2", "--output", str(out), "--json", "-v")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_export_json_is_one_document_and_logs_go_to_stderr(lenet):
    out, proc = lenet
    doc = json.loads(proc.stdout)  # the whole stdout parses: nothing else was printed there
    assert doc["ok"] is True and doc["command"] == "export" and doc["directory"] == str(out)
    assert [a["format"] for a in doc["artifacts"]] == ["onnx", "pt2"]
    assert all(row["rel_max_abs"] < 1e-5 for row in doc["parity"])
    assert "load: lenet5" in proc.stderr and "verify:" in proc.stderr  # --verbose stage lines


def test_parity_file_without_manifest_reads_model_from_metadata(lenet, tmp_path):
    out, _ = lenet
    lone = tmp_path / "lone.pt2"
    shutil.copy(out / "lenet5.pt2", lone)  # no manifest beside it
    proc = run_cli("parity", str(lone), "--no-latency", "--samples", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["command"] == "parity"
    [artifact] = doc["reports"][0]["artifacts"]
    assert artifact["file"] == "lone.pt2" and artifact["format"] == "pt2"
    assert artifact["summary"]["rel_max_abs"] < 1e-5


def test_parity_foreign_onnx_needs_model_spec(lenet, tmp_path):
    out, _ = lenet
    model = onnx.load(str(out / "lenet5.onnx"))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    proc = run_cli("parity", str(foreign), "--no-latency")
    assert proc.returncode == 2 and "--model SPEC" in proc.stderr
    proc = run_cli("parity", str(foreign), "--model", "lenet5", "--no-latency", "--samples", "4",
                   "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["reports"][0]["artifacts"][0]["summary"]["top1_agreement"] == 1.0


def test_atol_override_breaches_with_exit_3_and_json_error(lenet):
    out, _ = lenet
    proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--samples", "4",
                   "--atol", "1e-12", "--json", "--quiet")
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)  # one document, the breach inside it
    assert report["ok"] is False and {b["metric"] for b in report["reports"][0]["breaches"]} == {"max_abs"}
    assert report["exit_code"] == 3 and report["error_type"] == "ParityError"
    assert f"exporter parity lenet5 --artifacts {out} --atol 1e-12 --locate" in report["fix"]  # an ONNX breached
    assert any(b.startswith("lenet5.onnx output") for b in report["breaches"])  # at the top too
    assert "breach the tolerance --atol/--rtol set vs eager PyTorch" in report["error"]
    assert report["fix"].startswith("the tolerance is the one --atol/--rtol gave")
    assert "tolerances overridden on the command line: --atol 1e-12" in report["reports"][0]["notes"]


def test_a_breach_of_no_onnx_artifact_does_not_send_the_user_to_locate(lenet, tmp_path):
    """--locate reads ONNX graphs only: a pt2 breach says so instead of suggesting it."""
    out, _ = lenet
    lone = tmp_path / "lone.pt2"
    shutil.copy(out / "lenet5.pt2", lone)
    proc = run_cli("parity", str(lone), "--no-latency", "--samples", "4", "--atol", "1e-12")
    assert proc.returncode == 3, proc.stderr
    fix = [ln for ln in proc.stderr.splitlines() if ln.startswith("fix:")]
    assert fix == ["fix: the tolerance is the one --atol/--rtol gave: loosen it or drop it for the recipe's; "
                   "--locate reads ONNX graphs only, not pt2: export the model with --format onnx "
                   "too, then if the ONNX is within tolerance, the pt2 conversion is where the outputs "
                   "diverge; re-export with `exporter export lenet5` and the options the export was "
                   "made with; `--no-fail` reports without failing"], proc.stderr
    proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--samples", "4", "--rtol", "1.0")
    assert proc.returncode == 0, proc.stderr


def test_usage_error_json_document_and_exit_code(tmp_path):
    proc = run_cli("export", "resnet18", "--format", "keras", "--json", "--output", str(tmp_path / "x"))
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and "unknown format" in doc["error"]


def test_json_run_interrupted_still_prints_one_document(tmp_path):
    """SIGINT during a --json export: one JSON document on stdout with exit code 130 (it printed
    nothing), then the one error line on stderr; nothing written."""
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "export", "mobilenet_v3_small", "-o",
                             str(out), "--json", "-v"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    end = time.time() + 120
    while time.time() < end and not (out.exists() or proc.poll() is not None):
        time.sleep(0.05)  # the export is under way once its output folder exists
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    doc = json.loads(stdout)
    assert doc == {"ok": False, "error": "interrupted by SIGINT; nothing half-written was left behind",
                   "fix": doc["fix"], "error_type": "Interrupted", "exit_code": 130}
    assert stderr.strip().splitlines()[-2].startswith("error: interrupted by SIGINT")
    assert not out.exists()


def test_report_folder_is_checked_before_the_run_and_foreign_reports_are_kept(lenet, tmp_path):
    out, _ = lenet
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--samples", "4", "--report", str(mine))
    assert proc.returncode == 4 and (mine / "report.md").read_text() == "my notes"
    assert f"error: --report {mine} already holds report.md, which the exporter did not write" in proc.stderr
    assert "eager reference" not in proc.stdout + proc.stderr  # refused before any work
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for bad, text in ((a_file, "is a file, not a folder"), (a_file / "sub", "is a file, not a folder"),
                      (Path("/proc/zoo-exporter-report"), "cannot create files in /proc")):
        proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--report", str(bad))
        assert proc.returncode == 2 and text in proc.stderr, proc.stderr
        assert "eager reference" not in proc.stdout + proc.stderr
    ours = tmp_path / "ours"  # the exporter's own report folder is rewritten on the next run
    for _ in range(2):
        proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--samples", "4", "--report", str(ours))
        assert proc.returncode == 0, proc.stderr
    assert json.loads((ours / "report.json").read_text())["generator"] == "zoo-exporter parity"


def test_samples_0_says_agreement_is_over_random_tensors(lenet):
    out, _ = lenet
    proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--samples", "0", "--random", "4")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # rich folds long lines
    assert "no real images (--samples 0): top-1 agreement is over random tensors" in text
    assert "agreement judged on the real images" not in text
