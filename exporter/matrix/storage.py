"""Where a matrix writes: a local directory, or any fsspec URL the cluster can reach
(``--output s3://bucket/zoo``, ``gs://...``, ``file:///shared/zoo``).

A job always writes its artifact directory locally first - the ordinary atomic, hash-manifested
export into a scratch directory of its own - and, for a URL, then uploads it to ``<url>/<job key>``
(:func:`upload`): the artifacts first, ``manifest.json`` next, the job's result file last, after
deleting the old result file. The result file is the commit mark: a half-uploaded directory has
none, so a re-run never takes it for a finished job. The re-run check (:func:`read_json`,
:func:`has_files`) reads the remote result and manifest without downloading the artifacts.

fsspec is an optional extra (``pip install 'zoo-exporter[remote]'``), imported only here; local
paths need nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import BackendUnavailableError, OutputLocationError, UsageError

REMOTE_HINT = "pip install 'zoo-exporter[remote]'"


def is_url(output: Any) -> bool:
    """An ``--output`` given as a URL (``protocol://...``) rather than a local path."""
    return isinstance(output, str) and "://" in output


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for ``url``; typed errors with the fix otherwise."""
    protocol = url.split("://", 1)[0]
    try:
        import fsspec
    except ImportError as err:
        raise BackendUnavailableError(
            f"--output {url} is a URL, and writing to URLs needs fsspec, which is not installed "
            f"({err})", fix=f"{REMOTE_HINT}, or pass a local directory to --output") from err
    try:
        return fsspec.core.url_to_fs(url)
    except ValueError as err:  # fsspec knows no such protocol
        raise UsageError(f"--output {url}: fsspec has no filesystem for '{protocol}://' ({err})",
                         fix="use a local directory, file://, or a protocol fsspec knows (e.g. "
                             "s3://, gs://, az://, hdfs://) with its package installed") from err
    except ImportError as err:  # a known protocol whose implementation is not installed
        raise BackendUnavailableError(
            f"--output {url}: the '{protocol}://' filesystem's package is not installed ({err})",
            fix=f"install fsspec's {protocol} implementation (its name is in the message above, "
                f"e.g. s3fs for s3://) beside {REMOTE_HINT}") from err


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def prepare(url: str) -> None:
    """Check that ``url`` can be reached and written (its directory made) before any job runs."""
    fs, root = filesystem(url)
    try:
        fs.makedirs(root, exist_ok=True)
    except (OSError, PermissionError) as err:
        raise OutputLocationError(f"--output {url} cannot be written: {err}",
                                  fix="pass a URL this machine and the cluster can write") from err


def read_json(url: str) -> dict[str, Any] | None:
    """The JSON file at ``url``, or None where there is none or it does not parse."""
    fs, path = filesystem(url)
    try:
        return json.loads(fs.cat_file(path))
    except (OSError, ValueError):
        return None


def has_files(url: str, entries: Iterable[dict[str, Any]]) -> bool:
    """Every file of these manifest entries is under ``url``, single files at their recorded size."""
    from ..artifacts import artifact_files

    fs, root = filesystem(url)
    for entry in entries:
        for name in artifact_files(entry):
            if not fs.exists(f"{root}/{name}"):
                return False
        single = not entry.get("companions") and not entry.get("contents")
        if single and entry.get("bytes") is not None and fs.size(f"{root}/{entry['file']}") != entry["bytes"]:
            return False
    return True


def upload(local: Path, url: str, last: tuple[str, ...]) -> None:
    """Copy the directory ``local`` to ``url``; the files named in ``last`` go last, in that
    order, and the final one (the commit mark) is deleted first."""
    fs, root = filesystem(url)
    mark = f"{root}/{last[-1]}"
    if fs.exists(mark):
        fs.rm(mark)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    order = [p for p in files if p.relative_to(local).as_posix() not in last]
    order += [Path(local) / name for name in last if (Path(local) / name).is_file()]
    for path in order:
        target = f"{root}/{path.relative_to(local).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
