"""GPTQ weight rounding (quantize/gptq.py): the rounding against a brute-force optimum on a tiny
problem, and on a small ONNX graph that the rounded Q/DQ model's output error falls."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from exporter.quantize import int8 as q8
from exporter.quantize.calibration import collect_statistics
from exporter.quantize.thresholds import compute_ranges
from exporter.quantize.gptq import EXACT_MAX_K, exact_matrix, gptq_matrix, round_weights
from exporter.quantize.placement import TARGETS, plan as make_plan
from exporter.quantize.reconstruct import apply
from test_equalize import mobile_block


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Images whose neighbouring pixels correlate, as photos' do: 4x4 noise blown up to 12x12."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, 4, 4)) * 2
    fine = np.kron(coarse, np.ones((1, 1, 3, 3))) + 0.2 * rng.standard_normal((n, 3, 12, 12))
    return fine.astype(np.float32)


def _problem(groups: int, out: int, k: int, seed: int = 0):
    """Correlated inputs (as image patches are) and weights with their max-abs per-row scales."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(4000, groups, 1, generator=gen)  # neighbouring pixels move together
    x = shared + 0.3 * torch.randn(4000, groups, k, generator=gen)
    w = torch.randn(groups, out, k, generator=gen)
    return x, w, w.abs().amax(-1, keepdim=True) / 127


def _mse(x, w, scale, q) -> float:
    return float(((apply(x, scale * q, None) - apply(x, w, None)) ** 2).mean())


def test_rounding_is_int8_and_beats_nearest_towards_the_brute_force_optimum():
    x, w, scale = _problem(groups=1, out=3, k=6)
    nearest = torch.clamp(torch.round(w / scale), -127, 127)
    q = gptq_matrix(w, scale, x)
    assert torch.equal(q, q.round()) and float(q.abs().max()) <= 127
    assert float((q - w / scale).abs().max()) < 2.0  # still a rounding of w/s, not a new weight
    best = 0.0
    floor = torch.floor(w / scale)
    for o in range(w.shape[1]):  # rows are independent: brute force each over all 2^k up/down choices
        row = [float(_row_mse(x, w, scale, floor, o, bits)) for bits in itertools.product((0, 1), repeat=6)]
        best += min(row)
    best /= w.shape[1]
    ours, near = _mse(x, w, scale, q), _mse(x, w, scale, nearest)
    assert best <= ours < 0.8 * near, (best, ours, near)
    assert ours < 1.5 * best, (best, ours)


def _row_mse(x, w, scale, floor, o, bits) -> torch.Tensor:
    q = floor[0, o] + torch.tensor(bits, dtype=torch.float32)
    return (((x[:, 0] @ (scale[0, o] * q - w[0, o])) ** 2).mean())


def test_exact_rounding_is_the_brute_force_optimum():
    x, w, scale = _problem(groups=3, out=2, k=EXACT_MAX_K, seed=3)
    q = exact_matrix(w, scale, x)
    xs = x
    floor = torch.floor(w / scale)
    for g, o in itertools.product(range(3), range(2)):  # every floor/ceil choice of the 9 weights
        costs = {bits: float(_row_mse(xs[:, g:g + 1], w[g:g + 1], scale[g:g + 1], floor[g:g + 1], o, bits))
                 for bits in itertools.product((0, 1), repeat=EXACT_MAX_K)}
        best = min(costs, key=costs.get)
        assert torch.equal(q[g, o], floor[g, o] + torch.tensor(best, dtype=torch.float32)), (g, o)
    nearest = torch.clamp(torch.round(w / scale), -127, 127)
    assert _mse(xs, w, scale, q) < 0.75 * _mse(xs, w, scale, nearest)
    assert _mse(xs, w, scale, q) <= _mse(xs, w, scale, gptq_matrix(w, scale, x)) * (1 + 1e-6)


