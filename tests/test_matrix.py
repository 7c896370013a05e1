"""``exporter matrix``: the plan is checked up front; the local executor runs it from the CLI the
way users do; a re-run skips what was proved; the merged report has every job and says where it
ran. Ray tests: tests/test_matrix_ray.py."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from exporter.output_dir import STAGING_PREFIX
from exporter.backends import registry
from exporter.errors import EXIT_INPUT, PlanError
from exporter.matrix import parse_plan

# slow as a module: its subprocess runs outgrow the default suite's ~20 min on 2 cores (run with --runslow)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLAN = ROOT / "examples" / "matrix-small.toml"  # the README's plan


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def weights_digest(path: Path) -> str:
    """sha256 of an artifact; for TorchScript archives, of their tensors only (torch writes a
    random serialization id and process-dependent class names into each archive)."""
    if path.suffix != ".pt":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if "/constants/" in name or "/data/" in name:  # the tensors, not the pickled names
                digest.update(name.split("/", 1)[1].encode() + archive.read(name))
    return digest.hexdigest()


def rows_by_artifact(report_json: Path) -> dict[tuple[str, str], dict]:
    """(job directory relative to the output, file) -> summary metrics and weights digest."""
    data = json.loads(report_json.read_text())
    top = report_json.parent
    out = {}
    for rep in data["reports"]:
        directory = Path(rep["directory"])
        for art in rep["artifacts"]:
            out[(os.path.relpath(directory, top), art["file"])] = {"summary": art["summary"], "status": art["status"],
                                       "digest": weights_digest(directory / art["file"])}
    return out


def test_plan_expands_globs_and_drops_cells_no_format_produces():
    plan = parse_plan({"models": ["resnet1*", "lenet5"], "formats": list(registry.export_formats()),
                       "precisions": ["fp32", "int8"], "reduced": True,
                       "calibration": {"data": "packaged"}})
    names = [name for _, name, _ in plan.models]
    assert names == ["resnet101", "resnet152", "resnet18", "lenet5"]
    jobs = plan.jobs("out")
    int8_formats = [f for f in registry.export_formats() if "int8" in registry.get(f).precisions]
    assert len(jobs) == 4 * 2  # one CPU job per model x precision
    assert next(j for j in jobs if j.key == "lenet5/int8").formats == tuple(int8_formats)
    assert all(j.quant == {} for j in jobs if j.precision == "fp32")
    assert {j.key.split("/")[0] for j in jobs} >= {"resnet18@64", "lenet5"}  # reduced sizes in the key
    assert len(plan.dropped) == len(registry.export_formats()) - len(int8_formats)


def test_gpu_formats_get_their_own_gpu_job():
    device_formats = [f for f, b in registry.BACKENDS.items() if b.device]
    if not device_formats:
        pytest.skip("no device format in the registry")
    plan = parse_plan({"models": ["lenet5"], "formats": ["onnx", device_formats[0]],
                       "precisions": ["fp32"], "resources": {"gpu": "H100"}})
    cpu, gpu = plan.jobs("out")
    assert (cpu.needs_gpu, cpu.gpu_model, cpu.formats) == (False, None, ("onnx",))
    assert (gpu.needs_gpu, gpu.gpu_model, gpu.formats) == (True, "H100", (device_formats[0],))
    assert gpu.key == f"lenet5/fp32-{device_formats[0]}"


def test_every_problem_of_a_plan_in_one_error():
    with pytest.raises(PlanError) as info:
        parse_plan({"models": ["lenet5", "resnet81", "nosuch*"], "formats": ["onnx", "onxx"],
                    "precisions": ["fp32", "int4", "int8"], "colour": 1})
    err = info.value
    assert err.exit_code == EXIT_INPUT and "nothing was run" in err.fix
    for part in ("'resnet81'", "'nosuch*' matches no recipe", "['onxx']", "['int4']",
                 "int8 needs calibration data", "['colour']", "6 problem(s)"):
        assert part in err.message, (part, err.message)


def test_every_bad_calibration_value_of_a_plan_up_front_by_its_plan_key():
    """They failed inside every job, after its work ('unknown --target', fix 'rerun the plan')."""
    with pytest.raises(PlanError) as info:
        parse_plan({"models": ["lenet5"], "formats": ["onnx"], "precisions": ["int8"],
                    "calibration": {"data": "packaged", "samples": -5, "method": "foo",
                                    "target": "gpu", "max_accuracy_drop": 2.0,
                                    "max_kept_fraction": 1.5}})
    for part in ("samples must be >= 1, got -5", "unknown target 'gpu'", "unknown method 'foo'",
                 "max_kept_fraction must be a fraction 0..1, got 1.5",
                 "max_accuracy_drop 2 needs labelled held-out images", "5 problem(s)"):
        assert part in info.value.message, (part, info.value.message)
    assert "--" not in info.value.message  # plan keys, not command-line flags


def test_a_failed_jobs_error_and_fix_name_the_plans_keys_not_flags(tmp_path):
    """A budget miss inside a plan's job said '--max-kept-fraction 0' and 'use --precision fp16'
    to a user who wrote a plan file."""
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["lenet5"]\nformats = ["onnx"]\nprecisions = ["int8"]\n[calibration]\n'
                    'data = "packaged"\nmin_agreement = 1.0\nmax_kept_fraction = 0.0\n')
    proc = run_cli("matrix", str(plan), "--output", str(tmp_path / "out"), "--jobs", "1", "--no-progress",
                   timeout=600)
    assert proc.returncode == 6, proc.stderr[-3000:]
    said = proc.stderr + (tmp_path / "out" / "report.md").read_text()
    assert "([calibration] max_kept_fraction = 0; the conv kept out by rule counts toward it" in said
    assert 'fix: use precisions = ["fp16"], loosen the budget with [calibration] min_agreement = A' in said
    assert "[calibration] max_kept_fraction = 0.25" in said
    assert "--max-kept-fraction" not in said and "--precision" not in said and "--min-agreement" not in said


def test_cli_bad_plan_exits_4_before_anything_runs(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["lenet5"]\nformats = ["onnx", "tflitex"]\n')
    out = tmp_path / "out"
    proc = run_cli("matrix", str(plan), "--output", str(out), timeout=300)
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert "unknown format(s) ['tflitex']" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_cli_local_run_report_and_rerun_skips(tmp_path):
    """The README's command: lenet5 + nin x onnx, torchscript x fp32, int8 on 2 local workers."""
    out = tmp_path / "artifacts" / "matrix"
    command = ("matrix", str(EXAMPLE_PLAN), "--output", str(out), "--jobs", "2", "--no-latency")
    proc = run_cli(*command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 job(s): 4 ok" in proc.stdout and "torchscript x int8" in proc.stdout
    assert "\r" not in proc.stderr and "matrix: 4/4 job(s) done" in proc.stderr  # a log, not bar frames
    data = json.loads((out / "report.json").read_text())
    keys = ["lenet5/fp32", "lenet5/int8", "nin@64/fp32", "nin@64/int8"]
    assert data["ok"] and [j["key"] for j in data["jobs"]] == keys
    assert {j["where"]["executor"] for j in data["jobs"]} == {"local"}
    assert all(j["threads"] == 1 and j["attempts"] == 1 for j in data["jobs"])  # 2 cores / 2 jobs
    files = [[a["file"] for a in r["artifacts"]] for r in data["reports"]]
    assert files == [["lenet5.onnx", "lenet5.ts.pt"], ["lenet5.int8.tensorrt.onnx"],
                     ["nin.onnx", "nin.ts.pt"], ["nin.int8.tensorrt.onnx"]]
    for rep in data["reports"]:
        for art in rep["artifacts"]:
            limit = 1e-4 if art["precision"] == "fp32" else 1.0
            assert art["status"] == "ok" and art["summary"]["rel_max_abs"] < limit
            assert art["summary"]["cosine"] > (0.99999 if art["precision"] == "fp32" else 0.9)
    md = (out / "report.md").read_text()
    assert "## Jobs" in md and "| lenet5/int8 | ok | local on" in md
    summary = md[md.index("## Summary"):md.index("## Jobs")]  # one row per job: the precision said
    assert "| lenet5/fp32 | 2 |" in summary and "| lenet5/int8 | 1 |" in summary
    assert "- lenet5.int8.tensorrt.onnx: INT8 at export: " in md and "-> met: top-1 agreement" in md
    assert not (out / ".matrix").exists()  # the pickled calibration/reference shares are removed
    int8 = out / "lenet5" / "int8" / "lenet5.int8.tensorrt.onnx"
    before = int8.stat().st_mtime_ns
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 skipped" in again.stdout and int8.stat().st_mtime_ns == before
    rerun = json.loads((out / "report.json").read_text())
    assert [r["artifacts"] for r in rerun["reports"]] == [r["artifacts"] for r in data["reports"]]


def _wait_for_staging(out: Path, proc=None, timeout: float = 600) -> None:
    """Until a job has started writing (its staging directory exists)."""
    import time

    end = time.time() + timeout
    while time.time() < end and not list(out.rglob(f"{STAGING_PREFIX}*")):
        assert proc is None or proc.poll() is None, "finished before any job started"
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_local_worker_is_retried(tmp_path):
    """SIGKILL a worker of the local pool mid-job: the pool is restarted, the jobs it held are
    retried once, and every job still reports."""
    import signal
    import threading

    from exporter.matrix.driver import run_jobs
    from exporter.matrix.executors import LocalExecutor
    from exporter.matrix.plan import load_plan, with_threads

    out = tmp_path / "out"
    executor = LocalExecutor(2, out)
    jobs = [with_threads(j, executor.threads) for j in load_plan(EXAMPLE_PLAN).jobs(out)]
    jobs = [j for j in jobs if j.precision == "fp32"]
    killed: list[int] = []

    def kill_one() -> None:
        _wait_for_staging(out)
        pool = executor._pool
        pid = next(iter(pool._processes))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    results = run_jobs(jobs, executor, progress=False)
    killer.join(5)
    assert len(killed) == 1
    assert [r["status"] for r in results] == ["ok", "ok"], [r.get("error") for r in results]
    assert any(r["attempts"] == 2 for r in results)
    assert all(r["where"]["pid"] not in killed for r in results)
    assert not list(out.rglob(f"{STAGING_PREFIX}*"))


@pytest.mark.slow
@pytest.mark.parametrize("whole_group", [True, False], ids=["terminal-ctrl-c", "driver-only"])
def test_ctrl_c_cancels_cleanly(tmp_path, whole_group):
    """SIGINT mid-plan, to the CLI's process group (a terminal's Ctrl-C) or to the driver alone:
    exit 130 within seconds, no worker left, no half-written artifact directory, and no empty
    folder the run made. The workers used to go on with the queued jobs (the pool sent a
    SIGTERM-unwound job's SystemExit back as its result) for ~14 s."""
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "matrix", str(EXAMPLE_PLAN),
                             "--output", str(out), "--jobs", "2", "--no-latency"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for_staging(out, proc)
    sent = time.time()
    if whole_group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    took = time.time() - sent
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert took < 10, f"{took:.1f} s from SIGINT to exit"

    for _ in range(100):  # multiprocessing's resource tracker exits once its last client has
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout
        if not left.strip():
            break
        time.sleep(0.1)
    assert left.strip() == "", subprocess.run(["ps", "-o", "pid,args", "-g", str(proc.pid)],
                                              capture_output=True, text=True).stdout
    folders = [p for p in out.rglob("*") if p.is_dir()] if out.exists() else []
    assert all(any(p.iterdir()) for p in folders) and (not out.exists() or any(out.iterdir())), folders
    for manifest_dir in (p for p in out.glob("*/*") if p.is_dir()):
        assert (manifest_dir / "manifest.json").is_file(), f"{manifest_dir} half-written"


def test_calibration_split_is_read_once_and_used_by_the_job(tmp_path):
    """One shared split per distinct preprocessing; a job's read of the same request returns it
    (the same samples a fresh read gives) instead of reading the source again."""
    from dataclasses import replace

    import numpy as np

    from exporter.builders import resolve_model
    from exporter.matrix.driver import share_calibration
    from exporter.matrix.executors import LocalExecutor
    from exporter.matrix.jobs import calibration_args, resolve
    from exporter.matrix.plan import load_plan
    from exporter.quantize import calibration as cal

    out = tmp_path / "out"
    jobs = load_plan(EXAMPLE_PLAN).jobs(out)
    refs = share_calibration(jobs, LocalExecutor(1, out))
    assert sorted(refs) == ["lenet5/int8", "nin@64/int8"]
    assert len(list((out / ".matrix").glob("calibration-*.pkl"))) == 2
    job = next(j for j in jobs if j.key == "nin@64/int8")
    _, spec = resolve_model(job.model, input_size=job.input_size)
    samples, holdout, seed = calibration_args(job.quant)
    assert (samples, holdout) == (16, cal.DEFAULT_HOLDOUT)
    fresh = cal.load_split("packaged", spec, samples, holdout, seed=seed)
    shared = resolve(refs[job.key])
    key = cal.preload_key("packaged", spec, samples, holdout, seed)
    marked = (replace(shared[0], array=shared[0].array + 1.0), shared[1])
    cal.preload(key, marked)
    try:
        got, held = cal.load_split("packaged", spec, samples, holdout, seed=seed)
    finally:
        cal._PRELOADED.clear()
    assert np.array_equal(shared[0].array, np.asarray(fresh[0].array))
    assert np.array_equal(got.array, shared[0].array + 1.0)  # the shared one, not a re-read
    assert len(held) == len(fresh[1]) == holdout
