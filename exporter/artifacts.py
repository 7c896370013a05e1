"""Artifact bookkeeping: manifest entries with hashes, atomic staging, tool versions."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("zoo-exporter", "torch", "torchvision", "onnx", "onnxruntime", "onnxsim",
                    "onnxslim", "onnxscript", "onnxconverter-common", "numpy")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_entry(path: Path, fmt: str, precision: str, **details: Any) -> dict[str, Any]:
    """Manifest entry for one artifact file (its sha256 and size are computed here)."""
    return {"file": path.name, "format": fmt, "precision": precision, "sha256": sha256_file(path),
            "bytes": path.stat().st_size, "details": details}


def tool_versions() -> dict[str, str]:
    from importlib import metadata  # slow to import: kept off the CLI's start-up path

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    from .backends.registry import runtime_packages

    for name in dict.fromkeys(TRACKED_PACKAGES + runtime_packages()):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read ``directory/manifest.json`` (raises FileNotFoundError if absent)."""
    return json.loads((Path(directory) / MANIFEST).read_text())


def read_manifest_if_any(directory: Path) -> dict[str, Any] | None:
    """``directory``'s manifest, or None where there is none or it cannot be read."""
    try:
        return read_manifest(directory)
    except (OSError, ValueError):
        return None


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/zoo-exporter/<parts>`` (default ``~/.cache``): the per-user caches."""
    root = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return root.joinpath("zoo-exporter", *parts)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def staging(final_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success its files move into ``final_dir``.

    On any exception the staging directory is deleted and ``final_dir`` is left untouched (and
    not created), so a failed command leaves no half-written artifact behind.
    """
    final_dir = Path(final_dir)
    created = [p for p in reversed(final_dir.parents) if not p.exists()]
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.staging-", dir=final_dir.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for parent in reversed(created):  # parents this call created, deepest first
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    final_dir.mkdir(exist_ok=True)
    for item in stage.iterdir():
        target = final_dir / item.name
        if target.is_dir() and item.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    shutil.rmtree(stage, ignore_errors=True)
