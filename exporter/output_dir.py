"""The export's output directory: checked before any work, claimed only when the exporter owns it,
and filled through a staging directory inside it (same filesystem, so the final renames cannot fail
with EXDEV) that is removed on any failure or signal. A run killed with SIGKILL leaves its staging
directory behind; the next run into the same directory sweeps it (recognized by name and marker
file, and only once its owning process is gone). Files the exporter did not write are never
overwritten or removed.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .artifacts import (MANIFEST, artifact_files, is_ours, read_manifest_if_any, sha256_file, time_now,
                        validate_manifest)
from .errors import ArtifactError, OutputLocationError, OutputPathError
from .scratch import pid_alive

STAGING_PREFIX = ".zoo-exporter-staging-"
STAGING_MARKER = ".zoo-exporter-staging.json"


# ----------------------------------------------------------------------- output location
def without_parent_steps(directory: Path) -> Path:
    """``directory`` with its ``..`` steps resolved (``a/../b`` -> ``b``), so that making it does not
    first make ``a``; symlinks before a ``..`` are followed, as the kernel would. Unchanged when it
    has no ``..``."""
    if ".." not in Path(directory).parts:
        return Path(directory)
    real = os.path.realpath(directory)
    return Path(real if Path(directory).is_absolute() else os.path.relpath(real))


def check_output_location(directory: Path) -> None:
    """Refuse an ``--output`` that cannot hold an export, before any work is done."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputPathError(f"--output {directory} is an existing file, not a directory",
                              fix="pass a directory path (new or existing) to --output")
    existing = directory
    while not existing.exists():
        if existing.is_symlink():
            raise OutputPathError(f"--output {directory}: {existing} is a dangling symlink",
                                  fix="remove the link or pass another --output")
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"--output {directory} is under {existing}, which is a file",
                              fix="pass a directory path that is not inside a regular file")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only filesystem" if _read_only(existing) else "not writable by this user"
        raise OutputLocationError(f"--output {directory}: {existing} is {why}",
                                  fix="pass a writable --output directory")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_free_space(directory: Path, needed: int) -> None:
    """Refuse up front when the filesystem of ``directory`` has less than ``needed`` bytes free."""
    existing = Path(directory)
    while not existing.exists():
        existing = existing.parent
    stats = os.statvfs(existing)
    if stats.f_blocks == 0:  # /proc, /sys: a kernel filesystem with no storage
        raise OutputLocationError(f"--output {directory}: {existing} is a kernel filesystem that "
                                  "stores no files", fix="pass --output on a disk, e.g. --output artifacts")
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise OutputLocationError(
            f"--output {directory}: {free / 2**20:.1f} MiB free, the export needs about "
            f"{needed / 2**20:.1f} MiB", fix="free space there or pass --output on another filesystem")


