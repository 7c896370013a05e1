"""``exporter matrix`` on a real local Ray instance (``ray.init(num_cpus=2)``: a raylet and its
worker processes): the same job function, the same rows as the local executor, and a killed worker
costs one retry, not the plan."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from exporter.matrix import parse_plan
from exporter.matrix.driver import run_jobs
from exporter.matrix.jobs import run_job
from exporter.matrix.merge import write_matrix_report
from exporter.matrix.plan import with_threads

from test_matrix import EXAMPLE_PLAN, rows_by_artifact, run_cli

# slow as a module: its subprocess runs outgrow the default suite's ~20 min on 2 cores (run with --runslow)
pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="pip install 'zoo-exporter[ray]'")

PLAN = {"models": ["lenet5"], "formats": ["onnx"], "precisions": ["fp32", "int8"],
        "calibration": {"data": "packaged", "samples": 16, "method": "minmax"},
        "parity": {"samples": 8, "random": 4, "latency": False}}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _ray_jobs(plan: dict, out: Path):
    from exporter.matrix.executors import RayExecutor

    executor = RayExecutor("auto")
    jobs = [with_threads(j, executor.threads) for j in parse_plan(plan).jobs(out)]
    return jobs, executor


def test_ray_tasks_run_the_same_job_function(cluster, tmp_path):
    plan = {**PLAN, "precisions": ["fp32"], "models": ["lenet5", "nin"], "reduced": True}
    jobs, executor = _ray_jobs(plan, tmp_path / "ray")
    assert executor.slots == 2 and executor.threads == 1
    results = run_jobs(jobs, executor, progress=False)
    assert [r["status"] for r in results] == ["ok", "ok"], [r.get("error") for r in results]
    assert {r["where"]["executor"] for r in results} == {"ray"}
    assert all(r["where"]["pid"] != os.getpid() and r["attempts"] == 1 for r in results)
    # the same job run in this process (what a local worker does) writes byte-identical ONNX
    local = [run_job(with_threads(j, 1), None) for j in parse_plan(plan).jobs(tmp_path / "here")]
    for a, b in zip(results, local):
        assert a["artifacts"] == b["artifacts"] and a["artifacts"]
        assert [x["summary"] for x in a["report"]["artifacts"]] == \
            [x["summary"] for x in b["report"]["artifacts"]]


def _kill_first_running_job(keys: list[str], killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker process found running a job (its title is ray::<job key>)."""
    titles = tuple(f"ray::{k}".encode() for k in keys)
    while not stop.is_set() and not killed:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(titles):
                time.sleep(1)  # mid-job: it has started exporting
                try:  # still on that job (a fast job may be done and its worker idle)
                    still = Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline
                except OSError:
                    still = False
                if still:
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_report_is_whole(cluster, tmp_path):
    plan = {**PLAN, "models": ["lenet5", "nin"], "reduced": True}
    jobs, executor = _ray_jobs(plan, tmp_path)
    killed: list[int] = []
    stop = threading.Event()
    int8_keys = [j.key for j in jobs if j.precision == "int8"]  # the longer jobs (calibration)
    killer = threading.Thread(target=_kill_first_running_job, args=(int8_keys, killed, stop), daemon=True)
    killer.start()
    try:
        results = run_jobs(jobs, executor, progress=False)
    finally:
        stop.set()
    assert len(killed) == 1
    assert [r["status"] for r in results] == ["ok"] * 4, [r.get("error") for r in results]
    # each model's eager reference went through Ray's object store once, to both its jobs
    assert {r["eager_reference"] for r in results} == {"shared by the driver"}
    retried = [r for r in results if r["attempts"] == 2]
    assert len(retried) == 1 and retried[0]["where"]["pid"] != killed[0]
    paths = write_matrix_report(results, tmp_path, "fault test")
    data = __import__("json").loads(paths["json"].read_text())
    assert data["ok"] and len(data["reports"]) == 4 and not data["failures"]
    assert not list(tmp_path.rglob(".*staging-*"))  # the killed attempt's staging was cleared


@pytest.mark.slow
def test_cli_ray_rows_equal_local_jobs_1_rows(tmp_path):
    """The README's --ray auto command gives the rows and artifacts a local --jobs 1 run gives."""
    local, remote = tmp_path / "local", tmp_path / "ray"
    for out, where in ((local, ("--jobs", "1")), (remote, ("--ray", "auto"))):
        proc = run_cli("matrix", str(EXAMPLE_PLAN), "--output", str(out), *where, "--no-latency",
                       "--threads", "1")
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by_artifact(local / "report.json")
    assert len(rows) == 6 and rows == rows_by_artifact(remote / "report.json")
    assert all(r["status"] == "ok" for r in rows.values())


@pytest.mark.slow
def test_ray_jobs_share_the_reference_and_upload_to_a_url(cluster, tmp_path):
    """Ray tasks with a file:// --output: each model's eager reference goes through the object
    store once, every job uploads its directory under the URL (result file included), and the
    skip check reads it back from the URL."""
    pytest.importorskip("fsspec", reason="pip install 'zoo-exporter[remote]'")
    from exporter.matrix.jobs import cached_result

    url = f"file://{tmp_path}/zoo"
    jobs, executor = _ray_jobs(PLAN, url)
    lines: list[str] = []
    results = run_jobs(jobs, executor, progress=False, say=lines.append)
    assert [r["status"] for r in results] == ["ok", "ok"], [r.get("error") for r in results]
    assert [r["eager_reference"] for r in results] == ["shared by the driver"] * 2
    assert sum("computed once in the driver" in line for line in lines) == 1
    for job, result in zip(jobs, results):
        local = tmp_path / "zoo" / job.key
        assert (local / "manifest.json").is_file() and (local / "matrix-job.json").is_file()
        assert result["report"]["directory"] == f"{url}/{job.key}"
        assert cached_result(job)["artifacts"] == result["artifacts"]
