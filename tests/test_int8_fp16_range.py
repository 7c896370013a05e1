"""INT8 for TensorRT keeps layers out of int8 in fp16 only where fp16 holds their values."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.data import packaged_crops
from exporter.metrics import compare_outputs
from exporter.quantize import calibration as cal
from exporter.quantize.thresholds import compute_ranges
from exporter.quantize.fp16 import (FP16_MAX, MAX_FP16_MAGNITUDE, fp16_unsafe_layers,
                                    large_magnitude_nodes)
from exporter.quantize.int8 import build_qdq, run
from exporter.quantize.placement import plan as make_plan
from exporter.recipes import InputSpec

LOUD_MODEL = '''
import torch
from torch import nn


class Loud(nn.Module):
    """A 3-channel stem (kept out of int8 by rule) whose output is past fp16's range."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            self.stem.weight.mul_(1e5)
            self.stem.bias.mul_(1e5)
            self.body.weight.mul_(1e-5)

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build():
    return Loud()
'''


def test_kept_layer_beyond_fp16_stays_fp32_from_the_command_line(tmp_path):
    """The rule keeps the stem out of int8; its output reaches ~3e5, so fp16 would make it inf.
    The export keeps it fp32, says so, and the artifact agrees with FP32 (before: refused, 0.45)."""
    (tmp_path / "loud_model.py").write_text(LOUD_MODEL)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "export", "loud_model.py:build", "--channels", "3",
         "--num-classes", "10", "--input-size", "32", "--precision", "int8", "--calibration",
         "packaged", "--calibration-samples", "32", "--eval-samples", "64", "-o", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = next(a for a in json.loads((out / "manifest.json").read_text())["artifacts"]
                 if a["precision"] == "int8")
    d = entry["details"]
    assert sorted(d["kept_fp16_layers"]) == ["/model/head/Gemm", "/model/stem/Conv"]
    assert list(d["kept_fp32_layers"]) == ["/model/stem/Conv"]
    assert "|output| reaches" in d["kept_fp32_layers"]["/model/stem/Conv"]
    assert "kept in fp16: 2 layer(s) by rule, 0 by the budget; 1 of them in fp32 (beyond fp16's range)" in proc.stdout
    assert d["budget_met"] and d["measured"]["top1_agreement"] >= 0.95

    fp32 = onnx.load(str(out / "loud_model_build.onnx"))
    model = onnx.load(str(out / entry["file"]))
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    stem, head = nodes["/model/stem/Conv"], nodes["/model/head/Gemm"]
    assert inits[stem.input[1]].data_type == TensorProto.FLOAT  # no Cast: fp32 weights
    assert stem.input[0] == fp32.graph.input[0].name
    assert inits[head.input[1]].data_type == TensorProto.FLOAT16  # the head fits: fp16
    x = packaged_crops(InputSpec(channels=3, size=(32, 32), resize=36), 16, seed=7).array
    stem_out = run(fp32, x, extra=[stem.output[0]])[stem.output[0]]
    assert np.abs(stem_out).max() > FP16_MAX  # what fp16 would have turned into inf
    logits = run(model, x)
    assert np.isfinite(logits).all()
    assert compare_outputs(run(fp32, x), logits)["cosine"] > 0.999


def _three_convs(bias: float, gain: float) -> onnx.ModelProto:
    """x -> A (a bias of ``bias``), B (weights x ``gain``) -> Relu -> "RB", C (plain)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    for name, scale, b in (("A", 1.0, bias), ("B", gain, 0.0), ("C", 1.0, 0.0)):
        w = (rng.standard_normal((4, 3, 3, 3)) * 0.1 * scale).astype(np.float32)
        bb = np.zeros(4, np.float32)
        bb[0] = b
        inits += [numpy_helper.from_array(w, f"w{name}"), numpy_helper.from_array(bb, f"b{name}")]
        nodes.append(helper.make_node("Conv", ["x", f"w{name}", f"b{name}"], [name], name=name,
                                      pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["B"], ["RB"], name="relu_B"))
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("A", "RB", "C")]
    graph = helper.make_graph(nodes, "three", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, 8, 8])], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_fp16_unsafe_layers_names_weights_and_activations_past_the_limits():
    x = np.random.default_rng(1).uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    model = _three_convs(bias=1e5, gain=1.0)
    b_max = float(np.abs(run(model, x, extra=["B"])["B"]).max())
    gain = 1.05 * MAX_FP16_MAGNITUDE / b_max  # B's output 5 % past the limit
    unsafe = fp16_unsafe_layers(_three_convs(1e5, gain), ["A", "B", "C"], x)
    assert sorted(unsafe) == ["A", "B"], unsafe
    assert "weight or bias of 1e+05" in unsafe["A"] and "|output| reaches" in unsafe["B"]
    below = fp16_unsafe_layers(_three_convs(6e3, 0.95 * MAX_FP16_MAGNITUDE / b_max), ["A", "B", "C"], x)
    assert below == {}, below  # A's output ~6e3, B's 5 % under the limit
    fits = fp16_unsafe_layers(_three_convs(6e4, 1.0), ["A"], x)  # the bias fits fp16, the output not
    assert "|output| reaches 6e+04" in fits["A"], fits
    assert fp16_unsafe_layers(model, ["B", "C"], x[:0]) == {}  # no data: weights only


def test_tensor_maxima_streams_the_largest_magnitude_of_float_tensors():
    """One helper for the fp16 checks and the budget's coverage: the max |value| of each tensor
    over every batch (brute force: the whole set at once); integer tensors are left out."""
    x = np.random.default_rng(2).uniform(-1, 1, (20, 3, 8, 8)).astype(np.float32)
    model = _three_convs(bias=3e4, gain=1.0)
    model.graph.node.append(helper.make_node("Shape", ["C"], ["shape_C"], name="shape"))
    model.graph.output.append(helper.make_tensor_value_info("shape_C", TensorProto.INT64, None))
    whole = run(model, x, batch=len(x), extra=["A", "B", "RB", "C"])
    top = cal.tensor_maxima(model, ["A", "B", "RB", "C", "shape_C"], x, batch=3)
    assert sorted(top) == ["A", "B", "C", "RB"]  # the int64 shape is not a magnitude
    for t in ("A", "B", "RB", "C"):
        assert top[t] == pytest.approx(float(np.abs(whole[t]).max()), rel=1e-6), t  # batch 3 vs 20
    assert top["A"] > 2.9e4 and top["RB"] <= top["B"]
    # the FP16 export's check reads it: A's output (bias 3e4) passes 8192, no other node does
    assert large_magnitude_nodes(model, x) == ["A"]
    assert sorted(large_magnitude_nodes(model, x, limit=0.5 * top["C"])) == ["A", "B", "C", "relu_B"]


def test_build_qdq_keeps_named_layers_fp32_where_fp16_overflows():
    """Kept B runs between fp16 Casts unless named in ``fp32_layers``; its output is 4x past fp16's
    maximum, which TensorRT's Cast turns into inf. (ONNX Runtime CPU drops such Cast pairs, so it
    cannot show the overflow: the check has to be made on the values.)"""
    x = np.random.default_rng(1).uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    model = _three_convs(bias=0.0, gain=1.0)
    b_max = float(np.abs(run(model, x, extra=["B"])["B"]).max())
    model = _three_convs(bias=0.0, gain=4 * FP16_MAX / b_max)
    ranges = compute_ranges(cal.collect_statistics(model, x), "minmax")
    plan = make_plan(model, "tensorrt", {"B"})
    ref = run(model, x, extra=["RB"])["RB"]
    with np.errstate(over="ignore"):
        assert np.isinf(ref.astype(np.float16)).any()  # what a fp16 Cast of B's output gives
    as_fp16, as_fp32 = build_qdq(model, plan, ranges), build_qdq(model, plan, ranges, fp32_layers={"B"})
    casts = {m: [n for n in q.graph.node if n.op_type == "Cast"] for m, q in (("fp16", as_fp16), ("fp32", as_fp32))}
    assert [n.output[0] for n in casts["fp16"]] == ["B_in_fp16", "B"] and casts["fp32"] == []
    b_node = next(n for n in as_fp32.graph.node if n.name == "B")
    assert b_node.input[0] == "x" and b_node.output[0] == "B"
    weight = next(t for t in as_fp32.graph.initializer if t.name == b_node.input[1])
    assert weight.data_type == TensorProto.FLOAT
    np.testing.assert_allclose(run(as_fp32, x, extra=["RB"])["RB"], ref, rtol=1e-5, atol=1e-3 * np.abs(ref).max())
