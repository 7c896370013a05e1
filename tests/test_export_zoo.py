"""Every zoo recipe exports to ONNX and TorchScript in deploy form with parity to eager PyTorch.

Eager reference = the prepared but *unfolded* model with randomized BN statistics, so the BN fold
and every export step are really checked. Default suite: reduced input sizes; `slow`: native.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from exporter.artifacts import sha256_file
from exporter.pipeline import ExportRequest, export
from exporter.recipes import all_recipes

SEED_ZOO = {
    "lenet5", "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "googlenet", "inception_v3",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "nin", "densenet121",
    "efficientnet_b0", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "se_resnet18", "shufflenet_v1", "shufflenet_v2_x1_0",
}
RECIPES = all_recipes()


def test_every_zoo_model_has_a_recipe_and_every_recipe_is_exercised():
    assert set(RECIPES) == SEED_ZOO, (
        f"missing recipes: {sorted(SEED_ZOO - set(RECIPES))}, recipes without tests: "
        f"{sorted(set(RECIPES) - SEED_ZOO)}")
    for recipe in RECIPES.values():
        assert recipe.input.test_size, f"{recipe.name} has no [input] test_size for the default suite"


def test_zoo_builders_match_zoo_recipes():
    from exporter.zoo import ZOO_BUILDERS

    ours = {r.builder for r in RECIPES.values() if r.source == "zoo"}
    assert ours == set(ZOO_BUILDERS)


def _check_export(name: str, size: int, tmp_path):
    recipe = RECIPES[name]
    result = export(ExportRequest(model=name, formats=("onnx", "torchscript"), input_size=size,
                                  output=tmp_path / name))
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    # manifest: hashes of every file, what prepare did
    assert {a["format"] for a in manifest["artifacts"]} == {"onnx", "torchscript"}
    for artifact in manifest["artifacts"]:
        assert sha256_file(tmp_path / name / artifact["file"]) == artifact["sha256"]
    prep = manifest["prepare"]
    # deploy form: BN nodes left == BN the fold reported as not foldable
    graph = onnx.load(str(tmp_path / name / f"{name}.onnx"))
    bn_nodes = sum(n.op_type == "BatchNormalization" for n in graph.graph.node)
    assert bn_nodes == len(prep["bn_unfolded"])
    if name == "densenet121":
        assert bn_nodes > 0 and all(u["module"] and u["reason"] for u in prep["bn_unfolded"])
    else:
        assert bn_nodes == 0
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert [i.name for i in graph.graph.input] == ["input"]
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in result.reference.modules())
    assert prep["bn_folded"] + len(prep["bn_unfolded"]) == n_bn
    # parity rows: ONNX on onnxruntime and TorchScript, on real photos + random tensors
    rows = {r["format"]: r for r in result.parity}
    assert set(rows) == {"onnx", "torchscript"}
    for row in rows.values():
        assert row["samples"] >= 8
        assert row["rel_max_abs"] <= recipe.tolerance("fp32").rel_max_abs, row
        assert row["top1_agreement"] == 1.0, row
    # the outputs are not degenerate (random-init logits can be all ~0)
    x = torch.randn(2, recipe.input.channels, size, size)
    with torch.no_grad():
        logits = result.reference(x).numpy()
    assert logits.shape == (2, recipe.num_classes) and np.std(logits) > 0
    # TorchScript loads with torch alone and matches on a fresh input
    ts = torch.jit.load(str(tmp_path / name / f"{name}.ts.pt"))
    with torch.no_grad():
        got = ts(x).numpy()
    assert np.abs(got - logits).max() <= 1e-4 * np.abs(logits).max()
    return result


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_zoo_export_reduced_size(name, tmp_path):
    recipe = RECIPES[name]
    _check_export(name, recipe.input.test_size, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_zoo_export_native_size(name, tmp_path):
    _check_export(name, max(RECIPES[name].input.size), tmp_path)


def test_aux_heads_removed_from_artifacts(tmp_path):
    result = export(ExportRequest(model="googlenet", input_size=64, output=tmp_path / "g", verify=False))
    removed = result.manifest["prepare"]["aux_removed"]
    assert set(removed) == {"aux1", "aux2"} and all(v > 1_000_000 for v in removed.values())
    # without folding, the parameter count drops by exactly the aux heads' parameters
    from exporter.builders import build_model
    from exporter.prepare import prepare_for_deploy

    model, _ = build_model(RECIPES["googlenet"])
    full = sum(p.numel() for p in model.parameters())
    stripped, report = prepare_for_deploy(model, RECIPES["googlenet"], fold=False)
    assert full - sum(p.numel() for p in stripped.parameters()) == sum(removed.values())
    assert report.aux_removed == removed
    names = {init.name for init in onnx.load(str(tmp_path / "g" / "googlenet.onnx")).graph.initializer}
    assert not any("aux" in n for n in names)
