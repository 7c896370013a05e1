"""Parity reports for people: the rich table in the terminal and the rows it shares with
report.md (:mod:`exporter.report_files` writes report.md, report.json and the PNG plots)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from rich.markup import escape

from .parity import ArtifactResult, ParityReport


# ------------------------------------------------------------------------------- formatting
def fmt_sci(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    return f"{value:.1e}"


def fmt_frac(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 1 else "1.000"


def fmt_cos(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6f}" if value < 0.999999995 else "1.000000"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _latency_cell(result: ArtifactResult, batch: int) -> str:
    stats = result.latency.get(batch)
    if stats is None:
        return "-"
    return f"{fmt_ms(stats.p50_ms)} / {fmt_ms(stats.p90_ms)} / {fmt_ms(stats.p99_ms)}"


def _speedup_cell(result: ArtifactResult, batches: Sequence[int], detail: bool = True) -> str:
    """Speed-ups over eager; an unstable one is never shown as a result ("unstable", with the
    measured ratio in parentheses only where ``detail``)."""
    if result.status == "reference":
        return "1.00x (ref)" if detail else "ref"
    parts = []
    for b in batches:
        if b not in result.speedup:
            continue
        value = f"{result.speedup[b]:.2f}x"
        if not result.speedup_stable.get(b, True):
            value = f"unstable ({value})" if detail else "unstable"
        parts.append(value)
    return " / ".join(parts) if parts else "-"


def _throughput_cell(result: ArtifactResult, batch: int | None) -> str:
    stats = result.latency.get(batch) if batch else None
    if stats is None:
        return "-"
    value = f"{stats.throughput:.0f}"
    return value if stats.stable else f"{value}?"


def _memory_cell(result: ArtifactResult) -> str:
    return "-" if result.memory_mb is None else f"{result.memory_mb:.0f}"


def _accuracy_cell(result: ArtifactResult) -> str:
    if not result.accuracy:
        return "-"
    return ", ".join(f"{v['top1']:.3f}/{v['top5']:.3f}" for v in result.accuracy.values())


def _status_cell(result: ArtifactResult) -> str:
    if result.status == "breach":
        return "FAIL " + ",".join(sorted({b.metric for b in result.breaches}))
    if result.status == "error":
        return "ERROR"
    if result.status == "unsupported":
        return f"unsupported: {result.error}"
    if result.status == "skipped":
        return "skipped"
    if result.status == "reference":
        return "reference"
    return "ok"


def short_runtime(result: ArtifactResult) -> str:
    """'onnxruntime 1.32.0 CPUExecutionProvider', 'torch 2.14.1 TorchScript cpu'."""
    runtime = result.runtime.replace("+cu130", "")
    for full, short in (("(eager)", "eager"), ("(TorchScript)", "TorchScript")):
        runtime = runtime.replace(full, short)
    return " ".join(x for x in (runtime, result.provider) if x) or "-"


def rows(report: ParityReport, compact: bool = False) -> list[dict[str, str]]:
    """One display row per runner (eager first), shared by the terminal and Markdown tables."""
    batches = list(report.batch_sizes)
    out = []
    for result in [report.eager, *report.artifacts]:
        s = result.summary
        ref = result.status == "reference"
        row = {
            "artifact": result.file or "eager PyTorch",
            "precision": result.precision,
            "runtime + provider": short_runtime(result),
            "max-abs": "" if ref else fmt_sci(s.get("max_abs")),
            "rel. err": "" if ref else fmt_sci(s.get("rel_max_abs")),
            "cosine": "" if ref else fmt_cos(s.get("cosine")),
        }
        if compact:
            row["top-1/5 agr."] = "" if ref or not s else \
                f"{fmt_frac(s.get('top1_agreement'))}/{fmt_frac(s.get('top5_agreement'))}"
        else:
            row["top-1 agr."] = "" if ref else fmt_frac(s.get("top1_agreement"))
            row["top-5 agr."] = "" if ref else fmt_frac(s.get("top5_agreement"))
        if not compact or any(r.accuracy for r in [report.eager, *report.artifacts]):
            row["acc. top1/top5"] = _accuracy_cell(result)
        for b in batches:
            row[f"b{b} p50/p90/p99 ms"] = _latency_cell(result, b)
        if batches:
            row["x eager " + "/".join(f"b{b}" for b in batches)] = _speedup_cell(result, batches)
            row[f"img/s b{max(batches)}"] = _throughput_cell(result, max(batches))
            row["stability"] = "; ".join(f"b{b}: {', '.join(s.unstable)}" for b, s in
                                         result.latency.items() if not s.stable) or "stable"
        row["RSS +MB"] = _memory_cell(result)
        row["status"] = _status_cell(result)
        if not compact:  # what "ok" was judged against (an int8 file passes at a wide error)
            row["tolerance"] = _tolerance_cell(result.tolerance)
        out.append(row)
    return out


def _tolerance_cell(tol) -> str:
    if tol is None:
        return ""
    parts = [f"rel <= {tol.rel_max_abs:g}", f"cos >= {tol.min_cosine:g}", f"top-1 >= {tol.min_top1_agreement:g}"]
    if tol.max_abs is not None:
        parts.append(f"max-abs <= {tol.max_abs:g}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------- terminal
TERMINAL_COLUMNS = 100  # the terminal table fits this; runtimes, p90/p99 etc. go to report.md/json


def terminal_rows(report: ParityReport) -> list[dict[str, str]]:
    """The few columns a person reads first (file names shortened to their suffix after the model
    name, which is in the title); everything else is in report.md / report.json."""
    batches = list(report.batch_sizes)
    out = []
    for result in [report.eager, *report.artifacts]:
        s, ref = result.summary, result.status == "reference"
        name = result.file.removeprefix(report.model) if result.file else "eager"
        row = {"artifact": name or result.file, "prec": result.precision,
               "rel.err": "" if ref else fmt_sci(s.get("rel_max_abs")),
               "top-1": "" if ref else fmt_frac(s.get("top1_agreement"))}
        if batches:
            row["p50 ms " + "/".join(f"b{b}" for b in batches)] = "/".join(
                fmt_ms(result.latency[b].p50_ms) if b in result.latency else "-" for b in batches)
            cell = _speedup_cell(result, batches, detail=False)
            row["x eager"] = "unstable" if "unstable" in cell else cell
            row[f"img/s b{max(batches)}"] = _throughput_cell(result, max(batches))
        row["RSS+MB"] = "" if ref else _memory_cell(result)
        row["status"] = "FAIL" if result.status == "breach" else _status_cell(result)
        out.append(row)
    return out


def render_table(report: ParityReport):
    """A ``rich.table.Table`` of one report, at most TERMINAL_COLUMNS wide for usual names."""
    from rich import box
    from rich.table import Table

    data = terminal_rows(report)
    table = Table(title=f"{escape(report.model)}: eager vs artifacts ({escape(report.device_label)}, "
                        f"{report.threads} threads)", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1, 0, 0))
    for key in data[0]:
        justify = "left" if key in ("artifact", "prec", "status") else "right"
        table.add_column(key, justify=justify, overflow="fold")
    for row, result in zip(data, [report.eager, *report.artifacts]):
        style = {"breach": "red", "error": "red", "skipped": "yellow", "unsupported": "yellow",
                 "reference": "bold"}.get(result.status)
        table.add_row(*map(escape, row.values()), style=style)  # a file name may hold [brackets]
    return table


def wide_console(stderr: bool = False):
    """A rich Console (on stderr with ``stderr=True``: --json keeps stdout for the document); when
    output is not a terminal (CI logs, pipes) it is $COLUMNS (default 200) wide instead of rich's
    default 80, so the table is not folded into unreadable slivers."""
    import os
    import sys

    from rich.console import Console

    if (sys.stderr if stderr else sys.stdout).isatty():
        return Console(stderr=stderr, **plain_if_asked())
    return Console(width=int(os.environ.get("COLUMNS", "200")), stderr=stderr, **plain_if_asked())


def plain_if_asked() -> dict:
    """Console options for NO_COLOR (https://no-color.org): no ANSI styles at all (rich drops
    only the colours and keeps bold/dim/italic)."""
    import os

    return {"color_system": None} if os.environ.get("NO_COLOR") else {}


def print_report(report: ParityReport, console=None) -> None:
    """The table, where it was measured, the input sets, notes, breaches and located layers."""
    console = console or wide_console()
    console.print(render_table(report))
    console.print(f"[dim]{escape(report.measured_on)}[/dim]")
    runtimes = "; ".join(f"{r.file.removeprefix(report.model) or r.file}: {short_runtime(r)}"
                         for r in report.artifacts if r.runtime)
    if runtimes:
        console.print(f"[dim]runtimes: {escape(runtimes)}[/dim]")
    if any(not ok for r in report.artifacts for ok in r.speedup_stable.values()):
        console.print("[yellow]unstable[/yellow]: a timing's spread, drift or machine load made its "
                      "speed-up unreliable (measured twice); not a result - rerun on a quiet "
                      "machine (details in the notes / report.md); '?' marks an unstable img/s")
    inputs = ", ".join(f"{i['samples']} {i['name']} ({i['source']})" for i in report.inputs)
    judged = ("agreement judged on the real images" if any(i.get("real") for i in report.inputs)
              else "no real images (--samples 0): top-1 agreement is over random tensors and says little")
    console.print(f"[dim]inputs: {escape(inputs)}; {judged}; errors are the worst over all inputs[/dim]")
    for item in report.inputs:  # skipped files, conversions, why class folders gave no labels
        for note in item.get("notes", []):
            console.print(f"[yellow]note[/yellow] {item['name']}: {escape(note)}")
    if report.batch_sizes:
        console.print(f"[dim]latency: {_count(report.warmup, 'warm-up run')} discarded, "
                      f"{_count(report.runs, 'timed run')} in {_count(report.rounds, 'interleaved round')}, "
                      f"batch {'/'.join(map(str, report.batch_sizes))}; "
                      "speed-up = eager p50 / artifact p50 (see docs/LATENCY.md)[/dim]")
    if report.batch_sizes:
        console.print(f"[bold green]ship[/bold green] {escape(report.ship_line())}")
    for result in [report.eager, *report.artifacts]:
        for note in result.notes:
            console.print(f"[yellow]note[/yellow] {escape(result.file or 'eager')}: {escape(note)}")
    for note in report.notes:
        console.print(f"[yellow]note[/yellow] {escape(note)}")
    for breach in report.breaches():
        console.print(f"[red]breach[/red] {escape(str(breach))}")
    for file, loc in report.locations.items():
        console.print(f"[cyan]locate[/cyan] {escape(loc['summary'])}")


def print_zoo_summary(reports: Sequence[ParityReport], failures: Sequence[dict[str, Any]] = (),
                      console=None, title: str = "zoo parity") -> None:
    from rich.table import Table

    console = console or wide_console()
    table = Table(title=title)
    for col in ("model", "artifacts", "worst rel. err", "min top-1 agr.", "speed-up b1 (best)",
                "ship (fastest within tolerance)", "status"):
        table.add_column(col)
    for line in zoo_rows(reports, failures):
        table.add_row(*map(escape, line.values()), style="red" if line["status"] != "ok" else None)
    console.print(table)


def zoo_rows(reports: Sequence[ParityReport], failures: Sequence[dict[str, Any]] = ()) -> list[dict[str, str]]:
    out = []
    for rep in reports:
        arts = [a for a in rep.artifacts if a.summary]
        worst = max((a.summary["rel_max_abs"] for a in arts), default=None)
        agree = min((a.summary["top1_agreement"] for a in arts), default=None)
        first = rep.batch_sizes[0] if rep.batch_sizes else None
        speed = [(a.speedup[first], a.file) for a in rep.artifacts if first in a.speedup
                 and a.speedup_stable.get(first, True)]
        shaky = any(not a.speedup_stable.get(first, True) for a in rep.artifacts)
        best = max(speed, default=None)
        ship = rep.fastest_within_tolerance()
        cells = [f"{a.format}: {a.status}" for a in rep.artifacts if a.status in ("unsupported", "skipped")]
        status = "ok" if rep.ok else f"FAIL ({len(rep.breaches())} breach)"
        out.append({"model": rep.label or rep.model, "artifacts": str(len(rep.artifacts)),
                    "worst rel. err": fmt_sci(worst), "min top-1 agr.": fmt_frac(agree),
                    "speed-up b1 (best)": ("unstable" if shaky and not best else
                                           f"{best[0]:.2f}x {best[1]}" if best else "-")
                    + (" (others unstable)" if shaky and best else ""),
                    "ship (fastest within tolerance)":
                        f"{ship.file} {fmt_ms(ship.latency[first].p50_ms)} ms" if ship else "-",
                    "status": status + (f" ({', '.join(cells)})" if cells else "")})
    for fail in failures:
        out.append({"model": fail["model"], "artifacts": "-", "worst rel. err": "-",
                    "min top-1 agr.": "-", "speed-up b1 (best)": "-",
                    "ship (fastest within tolerance)": "-",
                    "status": f"ERROR: {fail['error'].splitlines()[0][:120]}"})
    return out
