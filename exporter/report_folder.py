"""The folder a parity report goes into: checked before the run, and never holding report files
the exporter did not write (they would be overwritten)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import ArtifactError, UsageError

LATENCY_PNG = "latency_vs_eager.png"
ERRORS_PNG = "errors.png"
REPORT_FILES = ("report.md", "report.json", LATENCY_PNG, ERRORS_PNG)
GENERATOR = "zoo-exporter parity"  # report.json's mark: the folder's report files are ours


def check_report_dir(out_dir: str | Path, flag: str = "--report") -> None:
    """Refuse, before any work, a report folder the report cannot go into, or whose report
    files were not written by the exporter (they would be overwritten)."""
    out_dir = Path(out_dir)
    if str(out_dir).strip() == "":
        raise UsageError(f"{flag} is empty", fix=f"pass {flag} DIR, a folder for report.md and report.json")
    existing = next((p for p in [out_dir, *out_dir.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{flag} {out_dir}: {existing} is a file, not a folder",
                         fix=f"pass {flag} a folder (report.md, report.json and two PNGs go into it)")
    if existing is not None:
        try:  # a real probe: /proc and read-only mounts pass os.access for root
            os.rmdir(tempfile.mkdtemp(prefix=".zoo-exporter-probe-", dir=existing))
        except OSError as err:
            raise UsageError(f"{flag} {out_dir}: cannot create files in {existing} ({err.strerror})",
                             fix=f"pass {flag} a folder you can write to") from None
    present = [name for name in REPORT_FILES if (out_dir / name).exists()]
    if present and not _ours(out_dir / "report.json"):
        raise ArtifactError(f"{flag} {out_dir} already holds {', '.join(present)}, which the exporter "
                            "did not write; the report would overwrite them",
                            fix=f"pass {flag} another folder, or move those files away")


def _ours(path: Path) -> bool:
    """report.json written by the exporter (marked; before the mark: its four keys)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("generator") == GENERATOR
                                       or {"generated", "ok", "reports", "failures"} <= set(data))
