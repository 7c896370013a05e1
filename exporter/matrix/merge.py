"""The merged report of a matrix run: the jobs' plain-data parity reports turned back into
:class:`~exporter.parity.ParityReport` s and written by :func:`exporter.report_files.write_report`
(the same report.md / report.json / plots as ``exporter parity``), plus where each job ran."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..latency import LatencyStats
from ..parity import ArtifactResult, Breach, ParityReport
from ..recipes import Tolerance
from .storage import is_url


def artifact_from_dict(d: dict[str, Any]) -> ArtifactResult:
    latency = {int(b): LatencyStats(**{k: v for k, v in s.items() if k != "throughput_ips"})
               for b, s in (d.get("latency") or {}).items()}
    return ArtifactResult(
        file=d["file"], format=d["format"], precision=d["precision"], name=d.get("name", ""),
        runtime=d.get("runtime", ""), provider=d.get("provider", ""),
        output_name=d.get("output", "logits"), threads=d.get("threads"), status=d["status"],
        metrics=d.get("metrics", {}), summary=d.get("summary", {}),
        agreement_on=d.get("agreement_on", ""), agreement_samples=d.get("agreement_samples", 0),
        agreement_judged_by_budget=d.get("agreement_judged_by_budget", ""),
        accuracy=d.get("accuracy", {}), latency=latency,
        speedup={int(b): v for b, v in (d.get("speedup_vs_eager") or {}).items()},
        tolerance=Tolerance(**d["tolerance"]) if d.get("tolerance") else None,
        breaches=[Breach(**b) for b in d.get("breaches", [])],
        sample_errors=list(d.get("sample_errors", [])), notes=list(d.get("notes", [])),
        error=d.get("error"))


def report_from_dict(d: dict[str, Any]) -> ParityReport:
    """The inverse of ``ParityReport.to_dict`` (what a job returns)."""
    method = d.get("latency_method") or {}
    return ParityReport(
        model=d["model"], model_spec=d["model_spec"],
        directory=d["directory"] if is_url(d["directory"]) else Path(d["directory"]),
        device=d["device"], device_label=d["device_label"], measured_on=d["measured_on"],
        threads=d["threads"], inputs=d["inputs"], eager=artifact_from_dict(d["eager"]),
        artifacts=[artifact_from_dict(a) for a in d["artifacts"]],
        batch_sizes=tuple(method.get("batch_sizes", ())), warmup=method.get("warmup", 0),
        runs=method.get("runs", 0), rounds=method.get("rounds", 0), machine=d.get("machine", {}),
        weights=d.get("weights", {}), input_spec=d.get("input_spec", {}),
        notes=list(d.get("notes", [])), locations=d.get("locations", {}),
        tolerance_flags=list(d.get("tolerance_flags", [])))


def where(result: dict[str, Any]) -> str:
    w = result.get("where") or {}
    if result.get("skipped"):
        return f"skipped: proved by an earlier run ({w.get('host', '?')} pid {w.get('pid', '?')})"
    return f"{w.get('executor', '?')} on {w.get('host', '?')} pid {w.get('pid', '?')}"


def job_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"job": r["key"], "status": r["status"] + (" (skipped)" if r.get("skipped") else ""),
             "ran": where(r), "attempts": str(r.get("attempts", 1)),
             "seconds": f"{r.get('seconds', 0):.1f}", "threads": str(r.get("threads") or "-"),
             "error": (r.get("error") or "").splitlines()[0][:160] if r.get("error") else ""}
            for r in results]


def write_matrix_report(results: Sequence[dict[str, Any]], out_dir: Path, title: str,
                        notes: Sequence[str] = (), executor: str = "") -> dict[str, Path]:
    """report.md / report.json / plots at ``out_dir``'s top, with a Jobs section."""
    from ..report_files import _md_table, write_report

    reports, failures = [], []
    for r in results:
        if r.get("report"):
            rep = report_from_dict(r["report"])
            rep.label = r["key"]  # a model's jobs differ by precision: the summary names the job
            rep.notes.append(f"job {r['key']}: {where(r)}, {r.get('seconds', 0):.1f} s, "
                             f"attempt(s) {r.get('attempts', 1)}")
            reports.append(rep)
        else:
            failures.append({"model": r["key"], "error": r.get("error") or "failed",
                             "fix": r.get("fix")})
    paths = write_report(reports, out_dir, failures, title=title)
    lines = ["", "## Jobs", "", f"Executor: {executor}." if executor else "", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += [_md_table(job_rows(results)), ""]
    with open(paths["markdown"], "a") as fh:
        fh.write("\n".join(lines))
    data = json.loads(paths["json"].read_text())
    data["executor"] = executor
    data["notes"] = list(notes)
    data["jobs"] = [{k: v for k, v in r.items() if k != "report"} for r in results]
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    return paths
