"""Zero-centred int8 ReLU outputs (quantize/shift.py): which tensors qualify, the bias arithmetic
and the explicit border that cancel the shift exactly, and the lower INT8 error; small ONNX graphs
in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from exporter.onnx_graph import GraphIndex
from exporter.quantize import int8 as q8
from exporter.quantize.bias import bias_correction
from exporter.quantize import exclusion_reasons
from exporter.quantize.calibration import collect_statistics
from exporter.quantize.thresholds import compute_ranges
from exporter.quantize.equalize import equalize
from exporter.quantize.placement import plan as make_plan
from exporter.quantize.shift import centred_key, find_shifts
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


def test_which_relu_outputs_qualify():
    model = block()
    ranges = ranges_of(model)

    def found(kept=(), target="tensorrt", scope="all"):
        return find_shifts(GraphIndex(model), make_plan(model, target, set(kept)), ranges, scope)

    # all int8: r0 (int8 producer, 1x1 reader); r1's padded reader has an int8 producer: never
    # c is half the range's high: chosen for the zero-centred quantizer's 254 steps, above the
    # symmetric amax (127 steps) that clips more
    assert list(found()) == ["r0"] and found()["r0"].offset == ranges["r0"][1] / 2
    assert ranges["r0"][1] > ranges["r0"][2]
    # the producer kept: r0 (1x1 reader), r1 (padded reader, its padding moved out)
    assert list(found(kept={"conv0"})) == ["r0"] and found(kept={"conv0"})["r0"].pads is None
    assert list(found(kept={PROJECT})) == ["r1"] and found(kept={PROJECT})["r1"].pads == [1, 1, 1, 1]
    # a reader kept out of int8 (r0's), or an unsigned (cpu) placement: nothing to shift
    assert found(kept={PROJECT, "conv2"}) == {} and list(found(kept={"conv0", PROJECT})) == ["r1"]
    assert found(target="cpu") == {} and found(kept={PROJECT}, target="cpu") == {}
    # what some choice of kept layers could zero-centre (bias correction's candidates): both
    assert sorted(found(scope="any")) == ["r0", "r1"] and found(target="cpu", scope="any") == {}
    # the producers kept out of int8 only
    assert found(scope="kept") == {} and list(found(kept={PROJECT}, scope="kept")) == ["r1"]


def test_shift_rewrites_bounds_scale_and_biases_with_the_int8_weight():
    model = block()
    ranges = ranges_of(model)
    qdq = q8.build_qdq(model, make_plan(model, "tensorrt"), ranges)  # the default: shift=True
    assert qdq.SerializeToString() == q8.build_qdq(model, make_plan(model, "tensorrt"), ranges,
                                                   shift=True).SerializeToString()
    g = GraphIndex(qdq)
    c = ranges["r0"][1] / 2  # half the range's high
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

    plain_act, plain_out = errors(q8.build_qdq(model, plan, ranges, shift=False))
    shifted_act, shifted_out = errors(q8.build_qdq(model, plan, ranges))
    assert shifted_act < 0.6 * plain_act, (plain_act, shifted_act)
    assert shifted_out < 0.95 * plain_out, (plain_out, shifted_out)
    # the producer kept in fp16: its shifted bias is converted with it and the graph still runs
    kept = q8.build_qdq(model, make_plan(model, "tensorrt", {"conv0"}), ranges)
    onnx.checker.check_model(kept)
    assert errors(kept)[1] < 0.95 * plain_out


def test_padded_reader_gets_an_explicit_border_and_the_shift_cancels_exactly():
    """Project kept in fp16: r1 is shifted by c, padded with -c (int8 level -127), and conv2 (no
    padding now) computes exactly conv2(pad0(dequantized r1)) with its int8 weight."""
    model, x = block(), images(16, 3)
    ranges = ranges_of(model)
    plan = make_plan(model, "tensorrt", {PROJECT})
    qdq = q8.build_qdq(model, plan, ranges)
    onnx.checker.check_model(qdq)
    g = GraphIndex(qdq)
    c = np.float32(ranges["r1"][1] / 2)
    pad = next(n for n in qdq.graph.node if n.op_type == "Pad")
    assert pad.output[0] == "r1" and float(g.const(pad.input[2])) == -c
    assert g.const(pad.input[1]).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    conv2 = g.nodes["conv2"]
    assert [list(a.ints) for a in conv2.attribute if a.name == "pads"] == [[0, 0, 0, 0]]
    q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r1")
    scale = float(g.const(q.input[1]))
    assert np.isclose(scale, c / 127) and np.round(-c / scale) == -127
    out = q8.run(qdq, x, extra=[pad.input[0], "y"])
    shifted = out[pad.input[0]]  # r1 - c, before the border
    assert shifted.min() >= -c - 1e-6
    dq = np.clip(np.round(shifted / scale), -127, 127) * scale + c  # the int8 r1 conv2 reads
    w2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    wq, wscale = q8.quantize_weight(w2, 0)
    expected = torch.nn.functional.conv2d(torch.from_numpy(dq.astype(np.float32)),
                                          torch.from_numpy(wq.astype(np.float32) * wscale[:, None, None, None]),
                                          padding=1).numpy()
    assert np.abs(out["y"] - expected).max() < 1e-4 * np.abs(expected).max()


def test_padded_shift_halves_the_step_and_lowers_the_error():
    model, x = block(), images(32, 2)
    ranges = ranges_of(model)
    plan = make_plan(model, "tensorrt", {PROJECT})
    ref = q8.run(model, x)
    plain = float(np.sqrt(((q8.run(q8.build_qdq(model, plan, ranges, shift=False), x) - ref) ** 2).mean()))
    shifted = float(np.sqrt(((q8.run(q8.build_qdq(model, plan, ranges), x) - ref) ** 2).mean()))
    assert shifted < 0.9 * plain, (plain, shifted)


def stem_block(seed: int = 0) -> onnx.ModelProto:
    """MobileNet's start: 3-channel stem -> ReLU6 -> padded depthwise -> ReLU6 -> 1x1 project."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * np.geomspace(0.02, 0.5, 8)[:, None, None, None]
    inits = [numpy_helper.from_array(w0.astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b0"),
             numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32), "wd"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "bd"),
             numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.5).astype(np.float32), "wp"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"], name="clip0"),
             helper.make_node("Conv", ["r0", "wd", "bd"], ["cd"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("Clip", ["cd", "lo", "hi"], ["rd"], name="clipd"),
             helper.make_node("Conv", ["rd", "wp"], ["y"], name=PROJECT)]
    return onnx_model(nodes, inits, [None, 3, 10, 10], [None, 4, 5, 5])


def test_the_equalized_stem_of_a_mobilenet_is_shifted_by_default():
    """The stem (3 input channels) stays fp16 by TensorRT's rule; its equalized ReLU6 (Relu + a
    redundant Min) feeding the padded depthwise conv is zero-centred: the Min goes, a Pad comes."""
    fp32, x = stem_block(), images(32, 4)
    model, record = equalize(fp32, images(32, 1))
    assert record["pairs"] == 1
    kept = set(exclusion_reasons(model, "tensorrt"))
    assert kept == {"stem"}
    ranges = compute_ranges(collect_statistics(model, images(32, 1)), "mse")
    plan = make_plan(model, "tensorrt", kept)
    shifts = find_shifts(GraphIndex(model), plan, ranges)
    assert sorted(shifts) == ["r0", "rd"] and shifts["r0"].low is not None and shifts["r0"].pads == [1, 1, 1, 1]
    assert shifts["rd"].pads is None  # the depthwise output, read by the 1x1 project: no border
    plain, shifted = (q8.build_qdq(model, plan, ranges, shift=s) for s in (False, True))
    onnx.checker.check_model(shifted)
    assert [n.op_type for n in shifted.graph.node].count("Pad") == 1
    # an exported model records its tensors' shapes: the padded tensor's unpadded one must go
    # (full_check's strict shape inference, which ONNX Runtime and TensorRT's parser rely on)
    recorded = onnx.shape_inference.infer_shapes(model)
    assert any(v.name == "r0" for v in recorded.graph.value_info)
    onnx.checker.check_model(q8.build_qdq(recorded, plan, ranges, shift=True), full_check=True)
    assert "Min" not in [n.op_type for n in shifted.graph.node]
    ref = q8.run(fp32, x, extra=["cd"])["cd"]

    def errors(m, moved=0.0):
        """(rms rounding error of the quantized r0, rms error of the depthwise conv's output;
        ``moved``: how far that output itself was moved down, rd being zero-centred too)"""
        q_in = next(n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == "r0_q")
        out = q8.run(m, x, extra=[q_in, "r0_dq", "cd"])
        return (float(np.sqrt(((out["r0_dq"] - out[q_in]) ** 2).mean())),
                float(np.sqrt(((out["cd"] + moved - ref) ** 2).mean())))

    (plain_act, plain_out), (shifted_act, shifted_out) = errors(plain), errors(shifted, shifts["rd"].offset)
    assert shifted_act < 0.6 * plain_act, (plain_act, shifted_act)
    assert shifted_out < 0.95 * plain_out, (plain_out, shifted_out)


def _fake_quant(x: np.ndarray, scale: float, lo: int = -128, hi: int = 127) -> np.ndarray:
    return np.clip(np.round(x / scale), lo, hi) * scale


def test_bias_correction_fits_the_zero_centred_quantizer_too():
    """r0 (read by the 1x1 project) gets two deltas: for the plain int8 quantizer (step R/127) and
    for the zero-centred one (step R/254); each equals the mean per-channel output error of the
    project conv reading r0 through that quantizer (torch reference), and the default build adds
    the zero-centred one on top of the shift's own c * sum(W_q)."""
    model, x = block(), images(32, 5)
    ranges = ranges_of(model)
    plan = make_plan(model, "tensorrt")
    deltas = bias_correction(model, plan, ranges, x)
    assert sorted(deltas) == sorted(["conv0", PROJECT, "conv2", centred_key(PROJECT), centred_key("conv2")])
    r0 = q8.run(model, x, extra=["r0"])["r0"]
    w1 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1")).copy()
    wq, wscale = q8.quantize_weight(w1, 0)
    w1q = torch.from_numpy(wq.astype(np.float32) * wscale[:, None, None, None])
    amax, c = ranges["r0"][2], np.float32(ranges["r0"][1] / 2)
    plain_in = _fake_quant(r0, np.float32(amax / 127))
    centred_in = _fake_quant(r0 - c, c / np.float32(127)) + c
    conv = lambda inp, w: torch.nn.functional.conv2d(torch.from_numpy(inp.astype(np.float32)), w).double()
    for key, inp in [(PROJECT, plain_in), (centred_key(PROJECT), centred_in)]:
        expected = (conv(r0, torch.from_numpy(w1)) - conv(inp, w1q)).mean(dim=(0, 2, 3)).numpy()
        np.testing.assert_allclose(deltas[key], expected, rtol=1e-3, atol=1e-5)
    assert np.abs(deltas[PROJECT] - deltas[centred_key(PROJECT)]).max() > 1e-4  # they differ
    built = GraphIndex(q8.build_qdq(model, plan, ranges, deltas))
    b1 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b1"))
    gain = c * w1q.numpy().sum(axis=(1, 2, 3))
    np.testing.assert_allclose(built.const(built.nodes[PROJECT].input[2]),
                               b1 + gain + deltas[centred_key(PROJECT)], rtol=1e-5, atol=1e-6)
    unshifted = GraphIndex(q8.build_qdq(model, plan, ranges, deltas, shift=False))
    np.testing.assert_allclose(unshifted.const(unshifted.nodes[PROJECT].input[2]), b1 + deltas[PROJECT],
                               rtol=1e-5, atol=1e-6)

