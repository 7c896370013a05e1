#!/usr/bin/env python
"""Zoo parity benchmark at native input sizes -> benchmarks/RESULTS.md.

Exports (or re-uses) every selected recipe at its native size, runs ``run_parity`` (eager vs
ONNX Runtime vs TorchScript on the same inputs, latency per docs/LATENCY.md), and writes
``benchmarks/RESULTS.md``: the machine, the versions, the thread count and, per model and
artifact, the errors and the speed-up ratios over eager. The full report (report.md, report.json,
PNG plots) goes to ``--report`` (default reports/parity-benchmark).

Not a unit test: run it by hand, on a quiet machine if the absolute numbers matter.

    python benchmarks/parity_zoo.py                                   # the whole zoo
    python benchmarks/parity_zoo.py --models mobilenet_v3_small,resnet18 --runs 50
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated recipe names (default: every recipe)")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, help="intra-op threads for every runtime (default: torch's)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--samples", type=int, default=16, help="packaged photo crops per model")
    p.add_argument("--random", type=int, default=8, help="random tensors per model")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench")
    p.add_argument("--report", type=Path, default=ROOT / "reports" / "parity-benchmark")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return p.parse_args(argv)


SEE_ALSO = ("Mobile and edge runtimes, measured the same way beside eager PyTorch and ONNX Runtime "
            "in their own runs: ExecuTorch and LiteRT rows in `MOBILE_RESULTS.md` "
            "(`benchmarks/mobile_runtimes.py`); OpenVINO FP32/FP16/INT8 and ncnn FP32/FP16 rows, "
            "and INT8 on real MobileNetV2 weights beside NNCF, in `EDGE_RESULTS.md` "
            "(`benchmarks/edge_runtimes.py`).")


def results_markdown(reports, failures, args, seconds: float, command: str) -> str:
    from exporter.report import fmt_sci

    first = reports[0] if reports else None
    machine = first.machine if first else {}
    versions = machine.get("versions", {})
    lines = [
        "# Parity benchmark results",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `{command}` in {seconds:.0f} s.",
        "",
        "Models run: " + (", ".join(f"`{r.model}` ({'x'.join(map(str, r.input_spec.get('size', [])))})"
                                   for r in reports) or "none")
        + (f"; failed: {', '.join(f['model'] for f in failures)}" if failures else "") + ".",
        "",
        "## Machine",
        "",
        f"- {first.measured_on if first else '?'}",
        f"- CPU: {machine.get('cpu', '?')} ({machine.get('usable_cpus', machine.get('logical_cpus', '?'))} usable)"
        + (f"; GPU: {machine['gpu']} (CUDA {machine.get('cuda')})" if machine.get("gpu") else "; no CUDA GPU"),
        f"- {machine.get('platform', '?')}, python {machine.get('python', '?')}",
        f"- Load average (1/5/15 min) when the last model was measured: {machine.get('load_average', '?')} "
        "(other jobs inflate absolute times; the in-process ratios are what to compare)",
        "- " + ", ".join(f"{k} {versions[k]}" for k in ("torch", "torchvision", "onnx", "onnxruntime",
                                                          "onnxsim", "zoo-exporter") if k in versions),
        f"- Method (docs/LATENCY.md): {args.warmup} warm-up runs discarded, {args.runs} timed runs in "
        f"{args.rounds} interleaved rounds, batch sizes {args.batch_sizes}, "
        f"{first.threads if first else '?'} threads for every runtime; ratio = eager p50 / artifact p50 "
        "in the same process.",
        "- Weights: seeded random init (BN statistics randomized) unless a model says otherwise; "
        "latency does not depend on the weights.",
        "",
        "## Ratios (artifact vs eager PyTorch)",
        "",
    ]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    head = ["model", "input", "artifact", "runtime / provider", "rel. err", "top-1 agr."]
    for b in batches:
        head += [f"eager p50 b{b} ms", f"artifact p50 b{b} ms", f"ratio b{b}"]
    head.append("status")
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for rep in reports:
        for art in rep.artifacts:
            row = [rep.model, "x".join(map(str, rep.input_spec.get("size", []))), art.file,
                   f"{art.runtime} / {art.provider}", fmt_sci(art.summary.get("rel_max_abs")),
                   f"{art.summary['top1_agreement']:.3f}" if art.summary else "-"]
            for b in batches:
                e, a = rep.eager.latency.get(b), art.latency.get(b)
                row += [f"{e.p50_ms:.2f}" if e else "-", f"{a.p50_ms:.2f}" if a else "-",
                        f"**{art.speedup[b]:.2f}x**" if b in art.speedup else "-"]
            row.append(art.status)
            lines.append("| " + " | ".join(row) + " |")
    if failures:
        lines += ["", "## Failures", ""] + [f"- `{f['model']}`: {f['error'].splitlines()[0]}" for f in failures]
    lines += ["", f"Full report with plots: `{args.report.relative_to(ROOT) if args.report.is_relative_to(ROOT) else args.report}/report.md` "
              "(not committed; rerun the command to regenerate).", "", SEE_ALSO, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from exporter.commands.parity import prepare_directory
    from exporter.parity import build_inputs, run_parity
    from exporter.pipeline import ExportRequest
    from exporter.recipes import all_recipes
    from exporter.report_files import write_report

    recipes = all_recipes()
    names = args.models.split(",") if args.models else list(recipes)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        print(f"unknown recipe(s): {unknown}; known: {sorted(recipes)}", file=sys.stderr)
        return 2
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    start = time.perf_counter()
    reports, failures = [], []
    bar = tqdm(names, desc="parity benchmark", unit="model")
    for name in bar:
        bar.set_postfix_str(name)
        try:
            request = ExportRequest(model=name, formats=("onnx", "torchscript"),
                                    output=args.artifacts / name)
            directory, recipe, spec, reference, _ = prepare_directory(request, say=lambda m: None)
            inputs = build_inputs(spec, samples=args.samples, random=args.random)
            reports.append(run_parity(directory, reference, spec, recipe, inputs, args.device,
                                      batch_sizes=batch_sizes, warmup=args.warmup, runs=args.runs,
                                      rounds=args.rounds, threads=args.threads,
                                      progress=lambda m, n=name: bar.set_postfix_str(f"{n}: {m}")))
            tqdm.write(f"{name}: " + ", ".join(f"{a.file} {a.speedup.get(batch_sizes[0], float('nan')):.2f}x"
                                               for a in reports[-1].artifacts))
        except Exception as err:  # noqa: BLE001 - keep going, report it
            failures.append({"model": name, "error": f"{type(err).__name__}: {err}"})
            tqdm.write(f"{name}: FAILED {type(err).__name__}: {err}")
            traceback.print_exc(limit=2)
    bar.close()
    write_report(reports, args.report, failures, title="Zoo parity benchmark (native sizes)")
    command = "python benchmarks/parity_zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.results.write_text(results_markdown(reports, failures, args, time.perf_counter() - start,
                                             command.strip()))
    print(f"wrote {args.results} and {args.report / 'report.md'}")
    return 1 if failures or any(not r.ok for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
