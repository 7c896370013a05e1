"""The parity report's files. ``write_report(reports, out_dir)`` writes:

* ``report.json`` - every number of every :class:`~exporter.parity.ParityReport`;
* ``latency_vs_eager.png`` - speed-up of every artifact over eager (p50 ratio, same process);
* ``errors.png`` - distribution of the per-sample relative error of every artifact, with its
  tolerance;
* ``report.md`` - machine, method, one table per model, breaches, first diverging layers, and the
  two plots embedded.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .parity import ParityReport
from .report import _count, rows, zoo_rows
from .report_folder import ERRORS_PNG, GENERATOR, LATENCY_PNG, check_report_dir


# ------------------------------------------------------------------------------- plots
def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_latency(reports: Sequence[ParityReport], path: Path) -> Path:
    """Horizontal bars: speed-up over eager of every artifact, one bar per batch size."""
    plt = _mpl()
    labels, values = [], []
    batches = sorted({b for r in reports for b in r.batch_sizes})
    for rep in reports:
        for art in rep.artifacts:
            if art.speedup:
                labels.append(f"{rep.model} · {art.file}" if len(reports) > 1 else art.file)
                values.append([art.speedup.get(b, float("nan")) if art.speedup_stable.get(b, True)
                               else float("nan") for b in batches])  # unstable: not plotted
    height = max(2.5, 0.45 * len(labels) * max(1, len(batches)) ** 0.5 + 1.2)
    fig, ax = plt.subplots(figsize=(9, height))
    if labels and not any(x == x for row in values for x in row):  # every one NaN: unstable
        ax.text(0.5, 0.5, "every speed-up was unstable on this machine: none is plotted\n"
                "(report.md says why; rerun on a quiet machine)", ha="center", va="center",
                transform=ax.transAxes)
    elif labels:
        n = len(batches)
        width = 0.8 / n
        for k, b in enumerate(batches):
            ys = [i + (k - (n - 1) / 2) * width for i in range(len(labels))]
            xs = [v[k] for v in values]
            ax.barh(ys, xs, height=width, label=f"batch {b}")
            for y, x in zip(ys, xs):
                if x == x:  # not NaN
                    ax.text(x, y, f" {x:.2f}x", va="center", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", lw=1, ls="--", label="eager = 1x")
        ax.set_xscale("log")
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
    where = reports[0].device_label if reports else "?"
    ax.set_xlabel("speed-up over eager PyTorch (eager p50 / artifact p50, same process; log scale)")
    ax.set_title(f"Latency relative to eager ({where})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_errors(reports: Sequence[ParityReport], path: Path) -> Path:
    """Per-sample relative error (max|diff| / max|eager|) of every artifact, log scale, with the
    tolerance of its precision as a red tick."""
    plt = _mpl()
    labels, data, tols = [], [], []
    for rep in reports:
        for art in rep.artifacts:
            if art.sample_errors:
                labels.append(f"{rep.model} · {art.file}" if len(reports) > 1 else art.file)
                data.append([max(v, 1e-12) for v in art.sample_errors])
                tols.append(art.tolerance.rel_max_abs if art.tolerance else None)
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.4 * len(labels) + 1.2)))
    if data:
        ax.boxplot(data, orientation="horizontal", widths=0.6, showfliers=True)
        for i, values in enumerate(data, start=1):
            ax.scatter(values, [i] * len(values), s=6, alpha=0.5, color="tab:blue")
            if tols[i - 1]:
                ax.plot([tols[i - 1]] * 2, [i - 0.35, i + 0.35], color="red", lw=2)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.plot([], [], color="red", lw=2, label="tolerance (rel_max_abs)")
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no artifact outputs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("per-sample max |artifact - eager| / max |eager logits| (log scale)")
    ax.set_title("Error distribution per artifact", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------- markdown / json
def _md_table(data: list[dict[str, str]]) -> str:
    if not data:
        return ""
    keys = list(data[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for row in data:
        lines.append("| " + " | ".join(str(row[k]).replace("|", "\\|") for k in keys) + " |")
    return "\n".join(lines)


def _version_keys(reports: Sequence[ParityReport]) -> list[str]:
    """torch, onnx and the packages of every runtime (registry ``packages``) the reports ran."""
    from .backends import registry

    keys = ["torch", "torchvision", "onnx", "onnxruntime"]
    for fmt in dict.fromkeys(a.format for r in reports for a in r.artifacts):
        backend = registry.BACKENDS.get(fmt)
        keys += [k for k in (backend.packages if backend else ()) if k not in keys]
    return keys + ["zoo-exporter"]


def markdown(reports: Sequence[ParityReport], failures: Sequence[dict[str, Any]] = (),
             plots: dict[str, str] | None = None, title: str = "Parity report") -> str:
    plots = plots or {}
    first = reports[0] if reports else None
    out = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.", ""]
    if first is not None:
        m = first.machine
        v = m.get("versions", {})
        out += [
            f"- **Measured on:** {first.measured_on}",
            f"- **Machine:** {m.get('cpu', '?')}" + (f" (INT8: {m['cpu_int8']})" if m.get("cpu_int8") else "")
            + f", {m.get('usable_cpus', m.get('logical_cpus', '?'))} usable CPUs"
            + (f", GPU {m['gpu']} (CUDA {m.get('cuda')})" if m.get("gpu") else ", no CUDA GPU"),
            f"- **Versions:** python {m.get('python')}, " + ", ".join(
                f"{k} {v[k]}" for k in _version_keys(reports) if k in v),
            (f"- **Latency method:** {_count(first.warmup, 'warm-up run')} discarded, "
             f"{_count(first.runs, 'timed run')} in {_count(first.rounds, 'interleaved round')} per batch "
             f"size ({', '.join(map(str, first.batch_sizes))}), "
             f"{first.threads} threads for every runtime, p50/p90/p99 in ms; speed-up = eager p50 / "
             "artifact p50 in the same process (docs/LATENCY.md)") if first.batch_sizes else
            "- **Latency:** not timed (--no-latency)",
            "- **Checks:** relative error = max |artifact - eager| / max |eager logits| (worst over all "
            "inputs); cosine = worst sample; top-1/top-5 agreement with eager on the real images; "
            "tolerances from each recipe's `[tolerance.<precision>]`",
            "",
        ]
    if len(reports) + len(failures) > 1:
        out += ["## Summary", "", _md_table(zoo_rows(reports, failures)), ""]
    if plots:
        out += ["## Plots", ""]
        if LATENCY_PNG in plots:
            out += [f"![Latency relative to eager]({plots[LATENCY_PNG]})", ""]
        if ERRORS_PNG in plots:
            out += [f"![Error distribution per artifact]({plots[ERRORS_PNG]})", ""]
    all_breaches = [b for r in reports for b in r.breaches()]
    if all_breaches or failures:
        out += ["## Failures", ""]
        out += [f"- **{b.file}** output `{b.output}`: {b.detail}" for b in all_breaches]
        out += [f"- **{f['model']}**: {f['error'].splitlines()[0]}" for f in failures]
        out.append("")
    for rep in reports:
        inputs = ", ".join(f"{i['samples']} {i['name']} ({i['source']})" for i in rep.inputs)
        w = rep.weights
        weights = w.get("kind", "?") + (f" {w['name']}" if w.get("name") else "") + \
            (f" {Path(w['path']).name}" if w.get("kind") == "checkpoint" and w.get("path") else "") + \
            (f" seed {w['seed']}" if w.get("seed") is not None and w.get("kind") == "random" else "")
        size = rep.input_spec.get("size")
        out += [f"## {rep.model}", "",
                f"`{rep.directory}` · input {size} · weights: {weights} · inputs: {inputs}", "",
                _md_table(rows(rep)), ""]
        if rep.batch_sizes:
            out += [f"**Ship:** {rep.ship_line()}", ""]
        notes = [f"- {n}" for n in rep.notes]
        notes += [f"- inputs {i['name']}: {n}" for i in rep.inputs for n in i.get("notes", [])]
        notes += [f"- {r.file or 'eager'}: {n}" for r in [rep.eager, *rep.artifacts] for n in r.notes]
        if notes:
            out += notes + [""]
        for file, loc in rep.locations.items():
            out += [f"**First diverging layer ({file}):** {loc['summary']}", ""]
    return "\n".join(out).rstrip() + "\n"


def to_json(reports: Sequence[ParityReport], failures: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"generator": GENERATOR, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ok": all(r.ok for r in reports) and not failures,
            "reports": [r.to_dict() for r in reports], "failures": list(failures),
            "breaches": [str(b) for r in reports for b in r.breaches()]}  # failures: models not run


def _json_default(obj: Any):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def write_report(reports: Sequence[ParityReport] | ParityReport, out_dir: str | Path,
                 failures: Iterable[dict[str, Any]] = (), title: str = "Parity report") -> dict[str, Path]:
    """Write report.md, report.json and the PNG plots into ``out_dir``; return their paths."""
    if isinstance(reports, ParityReport):
        reports = [reports]
    reports, failures = list(reports), list(failures)
    out_dir = Path(out_dir)
    check_report_dir(out_dir)  # checked before the run too; the folder may have changed since
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"latency_png": plot_latency(reports, out_dir / LATENCY_PNG),
             "errors_png": plot_errors(reports, out_dir / ERRORS_PNG)}
    md = markdown(reports, failures, plots={LATENCY_PNG: LATENCY_PNG, ERRORS_PNG: ERRORS_PNG},
                  title=title)
    paths["markdown"] = out_dir / "report.md"
    paths["markdown"].write_text(md)
    paths["json"] = out_dir / "report.json"
    paths["json"].write_text(json.dumps(to_json(reports, failures), indent=2, default=_json_default) + "\n")
    return paths
