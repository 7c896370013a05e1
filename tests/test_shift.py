"""Zero-centred int8 ReLU outputs (quantize/shift.py): which tensors qualify, the bias arithmetic
that cancels the shift exactly, and the lower INT8 error; small ONNX graphs in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporter.onnx_graph import GraphIndex
from exporter.quantize import int8 as q8
from exporter.quantize.calibration import collect_statistics, compute_ranges
from exporter.quantize.placement import plan as make_plan
from exporter.quantize.shift import find_shifts
from quant_helpers import onnx_model

PROJECT = "project"


def block(seed: int = 0) -> onnx.ModelProto:
    """Conv 3x3 -> Clip(0,6) -> 1x1 project (shiftable) -> Relu -> 3x3 padded conv (not: border zeros)."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.4):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w0", 16, 3, 3, 3), init("b0", 16, scale=0.2), init("w1", 8, 16, 1, 1),
             init("b1", 8, scale=0.1), init("w2", 4, 8, 3, 3),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"], name="clip0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name=PROJECT),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    return onnx_model(nodes, inits, [None, 3, 10, 10], [None, 4, 10, 10])


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 10, 10)).astype(np.float32)


def ranges_of(model):
    return compute_ranges(collect_statistics(model, images(32, 1)), "mse")


def test_only_relu_outputs_read_by_an_int8_pointwise_conv_qualify():
    model = block()
    ranges = ranges_of(model)
    found = find_shifts(GraphIndex(model), make_plan(model, "tensorrt"), ranges)
    assert list(found) == ["r0"] and found["r0"].offset == ranges["r0"][2] / 2
    # the reader kept out of int8, or an unsigned (cpu) placement: nothing to shift
    assert find_shifts(GraphIndex(model), make_plan(model, "tensorrt", {PROJECT}), ranges) == {}
    assert find_shifts(GraphIndex(model), make_plan(model, "cpu"), ranges) == {}


def test_shift_rewrites_bounds_scale_and_biases_with_the_int8_weight():
    model = block()
    ranges = ranges_of(model)
    qdq = q8.build_qdq(model, make_plan(model, "tensorrt"), ranges, shift=True)
    g = GraphIndex(qdq)
    c = ranges["r0"][2] / 2
    clip = g.nodes["clip0"]
    assert [float(g.const(t)) for t in clip.input[1:]] == [np.float32(-c), np.float32(6 - c)]
    q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r0")
    assert np.isclose(float(g.const(q.input[1])), c / 127)
    b0 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b0"))
    assert np.allclose(g.const(g.nodes["conv0"].input[2]), b0 - np.float32(c))
    w1 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
    b1 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b1"))
    wq, scale = q8.quantize_weight(w1, 0)
    expected = b1 + np.float32(c) * (wq.astype(np.float32) * scale[:, None, None, None]).sum(axis=(1, 2, 3))
    assert np.allclose(g.const(g.nodes[PROJECT].input[2]), expected, atol=1e-6)


def test_shift_halves_the_activation_step_and_lowers_the_conv_error():
    model, x = block(), images(32, 2)
    ranges = ranges_of(model)
    plan = make_plan(model, "tensorrt")
    ref = q8.run(model, x, extra=["c1"])["c1"]

    def errors(m):
        """(rms quantization error of r0 as the 1x1 conv reads it, rms error of the conv's output)"""
        out = q8.run(m, x, extra=["r0", "r0_dq", "c1"])
        act = float(np.sqrt(((out["r0_dq"] - out["r0"]) ** 2).mean()))
        return act, float(np.sqrt(((out["c1"] - ref) ** 2).mean()))

    plain_act, plain_out = errors(q8.build_qdq(model, plan, ranges))
    shifted_act, shifted_out = errors(q8.build_qdq(model, plan, ranges, shift=True))
    assert shifted_act < 0.6 * plain_act, (plain_act, shifted_act)
    assert shifted_out < 0.95 * plain_out, (plain_out, shifted_out)
    # the producer kept in fp16: its shifted bias is converted with it and the graph still runs
    kept = q8.build_qdq(model, make_plan(model, "tensorrt", {"conv0"}), ranges, shift=True)
    onnx.checker.check_model(kept)
    assert errors(kept)[1] < 0.95 * plain_out
