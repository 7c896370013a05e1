"""Activation-range equalization (quantize/equalize.py): which chains it takes, that the FP32
function is unchanged, that the INT8 error falls, and that its Min leaves the Q/DQ graph only
where a quantizer makes it a no-op. Small ONNX graphs, run in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from exporter.quantize import equalize as eq
from exporter.quantize import int8 as q8
from exporter.quantize.calibration import collect_statistics
from exporter.quantize.thresholds import compute_ranges
from exporter.quantize.placement import TARGETS, plan as make_plan
from quant_helpers import onnx_model


def mobile_block(seed: int = 0) -> onnx.ModelProto:
    """stem Conv(3->8) -> Clip(0,6) -> depthwise -> Relu -> Conv 1x1 (8->8) -> Relu -> dense 3x3 (8->4).

    The stem's output channels peak between ~0.02 and ~3 (as MobileNetV2's do): the case the
    equalization is for. Only stem -> Clip -> depthwise is a free chain; depthwise -> Relu -> 1x1 and
    1x1 -> Relu -> dense 3x3 have dense consumers and must be left alone.
    """
    rng = np.random.default_rng(seed)
    spread = np.logspace(-2.5, 0, 8).astype(np.float32)
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4 * spread[:, None, None, None]
    inits = [numpy_helper.from_array(w0, "w0"),
             numpy_helper.from_array((0.05 * spread).astype(np.float32), "b0"),
             numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) / spread[:, None, None, None] * 0.3)
                                     .astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.4, "w2"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.2, "w3"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"], name="clip0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="dw1", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="pw2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="dense3", pads=[1, 1, 1, 1]),
    ]
    return onnx_model(nodes, inits, [None, 3, 12, 12], [None, 4, 12, 12])


def images(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 3, 12, 12)) * 2).astype(np.float32)


def test_only_chains_into_depthwise_consumers_are_taken():
    pairs = eq.find_pairs(mobile_block())
    assert [(p.producer.name, p.activation.name, [c.name for c in p.consumers], p.bound) for p in pairs] \
        == [("stem", "clip0", ["dw1"], 6.0)]


def test_equalized_model_is_the_same_function_with_equal_channel_ranges():
    model, x = mobile_block(), images(48, 1)
    out, record = eq.equalize(model, x)
    assert record["pairs"] == 1 and record["tensors"] == ["r0"]
    assert [n.op_type for n in out.graph.node][:3] == ["Conv", "Relu", "Min"]
    assert [n.op_type for n in model.graph.node][:2] == ["Conv", "Clip"]  # input untouched
    x_new = images(16, 2)
    ref, got = q8.run(model, x_new), q8.run(out, x_new)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    before = eq.channel_maxima(model, ["r0"], x)["r0"]
    after = eq.channel_maxima(out, ["r0"], x)["r0"]
    scales = eq.channel_scales(before)
    assert scales.min() >= 1.0 and scales.max() <= eq.CAP
    assert np.allclose(after, before * scales, rtol=1e-4)
    # channels not capped now reach the widest channel's range; before, the narrowest was ~100x off
    uncapped = scales < eq.CAP
    assert np.allclose(after[uncapped], before.max(), rtol=1e-4)
    assert before.max() / before[before > 0].min() > 50


@pytest.mark.parametrize("target", TARGETS)
def test_equalization_lowers_the_int8_error(target):
    model, x_cal, x_test = mobile_block(), images(48, 1), images(32, 3)
    ref = q8.run(model, x_test)

    def int8_error(m):
        ranges = compute_ranges(collect_statistics(m, x_cal), "mse")
        qdq = q8.build_qdq(m, make_plan(m, target), ranges)
        return float(np.sqrt(((q8.run(qdq, x_test) - ref) ** 2).mean()))

    plain, equalized = int8_error(model), int8_error(eq.equalize(model, x_cal)[0])
    assert equalized < 0.7 * plain, (plain, equalized)


def test_min_leaves_the_qdq_graph_only_under_a_saturating_quantizer():
    model, x = mobile_block(), images(48, 1)
    out, _ = eq.equalize(model, x)
    ranges = compute_ranges(collect_statistics(out, x), "mse")
    ops = lambda m: [n.op_type for n in m.graph.node]  # noqa: E731
    # the depthwise reads Q/DQ(Min(...)) and the Q saturates below 6: the Min goes
    qdq = q8.build_qdq(out, make_plan(out, "tensorrt"), ranges)
    assert "Min" not in ops(qdq)
    x_test = images(8, 4)
    full = q8.run(q8.build_qdq(out, make_plan(out, "tensorrt"), ranges), x_test)
    assert np.isfinite(full).all()
    # the depthwise kept out of int8 reads the tensor unquantized: the Min stays, FP32-exact
    kept = q8.build_qdq(out, make_plan(out, "tensorrt", {"dw1"}), ranges, kept_dtype="fp32")
    assert "Min" in ops(kept)
    # a quantizer wider than the smallest bound (6 * 1) would let values above 6 through: Min stays
    wide = dict(ranges)
    wide["r0"] = (0.0, 9.0, 9.0)
    assert "Min" in ops(q8.build_qdq(out, make_plan(out, "tensorrt"), wide))


def test_a_pair_kept_in_fp32_gets_its_clip_and_weights_back():
    """Equalization only serves an int8 activation. Where the budget keeps producer and depthwise
    consumer in FP32, the unfused Min would cost a pass over the tensor: the pair is restored."""
    model, x = mobile_block(), images(48, 1)
    out, _ = eq.equalize(model, x)
    restored = onnx.ModelProto()
    restored.CopyFrom(out)
    assert eq.restore_float_pairs(restored) == 1
    assert [n.op_type for n in restored.graph.node][:3] == ["Conv", "Clip", "Conv"]
    inits = lambda m: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}  # noqa: E731
    orig, back = inits(model), inits(restored)
    for name in ("w0", "b0", "w1"):  # the scaled weights are the original ones again
        assert np.allclose(back[name], orig[name], rtol=1e-6, atol=1e-9), name
    clip = restored.graph.node[1]
    assert [float(back[t]) for t in clip.input[1:]] == [0.0, 6.0]
    x_test = images(16, 2)
    ref = q8.run(model, x_test)
    assert np.abs(q8.run(restored, x_test) - ref).max() <= 1e-5 * np.abs(ref).max()
    # through the cpu build: stem and depthwise kept, so no Min is left and the stem is the original
    ranges = compute_ranges(collect_statistics(out, x), "mse")
    kept = q8.build_qdq(out, make_plan(out, "cpu", {"stem", "dw1"}), ranges)
    assert "Min" not in [n.op_type for n in kept.graph.node]
    assert np.allclose(inits(kept)["w0"], orig["w0"], rtol=1e-6, atol=1e-9)
    # a depthwise consumer still in int8 reads a Q/DQ'd tensor: that pair stays equalized
    assert eq.restore_float_pairs(q8.build_qdq(out, make_plan(out, "cpu", {"stem"}), ranges)) == 0


def projection_block(seed: int = 0) -> onnx.ModelProto:
    """depthwise Conv(8) -> Clip(0, 6) -> Conv 1x1 (8->6): MobileNetV2's projection, with the
    depthwise output channels peaking ~100x apart."""
    rng = np.random.default_rng(seed)
    gain = np.logspace(-2, 0, 8).astype(np.float32)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * gain[:, None, None, None])
                                     .astype(np.float32), "wd"),
             numpy_helper.from_array((0.1 * gain).astype(np.float32), "bd"),
             numpy_helper.from_array(rng.standard_normal((6, 8, 1, 1)).astype(np.float32), "wp"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "wd", "bd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["d", "lo", "hi"], ["r"], name="clip"),
             helper.make_node("Conv", ["r", "wp"], ["y"], name="pw")]
    return onnx_model(nodes, inits, [None, 8, 10, 10], [None, 6, 10, 10])


def proj_images(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 8, 10, 10)) * 3).astype(np.float32)


def test_dense_consumers_are_taken_only_when_asked_and_only_after_a_depthwise():
    describe = lambda pairs: [(p.producer.name, p.activation.name, [c.name for c in p.consumers], p.dense)  # noqa: E731
                              for p in pairs]
    assert eq.find_pairs(projection_block()) == []
    assert describe(eq.find_pairs(projection_block(), dense=True)) == [("dw", "clip", ["pw"], True)]
    # mobile_block: dw1 -> Relu -> pw2 is taken; pw2 -> Relu -> dense3 is not (pw2 is not depthwise)
    assert describe(eq.find_pairs(mobile_block(), dense=True)) == [
        ("stem", "clip0", ["dw1"], False), ("dw1", "relu1", ["pw2"], True)]


def test_dense_equalization_is_the_same_function_with_square_root_scales():
    model, x = projection_block(), proj_images(48, 1)
    out, record = eq.equalize(model, x, dense_alpha=0.5)
    assert record["pairs"] == 1 and record["dense_pairs"] == 1 and record["dense_alpha"] == 0.5
    x_new = proj_images(16, 2)
    ref = q8.run(model, x_new)
    assert np.abs(q8.run(out, x_new) - ref).max() <= 1e-5 * np.abs(ref).max()
    before = eq.channel_maxima(model, ["r"], x)["r"]
    after = eq.channel_maxima(out, ["r"], x)["r"]
    expected = np.sqrt(np.clip(before.max() / before, 1.0, eq.CAP))  # the ratio capped, then the root
    assert np.allclose(after, before * expected, rtol=1e-4)
    assert before.max() / before.min() > 20 and after.max() / after.min() < 0.6 * before.max() / before.min()
    # the dense consumer's input columns carry the inverse scale
    w_before = numpy_helper.to_array(model.graph.initializer[2])
    w_after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}["wp"]
    assert np.allclose(w_after, w_before / expected[None, :, None, None], rtol=1e-5)


def test_a_dense_pair_kept_in_fp32_gets_its_clip_and_weights_back():
    model, x = projection_block(), proj_images(48, 1)
    out, _ = eq.equalize(model, x, dense_alpha=0.5)
    ranges = compute_ranges(collect_statistics(out, x), "mse")
    # both convs int8: the Q in front of the projection saturates below 6, so the Min goes
    assert "Min" not in [n.op_type for n in q8.build_qdq(out, make_plan(out, "tensorrt"), ranges).graph.node]
    kept = q8.build_qdq(out, make_plan(out, "tensorrt", {"dw", "pw"}), ranges, kept_dtype="fp32")
    assert [n.op_type for n in kept.graph.node] == ["Conv", "Clip", "Conv"]
    inits = {t.name: numpy_helper.to_array(t) for t in kept.graph.initializer}
    orig = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in ("wd", "bd", "wp"):
        assert np.allclose(inits[name], orig[name], rtol=1e-5, atol=1e-9), name
