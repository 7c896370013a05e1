"""End-to-end tuning of the activation ranges (quantize/tune.py): its torch walk computes what ONNX
Runtime computes for the Q/DQ model, and the tuning lowers the prediction's KL on held-out data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.quantize import int8 as q8
from exporter.quantize.judging import mean_kl
from exporter.quantize.calibration import collect_statistics
from exporter.quantize.thresholds import compute_ranges
from exporter.quantize.placement import TARGETS, plan as make_plan
from exporter.quantize.tune import _Graph, tune_ranges
from test_equalize import mobile_block
from test_gptq import smooth_images


@pytest.mark.parametrize("target,kept", [("cpu", set()), ("cpu", {"pw2"}), ("tensorrt", set()),
                                         ("tensorrt", {"pw2"})])
def test_the_torch_walk_computes_what_onnxruntime_does(target, kept):
    """Untuned (every scale factor 1), the walk the tuning differentiates is the Q/DQ model: the
    cpu placement's int32 biases, and a layer kept in float (fp16 on tensorrt, where ONNX Runtime
    computes in fp16 and the walk rounds to fp16 but computes in fp32: close, not equal)."""
    model, x = mobile_block(), smooth_images(16, 3)
    ranges = compute_ranges(collect_statistics(model, x), "mse")
    plan = make_plan(model, target, kept)
    qmodel = q8.build_qdq(model, plan, ranges, shift=False)  # the graph tune_ranges walks
    tunable = {f"{q8.safe_name(t)}_QuantizeLinear": plan.range_of.get(t, t) for t in plan.edges}
    graph = _Graph(qmodel, tunable)
    assert len(graph.tunable) == len(plan.edges) >= 2
    zero = {k: torch.zeros(()) for k in set(tunable.values())}
    with torch.no_grad():
        ours = graph(torch.from_numpy(x), zero).numpy()
    ort = q8.run(qmodel, x)
    error = np.abs(ours - ort) / np.abs(ort).mean()
    if target == "tensorrt" and kept:
        assert error.mean() < 2e-3, error.mean()
    else:
        assert error.max() < 1e-4, error.max()


@pytest.mark.parametrize("target", TARGETS)
def test_tuning_recovers_ranges_twice_too_wide(target):
    """Every range doubled (half the int8 levels wasted): the tuning shrinks them and the Q/DQ
    model's output error, judged by ONNX Runtime on other images, falls."""
    model, x_cal, x_test = mobile_block(), smooth_images(64, 1), smooth_images(64, 2)
    good = compute_ranges(collect_statistics(model, x_cal), "mse")
    plan = make_plan(model, target)
    wide = {k: tuple(2.0 * v for v in rng) for k, rng in good.items()}
    report: dict = {}
    tuned = tune_ranges(model, plan, wide, x_cal, steps=120, batch=16, lr=2e-2, report=report)
    sources = {plan.range_of.get(t, t) for t in plan.edges}
    assert report["tensors"] == len(sources) and report["applied"]
    assert report["kl_after"] < 0.7 * report["kl_before"], report
    assert all(tuned[k] == wide[k] for k in wide if k not in sources)  # only quantized tensors move
    shrunk = [tuned[k][2] / wide[k][2] for k in sources]
    assert np.median(shrunk) < 0.85, shrunk
    ref = q8.run(model, x_test)  # KL of the softmax over the block's 4 channels at every position
    before = mean_kl(ref, q8.run(q8.build_qdq(model, plan, wide), x_test))
    after = mean_kl(ref, q8.run(q8.build_qdq(model, plan, tuned), x_test))
    assert after < 0.8 * before, (before, after)


@pytest.fixture
def one_torch_thread():
    """40 tuning steps from one start follow torch's summation order, which its thread count sets
    (with 2 threads the stage test below ends above its start, so nothing is applied)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quantize_stage_tunes_ranges_when_asked(tmp_path, monkeypatch, one_torch_thread):
    """Opt-in through the stage (real MobileNetV2 weights at 64x64, tensorrt: stem and classifier
    kept in fp16 by rule; 40 steps to keep the test short): the manifest reports the calibration
    KL before and after, and the written scales differ."""
    import onnx
    from onnx import numpy_helper

    from exporter.quantize import quantize_stage
    from exporter.recipes import get_recipe
    from exporter.quantize import tune
    from quant_helpers import PIP_HINT, fp32_onnx, real_weights_path

    if real_weights_path() is None:
        pytest.skip(f"real MobileNetV2 weights missing: {PIP_HINT}")
    monkeypatch.setattr(tune, "STEPS", 40)
    recipe = get_recipe("mobilenet_v2")
    path, spec = fp32_onnx(recipe, size=64, real_weights=True)
    scales = {}
    for tuned in (True, False):
        out = tmp_path / str(tuned)
        entry = quantize_stage(path, out, recipe, spec, "int8", calibration="packaged", samples=16,
                               target="tensorrt", budget=False, range_tuning=tuned)
        details = entry["details"]
        model = onnx.load(str(out / entry["file"]))
        scales[tuned] = {t.name: float(numpy_helper.to_array(t)) for t in model.graph.initializer
                         if t.name.endswith("_scale") and not t.dims}
        if tuned:
            report = details["range_tuning"]
            assert report["tensors"] > 40 and report["steps"] == 40 and report["kl_after"] < report["kl_before"], report
        else:
            assert details["range_tuning"] is None
    assert scales[True].keys() == scales[False].keys()
    moved = [k for k in scales[True] if not np.isclose(scales[True][k], scales[False][k], rtol=1e-4)]
    assert len(moved) > 20, len(moved)