def test_exact_rounding_refuses_a_wide_layer():
    x, w, scale = _problem(groups=1, out=2, k=EXACT_MAX_K + 1)
    with pytest.raises(ValueError, match="k=10"):
        exact_matrix(w, scale, x)


def test_depthwise_groups_are_solved_independently():
    x, w, scale = _problem(groups=8, out=1, k=9, seed=1)
    together = gptq_matrix(w, scale, x)
    alone = torch.cat([gptq_matrix(w[g:g + 1], scale[g:g + 1], x[:, g:g + 1]) for g in range(8)])
    assert torch.equal(together, alone)
    assert _mse(x, w, scale, together) < _mse(x, w, scale, torch.round(w / scale))


def test_a_dead_input_column_does_not_break_the_solve():
    x, w, scale = _problem(groups=1, out=4, k=5, seed=2)
    x[..., 2] = 0.0
    q = gptq_matrix(w, scale, x)
    assert torch.isfinite(q).all() and _mse(x, w, scale, q) <= _mse(x, w, scale, torch.round(w / scale))


@pytest.mark.parametrize("target", TARGETS)
def test_rounded_layers_have_lower_output_error_and_the_model_is_no_worse(target):
    model, x_cal, x_test = mobile_block(), smooth_images(64, 1), smooth_images(64, 2)
    ranges = compute_ranges(collect_statistics(model, x_cal), "mse")
    plan = make_plan(model, target)
    report: dict = {}
    weights = round_weights(model, plan, ranges, x_cal, report=report)
    assert set(report) == set(plan.quantized) and weights  # every int8 layer tried, some improved
    for name, q in weights.items():
        assert q.dtype == np.int8 and report[name]["mse_rounded"] < report[name]["mse_nearest"]
    assert min(r["mse_rounded"] / r["mse_nearest"] for r in report.values()) < 0.8, report
    ref = q8.run(model, x_test)

    def error(w):
        out = q8.run(q8.build_qdq(model, plan, ranges, weights=w), x_test)
        return float(np.mean((out - ref) ** 2))

    # this block's error is mostly its activations' int8 ranges: the weights' share is small
    assert error(weights) < 1.01 * error(None), (error(weights), error(None))


def test_quantize_stage_rounds_by_gptq_or_exact_when_asked(tmp_path):
    """Opt-in through the stage: the manifest names it, and the written int8 weights differ from
    round-to-nearest for the layers it reports."""
    from exporter.quantize import quantize_stage
    from exporter.recipes import get_recipe
    from quant_helpers import fp32_onnx

    recipe = get_recipe("mobilenet_v2")
    path, spec = fp32_onnx(recipe, size=recipe.input.test_size)
    runs = {}
    for how in ("gptq", "exact", "nearest"):
        entry = quantize_stage(path, tmp_path / how, recipe, spec, "int8", calibration="packaged",
                               samples=8, target="tensorrt", budget=False, weight_rounding=how)
        model = onnx.load(str(tmp_path / how / entry["file"]))
        runs[how] = (entry["details"]["weight_rounding"],
                     {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8})
    (gptq, w_gptq), (exact, w_exact), (nearest, w_near) = runs["gptq"], runs["exact"], runs["nearest"]
    assert nearest == {"method": "nearest", "layers": 0}
    assert gptq["method"] == "gptq" and gptq["layers"] > 10, gptq
    changed = [k for k in w_near if not np.array_equal(w_near[k], w_gptq[k])]
    assert len(changed) == gptq["layers"], (len(changed), gptq)
    # exact: only the 3x3 depthwise convs (17 in MobileNetV2), the same choice as gptq mode makes there
    depthwise = [k for k, v in w_near.items() if v.ndim == 4 and v.shape[1] == 1 and v.shape[2:] == (3, 3)]
    assert exact["method"] == "exact" and 5 < exact["layers"] <= len(depthwise) == 17, exact
    changed = [k for k in w_near if not np.array_equal(w_near[k], w_exact[k])]
    assert len(changed) == exact["layers"] and set(changed) <= set(depthwise), changed
