"""Scratch folders in the temp folder: a run killed with SIGKILL leaves its own behind, and the
next command removes exactly those (its process gone, this user's, our name), nothing else."""
from __future__ import annotations

import os
import subprocess
import time

from cli_faults import EXPORTER, run_cli

from exporter.scratch import _host


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_scratch_is_swept_by_the_next_command_and_nothing_else(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    host = _host()
    stale = tmp / f"zoo-exporter-samples-{_dead_pid()}-{host}-abc123"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "s1.npy").write_bytes(b"x" * 1000)
    live = tmp / f"zoo-exporter-samples-{os.getpid()}-{host}-def456"  # this test's process runs
    live.mkdir()
    other_host = "000000" if host != "000000" else "ffffff"  # a container sharing the temp folder
    dead = _dead_pid()
    other = [tmp / "zoo-exporter-notes", tmp / f"someone-else-{dead}-{host}-x",
             tmp / f"zoo-exporter-samples-{dead}-{other_host}-x", tmp / f"zoo-exporter-samples-{dead}-x"]
    for path in other:
        path.mkdir()
    stale_file = tmp / f"zoo-exporter-onnx-{_dead_pid()}-{host}-file"  # a file, not a folder: kept
    stale_file.write_text("keep")
    proc = run_cli(["list"], cwd=tmp_path, env={"TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    assert live.is_dir() and all(p.is_dir() for p in other) and stale_file.read_text() == "keep"


def test_sigkill_during_int8_calibration_leaves_scratch_that_the_next_run_removes(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([*EXPORTER, "export", "lenet5", "--precision", "int8", "--calibration",
                             "packaged", "--calibration-samples", "64", "-o", str(tmp_path / "out")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end, found = time.time() + 240, []
    while time.time() < end and proc.poll() is None and not found:
        found = [p for p in tmp.glob("zoo-exporter-samples-*") if any(p.iterdir())]
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=60)
    assert found, f"no samples scratch folder appeared in {tmp} (rc {proc.returncode})"
    assert found[0].is_dir() and found[0].name.startswith(f"zoo-exporter-samples-{proc.pid}-{_host()}-")
    rerun = run_cli(["list"], cwd=tmp_path, env={"TMPDIR": str(tmp)})
    assert rerun.returncode == 0, rerun.stderr
    assert not found[0].exists()
    assert not list(tmp.glob("zoo-exporter-*"))
