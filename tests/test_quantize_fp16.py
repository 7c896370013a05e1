"""FP16 ONNX over the zoo: fp16 weights and compute, fp32 graph I/O, parity within the recipe's tolerance."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from exporter.data import packaged_crops, random_inputs
from exporter.errors import PrecisionError
from exporter.metrics import compare_outputs
from exporter.quantize import quantize_stage
from exporter.quantize.fp16 import convert_fp16
from exporter.quantize.int8 import run
from exporter.recipes import all_recipes

from quant_helpers import PIP_HINT, fp32_onnx, onnx_dtype_summary, real_weights_path, zoo_recipe

# the 0.5 GB VGGs and AlexNet only export at 224 px with the default exporter: --runslow
RECIPES = all_recipes()
FP16_MAX = 65504.0


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_fp16_parity_zoo(name, tmp_path, request):
    recipe = zoo_recipe(name, request)
    size = recipe.input.test_size or min(recipe.input.size)
    path, spec = fp32_onnx(recipe, size=size)
    probe = packaged_crops(spec, 8, seed=7).array if spec.channels == 3 else random_inputs(spec, 8)
    if np.abs(run(onnx.load(str(path)), probe)).max() > FP16_MAX:
        # random-init deep nets (inception_v3, resnet152) have logits beyond fp16's range: the
        # stage must refuse with a typed error instead of writing an artifact that outputs inf
        with pytest.raises(PrecisionError, match="FP16 graph overflows"):
            quantize_stage(path, tmp_path, recipe, spec, "fp16")
        assert not list(tmp_path.glob("*.onnx"))
        return
    entry = quantize_stage(path, tmp_path, recipe, spec, "fp16")
    assert entry["file"] == f"{name}.fp16.onnx" and entry["precision"] == "fp16"
    assert entry["format"] == "onnx" and entry["bytes"] == (tmp_path / entry["file"]).stat().st_size
    model = onnx.load(str(tmp_path / entry["file"]))
    types = onnx_dtype_summary(model)
    assert types["inputs"] == ["FLOAT"] and types["outputs"] == ["FLOAT"], types
    assert "FLOAT16" in types["initializers"]
    # the weights of every Conv/Gemm are fp16 unless a node was kept fp32 for a stated reason
    kept = set(entry["details"]["kept_fp32_nodes"])
    inits = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.name not in kept and node.input[1] in inits:
            assert inits[node.input[1]] == onnx.TensorProto.FLOAT16, node.name
    # parity on fresh inputs (not the ones the stage used), natural images when the recipe is RGB
    tol = recipe.tolerance("fp16")
    x = (packaged_crops(spec, 8, seed=11).array if spec.channels == 3 and spec.color_mode == "RGB"
         else random_inputs(spec, 8, seed=11))
    ref, out = run(onnx.load(str(path)), x), run(model, x)
    cmp = compare_outputs(ref, out)
    assert cmp["rel_max_abs"] <= tol.rel_max_abs, cmp
    assert cmp["top1_agreement"] >= tol.min_top1_agreement, cmp
    assert entry["details"]["within_tolerance"], entry["details"]


def test_fp16_keeps_large_magnitude_nodes_fp32():
    """A node whose activations would overflow fp16 stays fp32 (and the output stays finite)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 4), 300.0, np.float32), "w")
    w2 = numpy_helper.from_array(np.full((4, 2), 1e-3, np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["big"], name="big_mm"),
         helper.make_node("MatMul", ["big", "big_w"], ["big2"], name="bigger_mm"),
         helper.make_node("MatMul", ["big2", "w2"], ["logits"], name="head")],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [w, w2, numpy_helper.from_array(np.full((4, 4), 300.0, np.float32), "big_w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.ones((2, 4), np.float32)
    converted, details = convert_fp16(model, x)
    assert "bigger_mm" in details["kept_fp32_nodes"], details
    out = run(converted, x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, run(model, x), rtol=1e-2)


def test_fp16_real_weights_parity(tmp_path):
    if real_weights_path() is None:
        pytest.skip(f"real MobileNetV2 weights missing: {PIP_HINT}")
    recipe = RECIPES["mobilenet_v2"]
    path, spec = fp32_onnx(recipe, size=96, real_weights=True)
    entry = quantize_stage(path, tmp_path, recipe, spec, "fp16")
    x = packaged_crops(spec, 32, seed=5).array
    cmp = compare_outputs(run(onnx.load(str(path)), x), run(onnx.load(str(tmp_path / entry["file"])), x))
    tol = recipe.tolerance("fp16")
    assert cmp["rel_max_abs"] <= tol.rel_max_abs and cmp["top1_agreement"] >= tol.min_top1_agreement, cmp


def test_onnx_runtime_cpu_runs_the_fp16_graph_in_fp32_arithmetic(tmp_path):
    """ONNX Runtime CPU computes our FP16 ONNX as fp16 weights with fp32 arithmetic (it drops the
    Cast pairs around ops it has no fp16 kernel for): its logits are eager ``.half().float()``'s,
    not true fp16's (benchmarks/FP16_CPU_FIDELITY.md). The CPU parity row of FP16 reads that way."""
    import copy

    import torch

    from exporter.builders import build_model
    from exporter.prepare import prepare_for_deploy

    weights = real_weights_path()
    if weights is None:
        pytest.skip(f"real MobileNetV2 weights missing: {PIP_HINT}")
    recipe = RECIPES["mobilenet_v2"]
    path, spec = fp32_onnx(recipe, size=96, real_weights=True)
    entry = quantize_stage(path, tmp_path, recipe, spec, "fp16")
    x = packaged_crops(spec, 16, seed=5).array
    ort16 = run(onnx.load(str(tmp_path / entry["file"])), x)
    deploy, _ = prepare_for_deploy(build_model(recipe, checkpoint=weights)[0], recipe)
    with torch.no_grad():
        rounded = copy.deepcopy(deploy).eval().half().float()(torch.from_numpy(x)).numpy()
        true16 = copy.deepcopy(deploy).eval().half()(torch.from_numpy(x).half()).float().numpy()
    scale = np.abs(rounded).max()
    assert np.abs(ort16 - rounded).max() < 1e-4 * scale  # fp32 arithmetic on fp16 weights
    assert np.abs(ort16 - true16).max() > 10 * np.abs(ort16 - rounded).max()  # not fp16 arithmetic


def test_an_initializer_shared_by_a_fp16_conv_and_a_fp32_layernorm_converts():
    """A random init's zero biases, merged into one initializer by onnxsim, were read by a Conv
    (to fp16) and a LayerNormalization (kept fp32): ONNX Runtime refused the graph ('bound to
    different types'), every ConvNeXt/Swin/DeiT FP16 export ended in an internal error."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "zeros"),
             numpy_helper.from_array(np.ones(8, np.float32), "ones")]
    nodes = [helper.make_node("Conv", ["x", "w", "zeros"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["y"], ["t"], name="nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "ones", "zeros"], ["out"], name="ln", axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    converted, details = convert_fp16(model)
    assert "ln" in details["kept_fp32_nodes"]
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert np.abs(run(converted, x) - run(model, x)).max() < 1e-2
