"""How fast the CLI answers: ``exporter --help``, ``--version`` and ``exporter export --help`` in
fresh subprocesses (median of N), beside ``python -c pass`` and ``python -c 'import torch'`` measured
in the same run; also proves the parser imports neither torch nor onnx. Target: < 0.5 s.

    .venv/bin/python benchmarks/cli_startup.py [--repeat 7] [--out benchmarks/CLI_STARTUP.md]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.5
EXPORTER = str(Path(sys.executable).with_name("exporter"))
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "exporter --version": [EXPORTER, "--version"],
    "exporter --help": [EXPORTER, "--help"],
    "exporter export --help": [EXPORTER, "export", "--help"],
    "exporter parity --help": [EXPORTER, "parity", "--help"],
    "python -c 'import torch' (what the parser used to pay)": [sys.executable, "-c", "import torch"],
}
HEAVY_CHECK = ("import sys; from exporter.cli import build_parser; build_parser(); "
               "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("CLI_STARTUP.md"))
    args = parser.parse_args()
    heavy = subprocess.run([sys.executable, "-c", HEAVY_CHECK], capture_output=True, text=True,
                           check=True).stdout.strip()
    rows = []
    for label, cmd in CASES.items():
        wall(cmd)  # warm the file cache
        times = [wall(cmd) for _ in range(args.repeat)]
        rows.append((label, statistics.median(times), min(times), max(times)))
        print(f"{label}: median {rows[-1][1]:.3f} s", file=sys.stderr)
    load = os.getloadavg()
    cli = [r for r in rows if r[0].startswith("exporter")]
    ok = all(median < TARGET_S for _, median, _, _ in cli)
    lines = ["# CLI start-up (benchmarks/cli_startup.py)", "",
             f"{args.repeat} fresh subprocesses per command, median/min/max wall seconds; "
             f"{os.cpu_count()} CPUs, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} "
             f"(shared machine); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| command | median s | min s | max s |", "|---|---|---|---|"]
    lines += [f"| `{label}` | {median:.3f} | {lo:.3f} | {hi:.3f} |" for label, median, lo, hi in rows]
    lines += ["", f"Heavy modules imported by building the whole parser: {heavy} (must be []).",
              f"Target < {TARGET_S} s for every exporter command: "
              f"{'met' if ok else 'NOT met'}.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok and heavy == "[]" else 1


if __name__ == "__main__":
    raise SystemExit(main())
