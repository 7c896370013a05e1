"""benchmarks/int8_cpu_profile.py's pieces: the uint8-depthwise variant computes what the int8 one
does, and its ONNX Runtime profile groups every node of the optimized graph into a kind."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.quantize import quantize_stage
from exporter.quantize.int8 import run
from exporter.recipes import get_recipe
from quant_helpers import fp32_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from int8_cpu_profile import KINDS, depthwise_u8, is_depthwise, profile  # noqa: E402


@pytest.fixture(scope="module")
def cpu_int8(tmp_path_factory):
    recipe = get_recipe("mobilenet_v2")
    path, spec = fp32_onnx(recipe, size=recipe.input.test_size)
    out = tmp_path_factory.mktemp("q")
    entry = quantize_stage(path, out, recipe, spec, "int8", calibration="packaged", samples=8,
                           target="cpu", budget=False)
    x = np.random.default_rng(0).standard_normal((4, 3, *spec.size)).astype(np.float32)
    return onnx.load(str(out / entry["file"])), x


def test_uint8_depthwise_weights_give_the_same_outputs(cpu_int8):
    model, x = cpu_int8
    variant = depthwise_u8(model)
    inits = {t.name: t for t in variant.graph.initializer}
    producer = {n.output[0]: n for n in variant.graph.node}
    depthwise = [n for n in variant.graph.node if is_depthwise(n)]
    assert len(depthwise) == 17  # MobileNetV2's depthwise convs
    for node in depthwise:
        dq = producer[node.input[1]]
        assert inits[dq.input[0]].data_type == onnx.TensorProto.UINT8
        assert set(onnx.numpy_helper.to_array(inits[dq.input[2]]).tolist()) == {128}
    assert np.array_equal(run(model, x), run(variant, x))
    with pytest.raises(ValueError, match="no depthwise conv"):
        depthwise_u8(onnx.load(str(fp32_onnx(get_recipe("lenet5"))[0])))


def test_profile_counts_every_node_of_the_optimized_graph(cpu_int8, tmp_path):
    model, x = cpu_int8
    per, counts = profile(model, x[:1], 3, 1, tmp_path, "m")
    optimized = onnx.load(str(tmp_path / "m.opt.onnx"))
    assert sum(counts.values()) == len(optimized.graph.node) and set(counts) <= set(KINDS)
    assert counts["depthwise convs"] == 17 and counts["other convs"] == 35  # 52 QLinearConv in all
    assert per["depthwise convs"] > 0 and per["other convs"] > 0