def claim_output_dir(directory: Path, model: str) -> dict[str, Any] | None:
    """Check that an export of ``model`` may go into ``directory``; returns its manifest (ours) or
    None. A manifest.json the exporter did not write, or one holding another model's export whose
    files are still there, is refused rather than overwritten or dropped."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        data = None
    if not is_ours(data):
        raise ArtifactError(f"{path} exists and was not written by zoo-exporter; an export there "
                            "would overwrite it", fix="pass --output to another directory")
    validate_manifest(data, Path(directory))
    present = [a["file"] for a in data["artifacts"] if (Path(directory) / a["file"]).exists()]
    if data.get("model") != model and present:
        raise ArtifactError(
            f"{directory} holds the export of {data.get('model')} ({', '.join(present[:4])}); "
            f"exporting {model} there would drop it from the manifest",
            fix=f"pass --output {Path(directory) / model} (one directory per model)")
    return data


# ----------------------------------------------------------------------- staging
def sweep_stale_staging(directory: Path) -> list[Path]:
    """Remove staging directories in ``directory`` left by killed runs of this host; returns them."""
    removed: list[Path] = []
    if not Path(directory).is_dir():
        return removed
    for stage in Path(directory).glob(STAGING_PREFIX + "*"):
        marker = stage / STAGING_MARKER
        try:
            owner = json.loads(marker.read_text())
            pid, host = int(owner["pid"]), owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or still being created: leave it
        if host == socket.gethostname() and pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


def _disk_error(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT/EROFS OSError behind ``err`` (itself or a cause), if any."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                                      errno.EFBIG):
            return err
        if "No space left on device" in str(err) or "file write failed" in str(err):
            return OSError(errno.ENOSPC, "No space left on device")
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _ours(old: dict[str, Any] | None) -> set[str]:
    if not old:
        return set()
    files = {name for a in old.get("artifacts", []) for name in artifact_files(a)}
    return files | {MANIFEST} | {f"{old.get('model')}.int8.calib.json"}


def refuse_foreign_files(final_dir: Path, names: Iterable[str], manifest: dict[str, Any] | None) -> None:
    """Refuse an export whose files ``names`` would replace files in ``final_dir`` that the
    exporter did not write (not in ``manifest``, the folder's); run before any work, and again at
    the commit."""
    ours = _ours(manifest)
    clash = sorted(n for n in set(names) if (Path(final_dir) / n).exists() and n not in ours)
    if clash:
        raise ArtifactError(f"{final_dir} already holds {', '.join(clash)}, which the exporter did "
                            "not write", fix="pass --output to another directory, or move those "
                                             "files away")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` itself (flock on its descriptor: no lock file), so two
    exporters committing into one folder take turns; a no-op where flock does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _commit(stage: Path, final_dir: Path) -> None:
    """Move the staged files into ``final_dir`` (artifacts first, the manifest last), under the
    folder's lock, after checking again what another exporter may have committed meanwhile."""
    with _locked(final_dir):
        new = json.loads((stage / MANIFEST).read_text()) if (stage / MANIFEST).is_file() else None
        # another model's export may have landed here while this one ran
        old = claim_output_dir(final_dir, new.get("model")) if new is not None \
            else read_manifest_if_any(final_dir)
        _move_into_place(stage, final_dir, old, new)


def _move_into_place(stage: Path, final_dir: Path, old: dict[str, Any] | None,
                     new: dict[str, Any] | None) -> None:
    items = [p for p in stage.iterdir() if p.name != STAGING_MARKER]
    refuse_foreign_files(final_dir, [p.name for p in items], old)
    items.sort(key=lambda p: p.name == MANIFEST)
    for item in items:
        target = final_dir / item.name
        if target.is_dir() and not target.is_symlink():  # a directory artifact of ours (.mlpackage)
            shutil.rmtree(target)
        item.replace(target)
    if old and new:  # entries the new manifest dropped: stale files of a replaced export
        listed = {name for a in new.get("artifacts", []) for name in artifact_files(a)}
        for entry in old.get("artifacts", []):
            records = [entry, *entry.get("companions", [])]
            for record in records:
                path = final_dir / record["file"]
                if record["file"] not in listed and path.is_file() and record.get("sha256") \
                        and sha256_file(path) == record["sha256"]:
                    path.unlink()


@contextmanager
def staging(final_dir: Path) -> Iterator[Path]:
    """Yield a staging directory inside ``final_dir``; on success its files move into place.

    On any exception or signal the staging directory is deleted, and ``final_dir`` is removed
    again when this call created it, so a failed command leaves nothing behind. A full disk is
    reported as :class:`OutputLocationError`.
    """
    final_dir = Path(final_dir)
    check_output_location(final_dir)
    created = [p for p in [final_dir, *final_dir.parents] if not p.exists()]
    stage = None
    try:
        final_dir.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(final_dir)
        stage = final_dir / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        stage.mkdir()
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time_now()}
        (stage / STAGING_MARKER).write_text(json.dumps(marker))
        yield stage
        _commit(stage, final_dir)
    except BaseException as err:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        for parent in created:  # directories this call created, deepest first
            try:
                parent.rmdir()
            except OSError:
                break
        disk = _disk_error(err) if isinstance(err, Exception) else None
        if disk is not None:
            what = {errno.EROFS: "is read-only",
                    errno.EFBIG: "refused a file over the size limit (ulimit -f)"}.get(disk.errno, "is full")
            fix = ("raise the file size limit (ulimit -f) or pass --output elsewhere"
                   if disk.errno == errno.EFBIG else
                   "free space there or pass --output on another filesystem")
            raise OutputLocationError(
                f"the filesystem of {final_dir} {what} ({disk.strerror or disk}); nothing was "
                "written", fix=fix) from err
        raise
    shutil.rmtree(stage, ignore_errors=True)
