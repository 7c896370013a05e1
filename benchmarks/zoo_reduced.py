"""Cost of ``exporter parity --zoo --reduced`` (the CLI, one subprocess): wall time, peak resident
memory of the process tree (``/usr/bin/time -v``-like, from ``resource.getrusage`` of the child),
and peak disk under the artifacts directory (sampled every second), with the machine's load.

    .venv/bin/python benchmarks/zoo_reduced.py [--out benchmarks/ZOO_REDUCED.md] [-- EXTRA ARGS]

A long run (minutes): run it alone, on a quiet machine if the time matters.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ZOO_REDUCED.md"))
    parser.add_argument("extra", nargs="*", help="more exporter parity options (after --)")
    args = parser.parse_args()
    exporter = str(Path(sys.executable).with_name("exporter"))
    with tempfile.TemporaryDirectory(prefix="zoo-reduced-") as work:
        artifacts, report = Path(work) / "artifacts", Path(work) / "report"
        cmd = [exporter, "parity", "--zoo", "--reduced", "--output", str(artifacts), "--report",
               str(report), "--no-fail", "--quiet", *args.extra]
        peak_disk, done, first_seen = [0], threading.Event(), {}

        def sample() -> None:
            while not done.wait(1.0):
                peak_disk[0] = max(peak_disk[0], tree_bytes(artifacts) if artifacts.exists() else 0)
                for entry in (artifacts.iterdir() if artifacts.exists() else ()):
                    if not entry.name.startswith("."):
                        first_seen.setdefault(entry.name, time.perf_counter() - start)

        load_before = os.getloadavg()
        watcher = threading.Thread(target=sample, daemon=True)
        start = time.perf_counter()
        watcher.start()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        left = tree_bytes(artifacts) if artifacts.exists() else 0
        summary = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
    load_after = os.getloadavg()
    lines = ["# `exporter parity --zoo --reduced` cost (benchmarks/zoo_reduced.py)", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; load "
             f"average before {load_before[0]:.1f}, after {load_after[0]:.1f} (shared machine: "
             "other jobs ran alongside).", "",
             "| measure | value |", "|---|---|",
             f"| wall time | {seconds / 60:.1f} min |",
             f"| peak resident memory (largest process) | {peak_rss_mb / 1024:.2f} GB |",
             f"| peak disk under the artifacts directory | {peak_disk[0] / 2**30:.2f} GB |",
             f"| left on disk after the run (no --keep-artifacts) | {left / 2**20:.1f} MB |",
             f"| exit code | {proc.returncode} |", "",
             "Command: `" + " ".join(["exporter", *cmd[1:]]).replace(str(work), "$TMP") + "`", "",
             "Last lines on stderr:", "", *[f"    {line}" for line in summary], "",
             "Per model (its artifact directory first seen, sampled every second, until the next "
             "one appeared or the run ended):", "", "| model@size | started at | took |", "|---|---|---|"]
    order = sorted(first_seen.items(), key=lambda kv: kv[1])
    for (name, at), nxt in zip(order, [*[t for _, t in order[1:]], seconds]):
        lines.append(f"| {name} | {at:.0f} s | {nxt - at:.0f} s |")
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
