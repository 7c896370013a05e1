"""``exporter matrix``: the eager reference computed once by the driver and shared with every job
of the model (the same rows as jobs that compute their own), and ``--output`` as an fsspec URL
(``file://`` through fsspec's real LocalFileSystem: uploaded job directories, the report at the
URL's top, a re-run skipped from the remote manifest). Run the way users run it: the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.errors import EXIT_ENVIRONMENT, EXIT_USAGE

from test_matrix import run_cli

PLAN = """models = ["lenet5"]
formats = ["onnx", "torchscript"]
precisions = ["fp32", "int8"]
[calibration]
data = "packaged"
samples = 16
method = "minmax"
[parity]
samples = 8
random = 4
"""
SHARED_LINE = "eager reference lenet5 ["


def _plan(tmp_path: Path, text: str = PLAN) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


def _rows(data: dict) -> dict[str, list]:
    """job directory's last two parts -> every artifact's (file, status, summary, metrics) and the
    eager row's accuracy: every number parity compares, latencies aside."""
    out = {}
    for rep in data["reports"]:
        key = "/".join(str(rep["directory"]).rstrip("/").split("/")[-2:])
        out[key] = [(a["file"], a["status"], a["summary"], a["metrics"], a["sample_errors"])
                    for a in rep["artifacts"]] + [rep["eager"]["accuracy"], rep["inputs"]]
    return out


def test_shared_eager_outputs_give_the_numbers_of_a_run_with_the_model(tmp_path):
    """In one process: the driver's reference (built from the plan's job) fed to run_parity with
    no eager model at all (--no-latency, a re-used directory: export_or_reuse builds none) gives
    every number a run with the eager model gives; outputs of other inputs are refused."""
    import numpy as np

    from exporter.matrix import parse_plan
    from exporter.matrix.jobs import job_request
    from exporter.matrix.plan import with_threads
    from exporter.matrix.reference import compute_reference, parity_inputs, reference_key
    from exporter.parity import EagerOutputs, run_parity
    from exporter.reuse import export_or_reuse

    plan = parse_plan({"models": ["lenet5"], "formats": ["onnx"], "precisions": ["fp32"],
                       "parity": {"samples": 4, "random": 2, "latency": False}})
    job = with_threads(plan.jobs(tmp_path)[0], 1)
    made = export_or_reuse(job_request(job), say=lambda _m: None)
    again = export_or_reuse(job_request(job), say=lambda _m: None, reference=False)
    assert made.reference is not None and again.reference is None and "re-using" in again.note
    shared = compute_reference(job)
    assert shared.key == reference_key(job) and [s.name for s in shared.inputs] == ["photos", "random"]
    assert [len(v) for v in shared.eager.outputs.values()] == [4, 2]
    kwargs = dict(spec=again.spec, recipe=again.recipe, latency=False, threads=1)
    without_model = run_parity(job.output, None, inputs=shared.inputs, eager_outputs=shared.eager, **kwargs)
    with_model = run_parity(job.output, made.reference, inputs=parity_inputs(job, made.spec), **kwargs)
    a, b = without_model.artifacts[0], with_model.artifacts[0]
    assert a.status == b.status == "ok" and a.summary == b.summary and a.summary["rel_max_abs"] < 1e-4
    assert a.sample_errors == b.sample_errors and len(a.sample_errors) == 6
    assert without_model.eager.runtime == with_model.eager.runtime
    wrong = EagerOutputs({"photos": shared.eager.outputs["photos"][:3], "random": np.zeros((2, 10))})
    with pytest.raises(ValueError, match="not on these inputs"):
        run_parity(job.output, None, inputs=shared.inputs, eager_outputs=wrong, **kwargs)
    with pytest.raises(ValueError, match="needs the eager reference model"):
        run_parity(job.output, None, inputs=shared.inputs, eager_outputs=shared.eager,
                   **{**kwargs, "latency": True})


@pytest.mark.slow
def test_reference_computed_once_and_rows_equal_per_job_references(tmp_path):
    """One model x (fp32, int8) = two jobs, one eager reference: the driver computes it once (its
    log line, once), both jobs use it, and every parity number equals that of jobs computing
    their own reference."""
    from exporter.matrix.driver import run_jobs
    from exporter.matrix.executors import LocalExecutor
    from exporter.matrix.merge import write_matrix_report
    from exporter.matrix.plan import load_plan, with_threads

    plan, shared_out = _plan(tmp_path), tmp_path / "shared"
    proc = run_cli("matrix", str(plan), "--output", str(shared_out), "--jobs", "2", "--no-latency")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(SHARED_LINE) == 1, proc.stderr[-3000:]
    assert "computed once in the driver, shared by 2 job(s) (lenet5/fp32, lenet5/int8)" in proc.stderr
    shared = json.loads((shared_out / "report.json").read_text())
    assert [j["eager_reference"] for j in shared["jobs"]] == ["shared by the driver"] * 2
    assert len(list((shared_out / ".matrix").glob("reference-*.pkl"))) == 1

    own_out = tmp_path / "own"
    executor = LocalExecutor(2, own_out)
    jobs = [with_threads(j, executor.threads) for j in load_plan(plan, parity={"latency": False}).jobs(own_out)]
    lines: list[str] = []
    results = run_jobs(jobs, executor, progress=False, say=lines.append, share_reference=False)
    assert not any(SHARED_LINE in line for line in lines)
    assert [r["eager_reference"] for r in results] == ["computed in the job"] * 2
    own = json.loads(write_matrix_report(results, own_out, "own")["json"].read_text())
    rows = _rows(shared)
    assert sorted(rows) == ["lenet5/fp32", "lenet5/int8"] and rows == _rows(own)
    fp32 = rows["lenet5/fp32"]
    assert [r[0] for r in fp32[:2]] == ["lenet5.onnx", "lenet5.ts.pt"]
    assert all(r[1] == "ok" and r[2]["rel_max_abs"] < 1e-4 for r in fp32[:2])
    assert [j["artifacts"] for j in shared["jobs"]] == [r["artifacts"] for r in results]


