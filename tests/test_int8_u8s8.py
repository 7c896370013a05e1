"""`cpu` INT8 weights never saturate ONNX Runtime's uint8 x int8 kernels on x86 without VNNI.

Those kernels (AVX2, AVX-512F) add neighbouring products in int16 (``vpmaddubsw``); 255 x 127 x 2
does not fit. The guard (:func:`exporter.quantize.int8.u8s8_safe`) keeps every same-signed pair
along ORT's reduction order within 128. These tests measure that order where the CPU shows it, and
check the guard on any CPU: its bound, its cost, and fused ORT == unfused Q/DQ arithmetic.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.quantize import int8 as q8
from exporter.quantize.placement import plan as make_plan

FULL = 255 * 254  # two u8 activations of 255 times two weights of 127


def _qlinearconv(w: np.ndarray, group: int = 1) -> float:
    """One output of ORT's QLinearConv: every input 255 (u8), weight ``w`` (int8), scales 1."""
    channels = w.shape[1] * group
    inits = [numpy_helper.from_array(w.astype(np.int8), "w"),
             numpy_helper.from_array(np.ones(w.shape[0], np.float32), "ws"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), "wz"),
             numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(np.array(1000.0, np.float32), "ys"),
             numpy_helper.from_array(np.array(0, np.uint8), "yz")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                            group=group, pads=[w.shape[2] // 2] * 4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                          [1, channels, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.full((1, channels, 5, 5), 255, np.uint8)
    return float(q8.make_session(model).run(None, {"x": x})[0][0, 0, 2, 2]) * 1000


def _pair(shape: tuple, *where: tuple) -> np.ndarray:
    w = np.zeros(shape)
    for idx in where:
        w[(0,) + idx] = 127
    return w


def _saturates(w: np.ndarray, group: int = 1) -> bool:
    return _qlinearconv(w, group) < 0.75 * FULL


def test_the_reduction_order_is_the_one_the_guard_constrains():
    if not _saturates(_pair((8, 4, 1, 1), (0, 0, 0), (1, 0, 0))):
        pytest.skip("this CPU's u8 x s8 kernel does not saturate (VNNI, AMX or not x86): "
                    "the pairing is only observable on AVX2 / AVX-512F without VNNI")
    # (kernel position, input channel), channel fastest, pairs at even offsets
    assert not _saturates(_pair((8, 4, 1, 1), (1, 0, 0), (2, 0, 0)))
    assert _saturates(_pair((8, 4, 3, 3), (0, 0, 0), (1, 0, 0)))
    assert not _saturates(_pair((8, 4, 3, 3), (0, 0, 0), (0, 0, 1)))
    assert _saturates(_pair((8, 3, 3, 3), (2, 0, 0), (0, 0, 1)))  # odd channels: across positions
    assert not _saturates(_pair((4, 1, 3, 3), (0, 0, 0), (0, 0, 1)), group=4)  # depthwise kernel
    assert _saturates(_pair((8, 1, 3, 3), (0, 0, 0), (0, 0, 1)), group=4)  # 2 filters per channel: GEMM
    assert _saturates(_pair((8, 2, 3, 3), (0, 0, 0), (1, 0, 0)), group=2)  # grouped: per group, same order


def _node(kind: str) -> onnx.NodeProto:
    if kind == "gemm":
        return helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    if kind == "gemm-n":
        return helper.make_node("Gemm", ["x", "w"], ["y"])
    return helper.make_node("Conv", ["x", "w"], ["y"], group=8 if kind.startswith("depthwise") else 1)


SHAPES = {"conv3x3": ((16, 8, 3, 3), 0), "conv-odd": ((16, 3, 3, 3), 0), "conv1x1": ((24, 16, 1, 1), 0),
          "gemm": ((10, 7), 0), "gemm-n": ((7, 10), 1), "depthwise": ((8, 1, 3, 3), 0),
          "depthwise-x2": ((16, 1, 3, 3), 0)}


def _seven_bit(real: np.ndarray) -> np.ndarray:
    """onnxruntime's ``reduce_range`` answer: every weight on a 2x wider grid (|q| <= 64)."""
    return np.clip(np.round(real / 2), -64, 64) * 2


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_guard_bounds_every_pair_and_beats_both_plain_answers(kind):
    shape, axis = SHAPES[kind]
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    q, scale = q8.quantize_weight(w, axis)
    node = _node(kind)
    sh = [-1 if a == axis else 1 for a in range(q.ndim)]
    real = w / scale.reshape(sh)
    safe, safe_scale = q8.u8s8_safe(q, scale, node, real)
    if kind == "depthwise":
        assert safe is q and safe_scale is scale
        return
    rows = q8._reduction_rows(safe.astype(np.int32), node)
    assert q8._pair_sums(rows).max() <= q8.U8S8_PAIR_LIMIT
    grow = safe_scale / scale
    assert 1.0 <= grow.min() and grow.max() <= 2.0
    needed = q8._pair_sums(q8._reduction_rows(q.astype(np.int32), node)).max(axis=1) > q8.U8S8_PAIR_LIMIT
    assert needed.any()
    untouched = q8._reduction_rows(q.astype(np.int32), node)[~needed]
    np.testing.assert_array_equal(rows[~needed], untouched)
    # per channel, no worse than either plain answer: 7-bit weights, or each bad pair moved onto the limit
    target = q8._reduction_rows(real, node)
    err = ((rows * grow[:, None] - target) ** 2).sum(axis=1)
    seven = ((_seven_bit(target) - target) ** 2).sum(axis=1)
    moved = q8._onto_limit(np.round(target).astype(np.int32), target)
    assert q8._pair_sums(moved).max() <= q8.U8S8_PAIR_LIMIT
    pairs_only = ((moved - target) ** 2).sum(axis=1)
    assert (err[needed] <= seven[needed] + 1e-3).all() and (err[needed] <= pairs_only[needed] + 1e-3).all()
    assert err[needed].sum() < 0.8 * min(seven[needed].sum(), pairs_only[needed].sum())


def _two_convs(w1: np.ndarray) -> onnx.ModelProto:
    """Conv (1x1, ``w1``) -> Relu -> Conv: the first runs as ORT's QLinearConv on ``cpu``."""
    c = w1.shape[0]
    w2 = np.eye(c, dtype=np.float32).reshape(c, c, 1, 1)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["h"], name="conv1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["logits"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         ["N", w1.shape[1], 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_cpu_model_computes_the_same_fused_as_unfused():
    """ORT fuses DQ -> Conv -> Q into QLinearConv (integer kernels) at its default level, and runs
    the Q/DQ arithmetic in float at the basic level: with the guard both agree on any CPU."""
    rng = np.random.default_rng(1)
    w1 = rng.uniform(0.5, 1.0, (8, 16, 1, 1)).astype(np.float32)  # same-signed neighbours, large
    model = _two_convs(w1)
    x = rng.uniform(0.9, 1.0, (4, 16, 4, 4)).astype(np.float32)  # near the top of the u8 range
    plan = make_plan(model, "cpu")
    assert "conv1" in plan.quantized
    h = np.maximum(np.einsum("oc,nchw->nohw", w1[:, :, 0, 0], x), 0)
    ranges = {"input": (0.0, 1.0, 1.0), "r": (0.0, float(h.max()), float(h.max()))}
    qdq = q8.build_qdq(model, plan, ranges)
    weight = next(numpy_helper.to_array(t) for t in qdq.graph.initializer if t.name.endswith("conv1_w_int8"))
    assert q8._pair_sums(q8._reduction_rows(weight.astype(np.int32), model.graph.node[0])).max() <= 128
    fused = q8.run(qdq, x)
    unfused = q8.make_session(qdq, basic=True).run(None, {"input": x})[0]
    step = float(h.max()) / 255
    assert np.abs(fused - unfused).max() <= 2 * step, np.abs(fused - unfused).max() / step
    assert np.abs(unfused - h).max() <= 0.05 * float(h.max())  # and both are the conv's output


def test_the_reported_int8_isa_predicts_the_saturation():
    """Reports name the CPU's INT8 extensions (`machine_info()["cpu_int8"]`): "no VNNI" must mean
    the kernels saturate here, a VNNI/AMX name that they do not."""
    from exporter.parity import cpu_int8_isa, machine_info

    isa = cpu_int8_isa()
    assert machine_info()["cpu_int8"] == isa
    if isa is None:
        pytest.skip("no x86 flags in /proc/cpuinfo")
    saturates = _saturates(_pair((8, 4, 1, 1), (0, 0, 0), (1, 0, 0)))
    assert saturates == isa.startswith("no VNNI"), (isa, saturates)
