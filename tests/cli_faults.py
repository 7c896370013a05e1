"""Helpers of the bad-input and fault corpus: run the CLI as a user does (a subprocess), hash a
directory tree before and after, and check the one-error-line contract."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

EXPORTER = [sys.executable, "-m", "exporter"]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300,
            preexec=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([*EXPORTER, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec)


def tree_hash(root: Path) -> dict[str, str]:
    """{relative path: sha256 (files) / 'dir' / 'link'} of everything under ``root``."""
    out: dict[str, str] = {}
    for path in sorted(Path(root).rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def error_lines(stderr: str) -> tuple[list[str], list[str]]:
    lines = stderr.splitlines()
    return [ln for ln in lines if ln.startswith("error:")], [ln for ln in lines if ln.startswith("fix:")]


def assert_one_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one ``error:`` and one ``fix:`` line, no traceback; returns the
    error line (each of ``needles`` must be in it or the fix)."""
    errors, fixes = error_lines(proc.stderr)
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(errors) == 1 and len(fixes) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0] or needle in fixes[0], (needle, errors[0], fixes[0])
    return errors[0]


def copy_export(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
