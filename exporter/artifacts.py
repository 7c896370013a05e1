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
                    "onnxslim", "onnxscript", "onnxconverter-common", "numpy", "tensorrt",
                    "openvino", "nncf", "ncnn", "pnnx", "coremltools")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_files(directory: Path) -> list[Path]:
    """Every file under ``directory``, in a deterministic order (sorted relative POSIX paths)."""
    return sorted((p for p in directory.rglob("*") if p.is_file()),
                  key=lambda p: p.relative_to(directory).as_posix())


def sha256_path(path: Path) -> str:
    """sha256 of a file; for a directory artifact (a Core ML ``.mlpackage``), the sha256 of the
    lines ``<relative path> <sha256 of the file>`` of every file inside, sorted by path."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in _tree_files(path):
        digest.update(f"{item.relative_to(path).as_posix()} {sha256_file(item)}\n".encode())
    return digest.hexdigest()


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in _tree_files(path)) if path.is_dir() else path.stat().st_size


def artifact_entry(path: Path, fmt: str, precision: str, *, companions: tuple[Path, ...] = (),
                   **details: Any) -> dict[str, Any]:
    """Manifest entry for one artifact: ``file`` is what a runtime opens (for OpenVINO the .xml),
    ``sha256``/``bytes`` are computed here. ``companions``: files that belong to it (OpenVINO's .bin,
    ncnn's .bin), each listed with its own hash under ``companions``; ``bytes`` counts them too. A
    directory artifact lists every file inside under ``contents`` (see :func:`sha256_path`)."""
    path = Path(path)
    entry: dict[str, Any] = {"file": path.name, "format": fmt, "precision": precision,
                             "sha256": sha256_path(path), "bytes": _bytes(path)}
    if path.is_dir():
        entry["contents"] = [{"file": p.relative_to(path).as_posix(), "sha256": sha256_file(p),
                              "bytes": p.stat().st_size} for p in _tree_files(path)]
    if companions:
        entry["companions"] = [{"file": Path(c).name, "sha256": sha256_file(Path(c)),
                                "bytes": Path(c).stat().st_size} for c in companions]
        entry["bytes"] += sum(c["bytes"] for c in entry["companions"])
    entry["details"] = details
    return entry


def artifact_files(entry: dict[str, Any]) -> list[str]:
    """The file names (in the artifact directory) one manifest entry consists of."""
    return [entry["file"]] + [c["file"] for c in entry.get("companions", [])]


def changed_files(entry: dict[str, Any], directory: Path) -> list[str]:
    """Notes for the files of ``entry`` that are missing or differ from their recorded sha256."""
    directory = Path(directory)
    records = [{"file": entry["file"], "sha256": entry.get("sha256")}] + entry.get("companions", [])
    notes = []
    for record in records:
        path = directory / record["file"]
        if not path.exists():
            notes.append(f"{record['file']} is missing")
        elif record.get("sha256") and sha256_path(path) != record["sha256"]:
            notes.append(f"{record['file']} differs from the manifest (sha256 changed since export)")
    return notes


def tool_versions() -> dict[str, str]:
    from importlib import metadata  # slow to import: kept off the CLI's start-up path

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
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
