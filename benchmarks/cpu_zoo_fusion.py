"""Does every conv of the zoo's ``cpu`` INT8 model run in int8? The placement before and after
2026-12-05, side by side, with FP32.

    python benchmarks/cpu_zoo_fusion.py [--baseline b88d114] [--models googlenet,...] [--out F]

Before, a conv whose output a float op read (a Concat, HardSwish, Sigmoid, a Transpose) could not
fuse into ONNX Runtime's QLinearConv, so it ran in float between a DQ and a Q. The baseline's
``placement.py`` is loaded from git at ``--baseline``; both plans go through today's
``build_qdq`` with the same ranges. Per model: the convs ONNX Runtime runs as QLinearConv (after
its graph optimizations), the ops the plan leaves in float between DQ and Q
(``placement.float_readers``), and batch-1 latency on 2 threads (``exporter.latency.benchmark``,
the export summary's timing: p50 of 50 runs per round, rounds interleaved). Seeded random weights: latency does not depend on the
weight values, and no accuracy is claimed here (the budget judges that per export).
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.data import packaged_crops  # noqa: E402
from exporter.latency import benchmark  # noqa: E402
from exporter.parity import machine_info  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize import placement  # noqa: E402
from exporter.quantize.calibration import collect_statistics  # noqa: E402
from exporter.quantize.thresholds import compute_ranges  # noqa: E402
from exporter.recipes import all_recipes  # noqa: E402

from quant_helpers import fp32_onnx  # noqa: E402

MODELS = ("googlenet", "densenet121", "shufflenet_v2_x1_0", "shufflenet_v1", "efficientnet_b0",
          "mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "resnet18")


def baseline_placement(commit: str):
    """``exporter.quantize.placement`` as it was at ``commit``, as a module of the package."""
    source = subprocess.run(["git", "show", f"{commit}:exporter/quantize/placement.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path("/tmp") / f"placement_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("exporter.quantize._baseline_placement", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def qlinear_convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "QLinearConv" for n in q8.optimized_graph(model).graph.node)


def timed_ms(models: dict[str, onnx.ModelProto], x: np.ndarray, runs: int, rounds: int) -> dict[str, float]:
    """p50 batch latency of each model, interleaved in rounds (the export summary's timing)."""
    sessions = {key: q8.make_session(m, threads=2) for key, m in models.items()}
    runners = {key: (lambda arr, s=sess: s.run(None, {s.get_inputs()[0].name: arr}))
               for key, sess in sessions.items()}
    stats = benchmark(runners, {len(x): x}, warmup=5, runs=runs * rounds, rounds=rounds, retries=0)
    return {key: stats[key][len(x)].p50_ms for key in models}


def row(name: str, old, runs: int, rounds: int) -> str:
    recipe = all_recipes()[name]
    path, spec = fp32_onnx(recipe)
    model = onnx.load(str(path))
    placement.ensure_node_names(model)
    x = packaged_crops(spec, 8, seed=0).array
    ranges = compute_ranges(collect_statistics(model, x), "minmax")
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    models, cells = {"fp32": model}, []
    for label, module in (("before", old), ("now", placement)):
        plan = module.plan(model, "cpu")
        models[label] = q8.build_qdq(model, plan, ranges)
        readers = placement.float_readers(model, plan)
        shown = ", ".join(f"{op} x{n}" for op, n in readers.items()) or "none"
        cells.append(f"{qlinear_convs(models[label])}/{convs} | {shown}")
    ms = timed_ms(models, x[:1], runs, rounds)
    line = (f"| {name} | {ms['fp32']:.2f} | {cells[0]} | {ms['before']:.2f} ({ms['fp32'] / ms['before']:.2f}x) "
            f"| {cells[1]} | {ms['now']:.2f} ({ms['fp32'] / ms['now']:.2f}x) |")
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="b88d114", help="git commit of the placement before")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "CPU_ZOO_FUSION.md")
    args = ap.parse_args(argv)
    import onnxruntime

    old = baseline_placement(args.baseline)
    t0 = time.time()
    rows = [row(name, old, args.runs, args.rounds) for name in args.models.split(",")]
    text = [
        "# The zoo's `cpu` INT8 models: which convs ONNX Runtime runs in int8, before and now", "",
        f"Generated by `python benchmarks/cpu_zoo_fusion.py` in {time.time() - t0:.0f} s on "
        f"{time.strftime('%Y-%m-%d')}: {machine_info()['cpu']}, onnxruntime {onnxruntime.__version__}. "
        f"`before`: the placement at `{args.baseline}`; `now`: this checkout's; both through this "
        "checkout's `build_qdq`, nothing kept out of INT8, minmax ranges on 8 packaged crops. "
        "Seeded random weights at the recipe's input size (latency does not depend on weight values; "
        "no accuracy is claimed). QLinearConv: convs ONNX Runtime runs in int8 after its graph "
        "optimizations, of all convs. Float ops: ops the plan leaves between a DQ and a Q. Latency: "
        f"batch 1, 2 threads, `exporter.latency.benchmark` (the export summary's timing): p50 of "
        f"{args.runs} runs per round x {args.rounds} interleaved rounds; speed-up over FP32 in brackets.", "",
        "| model | FP32 ms | before: QLinearConv | before: float ops | before: ms | now: QLinearConv "
        "| now: float ops | now: ms |",
        "|---|---|---|---|---|---|---|---|", *rows, "", ""]
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
