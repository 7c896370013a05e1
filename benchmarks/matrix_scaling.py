#!/usr/bin/env python
"""Matrix scaling benchmark -> benchmarks/MATRIX_RESULTS.md.

Runs one plan - the zoo's recipes at their reduced test size x ONNX + TorchScript x fp32, parity
without latency (the jobs' wall time is the subject, not the runtimes' latency) - three times,
side by side on this machine, each into a fresh output directory so nothing is skipped:

* ``exporter matrix --jobs 1`` (one worker, all cores for its intra-op threads),
* ``exporter matrix --jobs 2`` (two workers, cores / 2 threads each),
* ``exporter matrix --ray auto`` (a local Ray instance started for the run, one CPU per task),

and records each run's wall time, the per-job times, and the projected wall time on a cluster of
W one-CPU workers: the longest-processing-time-first schedule of the Ray run's per-job times plus
the run's fixed cost (start-up, calibration sharing, report), measured as its wall time minus the
same schedule on this machine's slots.

    python benchmarks/matrix_scaling.py                        # the whole zoo (long)
    python benchmarks/matrix_scaling.py --models lenet5,nin    # a quick look
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"--jobs 1": ["--jobs", "1"], "--jobs 2": ["--jobs", "2"], "--ray auto": ["--ray", "auto"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="*", help="comma-separated recipe names or globs (default: all)")
    p.add_argument("--work", type=Path, default=ROOT / "artifacts" / "matrix-bench")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "MATRIX_RESULTS.md")
    p.add_argument("--workers", default="2,4,8,16,32", help="cluster sizes to project")
    return p.parse_args(argv)


def makespan(times: list[float], workers: int) -> float:
    """Longest-processing-time-first schedule of ``times`` on ``workers`` identical workers."""
    loads = [0.0] * workers
    for t in sorted(times, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + t)
    return max(loads)


def run_config(name: str, flags: list[str], plan: Path, work: Path) -> dict:
    out = work / name.strip("-").replace(" ", "")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "exporter", "matrix", str(plan), "--output", str(out), *flags,
           "--no-latency", "--no-fail", "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    data = json.loads((out / "report.json").read_text())
    jobs = data["jobs"]
    return {"name": name, "wall": wall, "executor": data.get("executor", ""),
            "jobs": {j["key"]: j["seconds"] for j in jobs},
            "status": {s: sum(j["status"] == s for j in jobs) for s in ("ok", "breach", "error")},
            "errors": [f"{j['key']}: {j.get('error')}" for j in jobs if j["status"] == "error"],
            "artifacts": {j["key"]: j.get("artifacts", {}) for j in jobs},
            "command": " ".join(["exporter", *cmd[3:]])}


def markdown(runs: list[dict], args, plan_text: str, load_before: tuple) -> str:
    base = runs[0]
    ray = next(r for r in runs if r["name"] == "--ray auto")
    ray_times = list(ray["jobs"].values())
    slots = 2
    fixed = max(0.0, ray["wall"] - makespan(ray_times, slots))
    onnx_same = all(
        {f: h for f, h in r["artifacts"][k].items() if f.endswith(".onnx")}
        == {f: h for f, h in base["artifacts"][k].items() if f.endswith(".onnx")}
        for r in runs for k in base["artifacts"])
    lines = [
        "# Matrix scaling: `exporter matrix` on this machine, and projected on a cluster",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        "`python benchmarks/matrix_scaling.py"
        + (f" --models {args.models}" if args.models != "*" else "") + "`, the three runs side by "
        f"side, each into a fresh output directory. Machine: {os.cpu_count()} logical CPUs, "
        f"load average before the runs {load_before[0]:.1f} / {load_before[1]:.1f} / "
        f"{load_before[2]:.1f} (1/5/15 min): the machine is shared with other work, so absolute "
        "times are inflated; the three runs saw comparable load.",
        "",
        "Plan (latency off: `--no-latency` - the jobs' wall time is the subject here, and timing "
        "runtimes in parallel jobs would measure their contention):",
        "", "```toml", plan_text.strip(), "```", "",
        "| run | jobs | ok / breach / failed | wall time (s) | speed-up vs --jobs 1 | sum of job times (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        st = r["status"]
        lines.append(f"| `{r['name']}` ({r['executor']}) | {len(r['jobs'])} | {st['ok']} / "
                     f"{st['breach']} / {st['error']} | {r['wall']:.0f} | "
                     f"{base['wall'] / r['wall']:.2f}x | {sum(r['jobs'].values()):.0f} |")
    lines += ["", f"ONNX artifacts byte-identical (sha256) across the three runs: {onnx_same} "
              "(TorchScript archives carry a random serialization id, so they differ by hash "
              "in any two runs; their parity rows agree).", ""]
    lines += ["## Projected cluster time", "",
              f"From the `--ray auto` run's per-job times (one CPU per task): longest-job-first "
              f"schedule on W one-CPU workers + the run's fixed cost ({fixed:.0f} s: wall time minus "
              f"the same schedule on this machine's {slots} slots). The longest job is "
              f"{max(ray_times):.0f} s, the floor of any cluster.", "",
              "| workers W | projected wall time (s) | vs --jobs 1 here |", "|---|---|---|"]
    for w in (int(v) for v in args.workers.split(",")):
        projected = fixed + makespan(ray_times, w)
        lines.append(f"| {w} | {projected:.0f} | {base['wall'] / projected:.1f}x |")
    lines += ["", "## Per-job times (s)", "", "| job | " + " | ".join(f"`{r['name']}`" for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    for key in base["jobs"]:
        lines.append(f"| {key} | " + " | ".join(f"{r['jobs'].get(key, float('nan')):.1f}" for r in runs) + " |")
    errors = [e for r in runs for e in r["errors"]]
    if errors:
        lines += ["", "## Failed jobs", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    models = ", ".join(json.dumps(m.strip()) for m in args.models.split(","))
    plan_text = (f"models = [{models}]\nformats = [\"onnx\", \"torchscript\"]\n"
                 "precisions = [\"fp32\"]\nreduced = true\n")
    plan = args.work / "plan.toml"
    plan.write_text(plan_text)
    load_before = os.getloadavg()
    runs = []
    for name, flags in CONFIGS.items():
        print(f"running {name} ...", flush=True)
        runs.append(run_config(name, flags, plan, args.work))
        print(f"  {name}: {runs[-1]['wall']:.0f} s, {runs[-1]['status']}", flush=True)
    args.results.write_text(markdown(runs, args, plan_text, load_before))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
