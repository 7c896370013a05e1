"""Real faults against the CLI in a subprocess: SIGTERM and SIGKILL of a running export, a full
filesystem (a small tmpfs), a file size limit (``ulimit -f``), a read-only bind mount, a mount
point as ``--output`` (no EXDEV), a stalled network (a loopback socket that never answers), and
the trust/ownership rules that keep a directory's files and manifest entries."""
from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cli_faults import EXPORTER, assert_one_error, copy_export, run_cli, tree_hash

# slow as a module: its subprocess runs outgrow the default suite's ~20 min on 2 cores (run with --runslow)
pytestmark = pytest.mark.slow

STAGING = ".zoo-exporter-staging-"


@pytest.fixture(scope="module")
def lenet_export(tmp_path_factory) -> Path:
    from exporter.pipeline import ExportRequest, export

    out = tmp_path_factory.mktemp("shared") / "lenet5"
    export(ExportRequest(model="lenet5", formats=("onnx", "torchscript"), output=out, verify=False))
    return out


@contextlib.contextmanager
def mounted(target: Path, *args: str):
    """``mount ARGS target`` for the block, or skip where this machine cannot mount."""
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here (needs root and CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _start_export(out: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*EXPORTER, "export", "lenet5", "--format", "onnx,torchscript",
                             "--output", str(out)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_staging(out: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        found = list(out.glob(STAGING + "*")) if out.is_dir() else []
        if found and any(found[0].iterdir()):
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no staging directory appeared in {out} (rc {proc.poll()})")


def test_sigterm_cleans_up_and_exits_143(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    before = tree_hash(tmp_path)
    proc = _start_export(out, tmp_path)
    _wait_for_staging(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert_one_error(subprocess.CompletedProcess([], 143, "", stderr), 143, "SIGTERM")
    assert tree_hash(tmp_path) == before


def test_sigkill_leaves_staging_that_the_next_run_sweeps(tmp_path):
    out = tmp_path / "out"
    proc = _start_export(out, tmp_path)
    stale = _wait_for_staging(out, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert stale.is_dir() and (stale / ".zoo-exporter-staging.json").is_file()
    foreign = out / (STAGING + "not-ours")  # same prefix, no marker: not ours, never removed
    foreign.mkdir()
    rerun = run_cli(["export", "lenet5", "--output", "out", "--no-verify"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert not stale.exists() and foreign.is_dir()
    assert sorted(p.name for p in out.iterdir()) == sorted(["lenet5.onnx", "manifest.json",
                                                            foreign.name])


def test_full_filesystem_is_one_error_and_nothing_left(tmp_path):
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=300k", "tmpfs") as small:
        proc = run_cli(["export", "lenet5", "--output", str(small / "out")], cwd=tmp_path)
        assert_one_error(proc, 5, "MiB free", "free space")
        assert list(small.iterdir()) == []


def test_file_size_limit_mid_write_is_one_error_and_nothing_left(tmp_path):
    """``ulimit -f`` makes the ONNX write itself fail (EFBIG), after the up-front checks."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    before = tree_hash(tmp_path)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))

    proc = run_cli(["export", "lenet5", "--output", "out", "--no-verify"], cwd=tmp_path,
                   preexec=limit)
    assert_one_error(proc, 5, "size limit", "ulimit -f")
    assert tree_hash(tmp_path) == before


def test_running_out_of_memory_is_an_environment_error_not_a_bug(tmp_path):
    """An input size this machine cannot hold said 'internal error ... report it as a bug' (exit 1)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    proc = run_cli(["export", "resnet18", "--input-size", "1536", "--output", "out"], cwd=tmp_path,
                   preexec=limit)
    error = assert_one_error(proc, 5, "out of memory: an allocation of", "lower --input-size")
    assert "at most 6.0 GiB of address space (ulimit -v)" in error and "internal error" not in error
    assert list(tmp_path.iterdir()) == []


def test_read_only_mount_is_refused_up_front(tmp_path, lenet_export):
    src = copy_export(lenet_export, tmp_path / "src")
    before = tree_hash(src)
    with mounted(tmp_path / "ro", "--bind", "-o", "ro", str(src)) as ro:
        proc = run_cli(["export", "lenet5", "--output", str(ro)], cwd=tmp_path)
        assert_one_error(proc, 5, "read-only filesystem", "writable --output")
        sub = run_cli(["export", "lenet5", "--output", str(ro / "new")], cwd=tmp_path)
        assert_one_error(sub, 5, "read-only")
    assert tree_hash(src) == before


def test_mount_point_output_has_no_exdev(tmp_path):
    """Staging inside the target directory: a mount point as --output works and leaves no
    staging directory in its parent."""
    with mounted(tmp_path / "mnt", "-t", "tmpfs", "-o", "size=64m", "tmpfs") as mnt:
        proc = run_cli(["export", "lenet5", "--output", str(mnt), "--no-verify"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in mnt.iterdir()) == ["lenet5.onnx", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["mnt"]


def test_file_modes_follow_the_umask(tmp_path):
    proc = run_cli(["export", "lenet5", "--format", "onnx,torchscript", "--output", "out",
                    "--no-verify"], cwd=tmp_path, preexec=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes == {"lenet5.onnx": 0o644, "lenet5.ts.pt": 0o644, "manifest.json": 0o644}


class _Silent:
    """A loopback server that accepts connections and never answers (a stalled network)."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.held: list[socket.socket] = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()
        return self.sock.getsockname()[1]

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            with contextlib.suppress(OSError):
                self.held.append(self.sock.accept()[0])

    def __exit__(self, *exc):
        self.stop = True
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_stalled_weight_download_times_out(tmp_path):
    with _Silent() as port:
        proxy = f"http://127.0.0.1:{port}"
        env = {"https_proxy": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy,
               "no_proxy": "", "NO_PROXY": "", "TORCH_HOME": str(tmp_path / "hub"),
               "ZOO_EXPORTER_NET_TIMEOUT": "2"}
        start = time.time()
        proc = run_cli(["export", "torchvision:mobilenet_v3_small", "--weights", "DEFAULT",
                        "--output", "out"], cwd=tmp_path, env=env, timeout=240)
    assert_one_error(proc, 4, "no answer within 2s", "ZOO_EXPORTER_NET_TIMEOUT")
    assert time.time() - start < 200
    assert not (tmp_path / "out").exists()


def test_trusted_model_code_runs_only_when_named_again(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(4, 5))\n")
    made = run_cli(["export", "net.py:make", "--input-size", "16", "--output", "art", "--no-verify"],
                   cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    refused = run_cli(["parity", "--artifacts", "art", "--no-latency"], cwd=tmp_path)
    assert_one_error(refused, 2, f"by running {tmp_path / 'net.py'}:make")  # the manifest holds the absolute path
    for extra in (["net.py:make"], ["--trust-model-code"]):
        ok = run_cli(["parity", *extra, "--artifacts", "art", "--no-latency", "--samples", "0",
                      "--random", "2"], cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr


def test_two_models_in_one_directory_are_refused_and_the_first_kept(tmp_path, lenet_export):
    shared = copy_export(lenet_export, tmp_path / "shared")
    manifest = json.loads((shared / "manifest.json").read_text())
    proc = run_cli(["export", "mobilenet_v1", "--input-size", "32", "--output", "shared"],
                   cwd=tmp_path)
    assert_one_error(proc, 4, "holds the export of lenet5")
    assert json.loads((shared / "manifest.json").read_text()) == manifest


def test_debug_prints_the_traceback(tmp_path):
    proc = run_cli(["--debug", "export", "lenet5", "--batch", "0"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    after = run_cli(["export", "lenet5", "--batch", "0", "--debug"], cwd=tmp_path)
    assert after.returncode == 2 and "Traceback" in after.stderr
    plain = run_cli(["export", "lenet5", "--batch", "0"], cwd=tmp_path)
    assert "Traceback" not in plain.stderr


def test_internal_error_is_one_line_with_the_bug_hint(tmp_path):
    """A bug (here: an exception type nobody maps) is exit 1 with 'internal error' and --debug."""
    code = ("import sys, exporter.cli as c\n"
            "import exporter.commands.list as l\n"
            "l.run = lambda args: {}['missing']\n"
            "sys.exit(c.main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "list"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert_one_error(proc, 1, "internal error: KeyError", "--debug")


def test_two_models_exported_at_once_into_one_new_folder_never_both_succeed(tmp_path):
    """Both said 'done' (exit 0) and the folder held only the second model: the first's files
    were gone. The claim is checked again at the commit, under a lock on the folder."""
    procs = [subprocess.Popen([*EXPORTER, "export", model, "--output", "same", "--no-verify"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for model in ("lenet5", "nin")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 4], results
    loser = next(err for code, err in results if code == 4)
    assert "holds the export of" in loser and "one directory per model" in loser
    manifest = json.loads((tmp_path / "same" / "manifest.json").read_text())
    assert all((tmp_path / "same" / a["file"]).is_file() for a in manifest["artifacts"])
    assert sorted(p.name for p in (tmp_path / "same").iterdir()) == sorted(
        [a["file"] for a in manifest["artifacts"]] + ["manifest.json"])
