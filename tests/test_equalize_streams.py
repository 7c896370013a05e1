"""Residual-stream equalization (quantize/equalize.py, ``stream_alpha``): which streams are taken,
that the FP32 function is unchanged with the square-root scales on every tensor of the stream, and
that the INT8 error falls. Small ONNX graphs, run in ONNX Runtime."""
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


def residual_stage(seed: int = 0, head: str = "Conv") -> onnx.ModelProto:
    """stem Conv(4->8) -> Relu -> proj1 1x1 (8->6) = p1; p1 -> exp2 1x1 (6->12) -> Relu -> proj2 1x1
    (12->6) = p2; s2 = p1 + p2 -> head 3x3 Conv (6->4) (or a Relu): a MobileNetV2 stage's stream
    {p1, p2, s2}, written by proj1 and proj2 and read by exp2 and head, its channels ~100x apart."""
    rng = np.random.default_rng(seed)
    gain = np.logspace(-2, 0, 6).astype(np.float32)
    w = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(w(8, 4, 3, 3) * 0.4, "ws"),
             numpy_helper.from_array(w(6, 8, 1, 1) * gain[:, None, None, None], "w1"),
             numpy_helper.from_array(w(6) * 0.1 * gain, "b1"),
             numpy_helper.from_array(w(12, 6, 1, 1) / gain[None, :, None, None] * 0.2, "w2"),
             numpy_helper.from_array(w(6, 12, 1, 1) * 0.3 * gain[:, None, None, None], "w3"),
             numpy_helper.from_array(w(6) * 0.05 * gain, "b3"),
             numpy_helper.from_array(w(4, 6, 3, 3) / gain[None, :, None, None] * 0.1, "wh")]
    nodes = [helper.make_node("Conv", ["x", "ws"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["p1"], name="proj1"),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="exp2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["p2"], name="proj2"),
             helper.make_node("Add", ["p1", "p2"], ["s2"], name="add2")]
    if head == "Conv":
        nodes.append(helper.make_node("Conv", ["s2", "wh"], ["y"], name="head", pads=[1, 1, 1, 1]))
        return onnx_model(nodes, inits[:-1] + inits[-1:], [None, 4, 10, 10], [None, 4, 10, 10])
    nodes.append(helper.make_node("Relu", ["s2"], ["y"], name="head"))
    return onnx_model(nodes, inits[:-1], [None, 4, 10, 10], [None, 6, 10, 10])


def images(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 4, 10, 10)) * 2).astype(np.float32)


def test_a_stream_is_taken_only_when_convs_write_and_read_all_of_it():
    streams = eq.find_streams(residual_stage())
    assert [(s.tensors, sorted(n.name for n in s.producers), sorted((n.name, d) for n, d in s.readers))
            for s in streams] == [(["p1", "p2", "s2"], ["proj1", "proj2"], [("exp2", True), ("head", True)])]
    assert eq.find_streams(residual_stage(head="Relu")) == []  # s2 read by a Relu: not linear
    assert eq.equalize(residual_stage(head="Relu"), images(8, 1), stream_alpha=0.5)[1] == {"pairs": 0}


def test_stream_equalization_is_the_same_function_with_square_root_scales():
    model, x = residual_stage(), images(48, 1)
    out, record = eq.equalize(model, x, stream_alpha=0.5)
    assert (record["pairs"], record["streams"], record["stream_tensors"], record["stream_alpha"]) == (0, 1, 3, 0.5)
    x_new = images(16, 2)
    ref = q8.run(model, x_new)
    assert np.abs(q8.run(out, x_new) - ref).max() <= 1e-5 * np.abs(ref).max()
    tensors = ["p1", "p2", "s2"]
    before, after = eq.channel_maxima(model, tensors, x), eq.channel_maxima(out, tensors, x)
    widest = np.max([before[t] for t in tensors], axis=0)
    expected = np.sqrt(np.clip(widest.max() / widest, 1.0, eq.CAP))  # the ratio capped, then the root
    for t in tensors:  # one scale per channel for the whole stream
        assert np.allclose(after[t], before[t] * expected, rtol=1e-4), t
    assert widest.max() / widest.min() > 20
    spread = np.max([after[t] for t in tensors], axis=0)
    assert spread.max() / spread.min() < 0.6 * widest.max() / widest.min()
    w_in = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w_out = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for name in ("w1", "w3"):  # producers: output rows times s
        assert np.allclose(w_out[name], w_in[name] * expected[:, None, None, None], rtol=1e-5)
    for name in ("w2", "wh"):  # readers: input columns over s
        assert np.allclose(w_out[name], w_in[name] / expected[None, :, None, None], rtol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_stream_equalization_lowers_the_int8_error(target):
    model, x_cal, x_test = residual_stage(), images(64, 1), images(32, 3)
    ref = q8.run(model, x_test)

    def int8_error(m):
        ranges = compute_ranges(collect_statistics(m, x_cal), "mse")
        qdq = q8.build_qdq(m, make_plan(m, target), ranges)
        return float(np.sqrt(((q8.run(qdq, x_test) - ref) ** 2).mean()))

    plain, equalized = int8_error(model), int8_error(eq.equalize(model, x_cal, stream_alpha=0.5)[0])
    assert equalized < 0.8 * plain, (plain, equalized)


def test_mobilenet_style_blocks_without_residual_adds_have_no_stream():
    from test_equalize import mobile_block, projection_block
    assert eq.find_streams(mobile_block()) == [] and eq.find_streams(projection_block()) == []


def test_an_add_that_broadcasts_a_narrower_writer_is_not_a_stream():
    model = residual_stage()
    for init in model.graph.initializer:  # proj2 writes 1 channel, broadcast over p1's 6 in the Add
        if init.name in ("w3", "b3"):
            value = numpy_helper.to_array(init)[:1]
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    assert eq.find_streams(model) == []
    assert len(eq.find_streams(residual_stage())) == 1