@pytest.mark.slow
def test_shared_reference_with_latency_still_times_eager_in_the_job(tmp_path):
    """Latency on: the outputs are shared, the eager model is still timed in the job's process."""
    plan = _plan(tmp_path, PLAN.replace('precisions = ["fp32", "int8"]', 'precisions = ["fp32", "fp16"]')
                 .replace('formats = ["onnx", "torchscript"]', 'formats = ["onnx"]'))
    out = tmp_path / "out"
    proc = run_cli("matrix", str(plan), "--output", str(out), "--jobs", "1", "--runs", "3",
                   "--warmup", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(SHARED_LINE) == 1
    data = json.loads((out / "report.json").read_text())
    assert [j["eager_reference"] for j in data["jobs"]] == ["shared by the driver"] * 2
    for rep in data["reports"]:
        assert set(rep["eager"]["latency"]) == {"1", "8"}
        assert all(rep["eager"]["latency"][b]["p50_ms"] > 0 and rep["eager"]["latency"][b]["runs"] == 3
                   for b in ("1", "8"))
        assert all(set(a["speedup_vs_eager"]) == {"1", "8"} for a in rep["artifacts"])


@pytest.mark.slow
def test_file_url_output_uploads_jobs_and_report_and_rerun_skips(tmp_path):
    """--output file://DIR goes through fsspec: each job's directory is written locally, uploaded
    under the URL (result file last), the report lands at the URL's top; a re-run reads the remote
    manifests and skips; a job whose remote result is gone runs again."""
    plan = _plan(tmp_path, PLAN.replace('precisions = ["fp32", "int8"]', 'precisions = ["fp32"]')
                 .replace('formats = ["onnx", "torchscript"]', 'formats = ["onnx"]'))
    pytest.importorskip("fsspec", reason="pip install 'zoo-exporter[remote]'")
    top = tmp_path / "bucket" / "zoo"
    url = f"file://{top}"
    command = ("matrix", str(plan), "--output", url, "--jobs", "1", "--no-latency")
    proc = run_cli(*command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 job(s): 1 ok" in proc.stdout and f"report: {url}/report.md" in proc.stdout
    job = top / "lenet5" / "fp32"
    manifest = json.loads((job / "manifest.json").read_text())
    onnx = job / "lenet5.onnx"
    assert [a["file"] for a in manifest["artifacts"]] == ["lenet5.onnx"]
    assert onnx.stat().st_size == manifest["artifacts"][0]["bytes"]
    assert (job / "matrix-job.json").is_file() and not list(top.rglob(".*staging*"))
    assert not (top / ".matrix").exists()  # shared values stay in a local scratch directory
    data = json.loads((top / "report.json").read_text())
    assert (top / "report.md").is_file() and data["ok"]
    assert data["reports"][0]["directory"] == f"{url}/lenet5/fp32"
    assert data["reports"][0]["artifacts"][0]["summary"]["rel_max_abs"] < 1e-4

    before = onnx.stat().st_mtime_ns
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 skipped" in again.stdout and onnx.stat().st_mtime_ns == before
    (job / "matrix-job.json").unlink()  # as an upload cut off before its commit mark
    third = run_cli(*command)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "0 skipped" in third.stdout and (job / "matrix-job.json").is_file()


@pytest.mark.parametrize("url, code, words", [
    ("nosuchproto://bucket/zoo", EXIT_USAGE, "fsspec has no filesystem for 'nosuchproto://'"),
    ("s3://bucket/zoo", EXIT_ENVIRONMENT, "the 's3://' filesystem's package is not installed"),
])
def test_url_output_errors_name_the_fix(tmp_path, url, code, words):
    pytest.importorskip("fsspec", reason="pip install 'zoo-exporter[remote]'")
    if url.startswith("s3") and __import__("importlib").util.find_spec("s3fs"):
        pytest.skip("s3fs is installed here")
    proc = run_cli("matrix", str(_plan(tmp_path)), "--output", url, "--no-latency", timeout=300)
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr


def test_url_output_without_fsspec_names_the_extra(tmp_path):
    """fsspec absent (the import fails, as where it is not installed): exit 5, the [remote] extra."""
    code = ("import sys; sys.modules['fsspec'] = None; from exporter.cli import main; "
            f"sys.exit(main(['matrix', {str(_plan(tmp_path))!r}, '--output', 'file:///tmp/zoo-x']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == EXIT_ENVIRONMENT, proc.stderr
    assert "needs fsspec, which is not installed" in proc.stderr
    assert "pip install 'zoo-exporter[remote]'" in proc.stderr and "Traceback" not in proc.stderr
