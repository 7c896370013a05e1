"""AdaRound, range search and the torch reconstruction walk, checked against brute-force references
and against ONNX Runtime on small graphs (fast: tiny tensors, a few hundred iterations)."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from exporter.quantize import int8 as q8
from exporter.quantize.adaround import adaround_matrix, optimize_weights
from exporter.quantize.calibration import collect_statistics
from exporter.quantize.thresholds import compute_ranges
from exporter.quantize.placement import TARGETS, plan as make_plan, weight_axis
from exporter.quantize.range_search import best_range, candidate_range, fake_quant, search_ranges
from exporter.quantize.reconstruct import single_thread, Layer, apply, outputs_at, patches, sample_positions
from exporter.quantize.torch_exec import Executor


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8, 3x3, stride 2) -> Clip(0,6) -> depthwise 3x3 -> Clip -> 1x1 (8->6) + skip Add ->
    GlobalAveragePool -> Flatten -> Gemm(6->5): the op mix of a mobile network at 12x12."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.5):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w0", 8, 3, 3, 3), init("b0", 8, scale=0.1), init("w1", 8, 1, 3, 3),
             init("b1", 8, scale=0.1), init("w2", 8, 8, 1, 1), init("b2", 8, scale=0.1),
             init("w3", 5, 8), init("b3", 5, scale=0.1),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"], name="clip0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="dw1", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="clip1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="pw2"),
        helper.make_node("Add", ["c2", "r0"], ["a2"], name="add2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def data(n: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 12, 12)).astype(np.float32)


@pytest.mark.parametrize("target", TARGETS)
def test_torch_walk_matches_onnxruntime(target):
    model, x = tiny_model(), data()
    ranges = compute_ranges(collect_statistics(model, x), "mse")
    for m in (model, q8.build_qdq(model, make_plan(model, target), ranges)):
        ex = Executor(m, {"x": torch.from_numpy(x)})
        while not ex.done():
            ex.step()
        ours, ref = ex.value("y").numpy(), q8.run(m, x, basic=True)
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max(), target


@pytest.mark.parametrize("groups,stride,pads,dil", [(1, 2, [1, 0, 2, 1], 1), (4, 1, [1, 1, 1, 1], 2),
                                                     (8, 2, [0, 0, 0, 0], 1)])
def test_patches_reproduce_the_convolution(groups, stride, pads, dil):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 11, 10, generator=gen)
    w = torch.randn(16, 8 // groups, 3, 3, generator=gen)
    b = torch.randn(16, generator=gen)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", group=groups, strides=[stride] * 2,
                            pads=pads, dilations=[dil] * 2)
    layer = Layer.of(node, w.numpy())
    y = F.conv2d(F.pad(x, [pads[1], pads[3], pads[0], pads[2]]), w, b, stride, 0, dil, groups)
    pos = sample_positions(tuple(y.shape), 50, gen)
    got = apply(patches(layer, x, pos), layer.to_matrix(w.numpy()), b.reshape(groups, -1))
    assert torch.allclose(got, outputs_at(y, layer, pos), atol=1e-4)
    assert np.array_equal(layer.from_matrix(layer.to_matrix(w.numpy())), w.numpy())


def _mse(x, w, b, y):
    return float(((apply(x, w, b) - y) ** 2).mean())


def test_adaround_matches_brute_force_rounding_on_a_tiny_layer():
    """8 weights: all 256 floor/ceil choices enumerated; AdaRound beats nearest and nears the optimum."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(1, 1, 8, generator=gen)
    scale = w.abs().amax(-1, keepdim=True) / 127 * 40  # coarse grid: rounding matters
    x = torch.randn(400, 1, 8, generator=gen) + 0.5 * torch.randn(400, 1, 1, generator=gen)  # correlated inputs
    y = apply(x, w, None)
    floor = torch.floor(w / scale)
    best = min(_mse(x, scale * (floor + torch.tensor(c).reshape(1, 1, 8)), None, y)
               for c in itertools.product([0.0, 1.0], repeat=8))
    nearest = _mse(x, scale * torch.round(w / scale), None, y)
    with single_thread():
        q, stats = adaround_matrix(w, scale, x, y, iters=300, batch=128)
    got = _mse(x, scale * q, None, y)
    assert ((q - floor == 0) | (q - floor == 1)).all()  # only floor or ceil
    assert got <= nearest and got <= best * 1.05, (got, nearest, best)
    assert stats["mse_adaround"] == pytest.approx(got, rel=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_optimize_weights_never_worse_than_nearest_per_layer(target):
    model, x = tiny_model(), data()
    ranges = compute_ranges(collect_statistics(model, x), "mse")
    plan = make_plan(model, target)
    report: dict = {}
    weights = optimize_weights(model, plan, ranges, x, iters=80, report=report)
    assert set(weights) == set(plan.quantized) == set(report)
    for name, stats in report.items():
        assert stats["mse_adaround"] <= stats["mse_nearest"], name
    assert any(s["mse_adaround"] < 0.98 * s["mse_nearest"] for s in report.values())
    qm = q8.build_qdq(model, plan, ranges, weights=weights)
    stored = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    fp_weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, w in weights.items():
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 127
        near, scale = q8.quantize_weight(fp_weights[nodes[name].input[1]], weight_axis(nodes[name]))
        assert np.abs(w.astype(int) - near.astype(int)).max() <= 1  # a rounding choice, not a new grid
        # cpu: the u8 x s8 guard re-rounds the channels it widens; the others are stored as learnt
        expected = w if target == "tensorrt" else q8.u8s8_safe(w, scale, nodes[name])[0]
        assert np.array_equal(stored[f"{name}_w_int8"], expected)
    assert np.isfinite(q8.run(qm, x)).all()


def test_build_qdq_rejects_a_wrong_weight_shape():
    model = tiny_model()
    ranges = compute_ranges(collect_statistics(model, data(8)), "minmax")
    with pytest.raises(ValueError, match="int8 weight for conv0"):
        q8.build_qdq(model, make_plan(model, "tensorrt"), ranges, weights={"conv0": np.zeros((8, 3), np.int8)})


@pytest.mark.parametrize("signed", [True, False])
def test_range_search_finds_the_brute_force_optimum(signed):
    """Output error of a 1x1 layer over a heavy-tailed input: the coarse+fine search lands on the
    best of an exhaustive 0.005-step grid (within a grid step's cost difference)."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    x = torch.distributions.StudentT(1.5).sample((2000, 1, 16))
    x = x if signed else torch.relu(x)
    w = torch.randn(1, 4, 16, generator=gen)
    y = apply(x, w, None)
    lo, hi = float(x.min()), float(x.max())

    def cost(rng):
        return float(((apply(fake_quant(x, rng, signed), w, None) - y) ** 2).sum() / (y ** 2).sum())

    brute = min(cost(candidate_range(f, lo, hi, signed)) for f in np.arange(0.005, 1.0001, 0.005))
    minmax = cost(candidate_range(1.0, lo, hi, signed))
    rng, found = best_range(cost, lo, hi, signed)
    assert found == pytest.approx(cost(rng))
    assert found <= brute * (1 + 1e-9) and found <= minmax, (found, brute, minmax)


@pytest.mark.parametrize("target", TARGETS)
def test_search_ranges_lowers_each_tensors_output_error(target):
    model, x = tiny_model(), data()
    ranges = compute_ranges(collect_statistics(model, x), "mse")
    plan = make_plan(model, target)
    report: dict = {}
    searched = search_ranges(model, plan, ranges, x, report=report)
    assert set(searched) == set(ranges)
    assert set(report) == {t for t in plan.edges if plan.range_of.get(t, t) == t}
    for tensor, r in report.items():
        assert r["cost_chosen"] <= r["cost_given"] + 1e-12, tensor
        assert searched[tensor] == tuple(r["chosen"])
    untouched = set(ranges) - set(report)
    assert all(searched[t] == ranges[t] for t in untouched)
    qm = q8.build_qdq(model, plan, searched)
    assert np.isfinite(q8.run(qm, x)).all()
