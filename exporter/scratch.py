"""Scratch directories in the system temp folder, named ``zoo-exporter-KIND-PID-HOST-XXXX`` (HOST:
a short hash of the host name, for a temp folder containers share) so that a later run can remove
those a killed run (SIGKILL, power loss) left behind.

A signal or error removes a run's own scratch directories as it unwinds; only a process that never
unwinds leaves one, and :func:`sweep_stale_scratch` removes those whose process is gone.
"""
from __future__ import annotations

import os
import re
import hashlib
import shutil
import socket
import tempfile
from pathlib import Path

PREFIX = "zoo-exporter-"
_NAME = re.compile(rf"{PREFIX}[a-z0-9]+-(\d+)-([0-9a-f]{{6}})-[^/]+")


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _prefix(kind: str) -> str:
    return f"{PREFIX}{kind}-{os.getpid()}-{_host()}-"


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A self-removing scratch directory (a context manager, or ``.cleanup()``)."""
    return tempfile.TemporaryDirectory(prefix=_prefix(kind))


def make_scratch(kind: str) -> Path:
    """A scratch directory the caller removes."""
    return Path(tempfile.mkdtemp(prefix=_prefix(kind)))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def sweep_stale_scratch(root: str | Path | None = None) -> list[Path]:
    """Remove this user's scratch directories whose process no longer runs; returns them."""
    removed: list[Path] = []
    host = _host()
    folder = Path(root or tempfile.gettempdir())
    try:
        candidates = list(folder.glob(PREFIX + "*"))
    except OSError:
        return removed
    for path in candidates:
        match = _NAME.fullmatch(path.name)
        try:
            mine = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if (match and mine and match[2] == host and int(match[1]) != os.getpid()
                and not pid_alive(int(match[1]))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
