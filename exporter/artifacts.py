"""Artifact bookkeeping: manifest entries with hashes, tool versions, and fault-safe writes.

Writes never leave a half-written file: each file goes through :func:`write_bytes_atomic` (temp
file in the same directory, fsync, rename). The output directory and its staging are
:mod:`.output_dir`'s.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from .errors import ArtifactError

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
    from .backends.registry import runtime_packages

    for name in dict.fromkeys(TRACKED_PACKAGES + runtime_packages()):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and validate ``directory/manifest.json`` (:func:`validate_manifest`).

    Raises FileNotFoundError if absent, :class:`ArtifactError` if it is not a valid manifest.
    """
    path = Path(directory) / MANIFEST
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err})",
                            fix="re-export into this directory, or pass a directory written by "
                                "`exporter export`") from None
    validate_manifest(data, Path(directory))
    return data


def read_manifest_if_any(directory: Path) -> dict[str, Any] | None:
    """``directory``'s manifest, or None where there is none or it cannot be read."""
    try:
        return read_manifest(directory)
    except (OSError, ValueError, ArtifactError):
        return None


def is_ours(data: Any) -> bool:
    """Whether a parsed manifest.json was written by zoo-exporter (schema + recorded version)."""
    return (isinstance(data, dict) and "schema" in data and isinstance(data.get("artifacts"), list)
            and "zoo-exporter" in (data.get("versions") or {}))


def confined(directory: Path, name: Any) -> Path:
    """``directory / name`` for a manifest's file name; anything leading out is an ArtifactError."""
    bad = (not isinstance(name, str) or not name or name in (".", "..") or "\\" in name
           or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts)
    if not bad:
        target = (Path(directory) / name).resolve()
        bad = not target.is_relative_to(Path(directory).resolve())
    if bad:
        raise ArtifactError(f"{Path(directory) / MANIFEST} names the file {name!r}, which is not "
                            f"inside {directory}",
                            fix="only use manifests written by `exporter export`; re-export the "
                                "model into this directory")
    return Path(directory) / name


def validate_manifest(data: Any, directory: Path) -> None:
    """A manifest is a dict whose ``artifacts`` are dicts with a confined ``file`` and a ``format``."""
    where = Path(directory) / MANIFEST
    if not isinstance(data, dict) or not isinstance(data.get("artifacts", []), list):
        raise ArtifactError(f"{where} is not an exporter manifest (no 'artifacts' list)",
                            fix="pass a directory written by `exporter export`")
    for entry in data.get("artifacts", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("format"), str):
            raise ArtifactError(f"{where}: artifact entry {str(entry)[:80]!r} has no 'file' and "
                                "'format'", fix="re-export the model into this directory")
        confined(directory, entry.get("file"))
        for companion in entry.get("companions") or []:
            confined(directory, companion.get("file") if isinstance(companion, dict) else companion)
    for key in ("model_options", "input", "weights", "export"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ArtifactError(f"{where}: '{key}' is {type(data[key]).__name__}, not an object",
                                fix="re-export the model into this directory")


def file_mode() -> int:
    """Mode of a new file as ``open()`` would create it: 0666 minus the umask (0644 usually)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/zoo-exporter/<parts>`` (default ``~/.cache``): the per-user caches."""
    root = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return root.joinpath("zoo-exporter", *parts)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, and rename it into place (the
    file gets the umask's mode, like any other artifact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
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


def time_now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
