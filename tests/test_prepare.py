"""Deploy preparation: BN folding, aux-head stripping, the logits wrapper and the deploy check."""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from exporter.deploy_check import check_deploy_form
from exporter.errors import DeployCheckError, ModelOutputError, RecipeError
from exporter.prepare import DeployModel, fold_batchnorms, make_inplace_safe, prepare_for_deploy, strip_aux_heads
from exporter.random_init import randomize_bn_stats
from exporter.recipes import PrepareSpec, Recipe

torch.set_num_threads(1)
RTOL = 1e-5


def n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((ref - out).abs().max() / ref.abs().max()).item()


def fold_and_compare(model: nn.Module, x: torch.Tensor, seed: int = 0):
    """Randomize BN stats, fold, and return (report, rel err of folded vs. unfolded output)."""
    randomize_bn_stats(model, seed)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        report = fold_batchnorms(model)
        out = model(x)
    return report, rel_err(ref, out)


class ConvBN(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TwoConsumers(ConvBN):
    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


@pytest.mark.parametrize("conv", [
    nn.Conv2d(8, 16, 3, bias=True),
    nn.Conv2d(8, 16, 3, bias=False),
    nn.Conv2d(8, 16, 3, groups=4, bias=False),
    nn.Conv2d(8, 8, 3, groups=8, padding=1),  # depthwise
    nn.Conv2d(8, 16, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"),
], ids=["bias", "no-bias", "grouped", "depthwise", "strided-reflect"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_fold_conv_variants(conv, affine):
    torch.manual_seed(0)
    model = ConvBN(copy.deepcopy(conv), nn.BatchNorm2d(conv.out_channels, affine=affine))
    weight_before = model.conv.weight.detach().clone()
    report, err = fold_and_compare(model, torch.randn(2, 8, 16, 16))
    assert report.folded == [("conv", "bn")] and report.unfolded == []
    assert report.expected_bn_nodes == 0
    assert n_bn(model) == 0 and isinstance(model.bn, nn.Identity)
    assert err <= RTOL
    assert model.conv.bias is not None and model.conv.bias.shape == (conv.out_channels,)
    assert (model.conv.weight - weight_before).abs().max() > 1e-3  # the fold was not a no-op


def test_fold_conv1d_bn1d_and_conv3d_bn3d():
    torch.manual_seed(0)
    m1 = ConvBN(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6))
    report, err = fold_and_compare(m1, torch.randn(2, 4, 20))
    assert len(report.folded) == 1 and err <= RTOL
    m3 = ConvBN(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4))
    report, err = fold_and_compare(m3, torch.randn(1, 2, 6, 6, 6))
    assert len(report.folded) == 1 and err <= RTOL


def test_no_running_stats_is_not_folded():
    torch.manual_seed(0)
    model = ConvBN(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))
    report, err = fold_and_compare(model, torch.randn(2, 3, 16, 16))
    assert report.folded == []
    assert report.unfolded == [("bn", report.unfolded[0][1])]
    assert "no running stats" in report.unfolded[0][1]
    assert n_bn(model) == 1 and err == 0.0


def test_conv_output_with_two_consumers_is_not_folded():
    torch.manual_seed(0)
    model = TwoConsumers(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    report, err = fold_and_compare(model, torch.randn(2, 3, 16, 16))
    assert report.folded == [] and len(report.unfolded) == 1
    name, reason = report.unfolded[0]
    assert name == "bn" and "conv output also feeds add" in reason
    assert report.expected_bn_nodes == 1 and n_bn(model) == 1 and err == 0.0


def test_shared_bn_and_untraceable_model():
    class SharedBN(nn.Module):  # one BN applied after two convs: folding into either is wrong
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bn = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.a(x)) + self.bn(self.b(x))

    report, err = fold_and_compare(SharedBN(), torch.randn(2, 3, 8, 8))
    assert report.folded == [] and "called 2 times" in report.unfolded[0][1]
    assert report.expected_bn_nodes == 2 and err == 0.0

    class Dynamic(nn.Module):  # data-dependent control flow defeats fx
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            x = self.stem(x)
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    report, err = fold_and_compare(Dynamic(), torch.rand(2, 3, 8, 8))
    assert not report.traced and err <= RTOL
    assert report.folded == [("stem.0", "stem.1")]
    assert report.unfolded[0][0] == "bn" and "fx trace failed" in report.unfolded[0][1]


def test_resnet18_all_folded():
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=10)
    assert n_bn(model) == 20
    report, err = fold_and_compare(model, torch.randn(2, 3, 64, 64))
    assert len(report.folded) == 20 and report.unfolded == [] and n_bn(model) == 0
    assert ("conv1", "bn1") in report.folded and ("layer2.0.downsample.0", "layer2.0.downsample.1") in report.folded
    assert err <= RTOL


def bn_not_after_conv(model: nn.Module, x: torch.Tensor) -> int:
    """Oracle independent of fx: BNs whose input tensor is not the very output of a conv."""
    conv_outputs: dict[int, torch.Tensor] = {}  # keeps outputs alive so ids are not reused
    misses: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: conv_outputs.setdefault(id(out), out))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            hooks.append(m.register_forward_pre_hook(
                lambda _m, inp, name=name: None if id(inp[0]) in conv_outputs else misses.append(name)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return len(misses)


def test_densenet121_cat_bn_unfolded():
    torch.manual_seed(0)
    model = tvm.densenet121(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    total = n_bn(model)
    expected_unfolded = bn_not_after_conv(model, x)
    assert 0 < expected_unfolded < total
    report, err = fold_and_compare(model, x)
    assert len(report.unfolded) == expected_unfolded == n_bn(model)
    assert len(report.folded) == total - expected_unfolded
    assert all("cat" in reason for _, reason in report.unfolded)
    assert report.expected_bn_nodes == expected_unfolded
    assert err <= RTOL


def recipe(strip_aux=(), fold_bn=True) -> Recipe:
    return Recipe(name="t", family="test", source="zoo", builder="t",
                  prepare=PrepareSpec(fold_bn=fold_bn, strip_aux=tuple(strip_aux)))


def test_googlenet_aux_stripped_by_prepare():
    torch.manual_seed(0)
    model = tvm.googlenet(num_classes=10, aux_logits=True, init_weights=True).eval()
    randomize_bn_stats(model, 1)
    aux = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("aux1", "aux2")}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    _, unfolded = prepare_for_deploy(model, recipe(["aux1", "aux2"], fold_bn=False))
    assert unfolded.aux_removed == aux and min(aux.values()) > 0
    assert unfolded.params_before - unfolded.params_after == sum(aux.values())
    deploy, report = prepare_for_deploy(model, recipe(["aux1", "aux2"]))
    # each fold drops the BN's weight+bias (2C) and adds a bias to the bias-free conv (C)
    bn_channels = sum(model.get_submodule(bn).num_features for _, bn in report.folded)
    assert report.params_before - report.params_after == sum(aux.values()) + bn_channels
    assert report.params_after == sum(p.numel() for p in deploy.parameters())
    assert report.bn_folded == 57 and report.bn_unfolded == [] and report.expected_bn_nodes == 0
    assert model.aux1 is not None and n_bn(model) > 0  # caller's model untouched
    assert deploy.model.aux1 is None and deploy.model.aux_logits is False
    with torch.no_grad():
        out = deploy(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 10)
    assert rel_err(ref, out) <= RTOL
    json.dumps(report.to_dict())  # manifest-ready

    with pytest.raises(RecipeError, match="aux3") as info:
        strip_aux_heads(model, ["aux1", "aux3"])
    assert "aux2" in info.value.fix and model.aux1 is not None  # nothing removed on error


def test_inception_v3_aux_stripped():
    torch.manual_seed(0)
    model = tvm.inception_v3(num_classes=10, aux_logits=True, init_weights=True).eval()
    aux_params = sum(p.numel() for p in model.AuxLogits.parameters())
    before = sum(p.numel() for p in model.parameters())
    assert strip_aux_heads(model, ["AuxLogits"]) == {"AuxLogits": aux_params}
    assert before - sum(p.numel() for p in model.parameters()) == aux_params > 0
    assert model.AuxLogits is None and model.aux_logits is False
    model.train()  # even in training mode the wrapper yields one tensor
    with torch.no_grad():
        out = DeployModel(model)(torch.randn(2, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_deploy_model_unwraps_named_tuples():
    logits, aux = torch.ones(1, 3), torch.zeros(1, 3)

    class Returns(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x):
            return self.value

    for value in (tvm.GoogLeNetOutputs(logits, aux, aux), tvm.InceptionOutputs(logits, aux),
                  (logits,), {"logits": logits, "aux": aux}):
        assert DeployModel(Returns(value))(torch.zeros(1)) is logits
    assert DeployModel(Returns((aux, logits)), 1)(torch.zeros(1)) is logits
    assert DeployModel(Returns({"a": aux, "b": logits}), "b")(torch.zeros(1)) is logits
    with pytest.raises(ModelOutputError, match=r"returns 2 outputs \(\[0\] Tensor \(1, 3\), \[1\]"):
        DeployModel(Returns((logits, aux)))(torch.zeros(1))  # never a silent pick of the first
    with pytest.raises(ModelOutputError, match="--output-index 2 does not select"):
        DeployModel(Returns((logits, aux)), 2)(torch.zeros(1))
    # the example names the widest 2-d output, the classes' most likely (it named [0], an embedding)
    embedding, classes = torch.zeros(1, 8), torch.zeros(1, 10)
    with pytest.raises(ModelOutputError) as info:
        DeployModel(Returns((embedding, classes)))(torch.zeros(1))
    assert "(e.g. --output-index 1, the widest 2-d output)" in info.value.fix
    with pytest.raises(ModelOutputError) as info:
        DeployModel(Returns({"embedding": embedding, "scores": classes}))(torch.zeros(1))
    assert "(e.g. --output-name scores, the widest 2-d output)" in info.value.fix


def test_make_inplace_safe():
    model = nn.Sequential(nn.ReLU(inplace=True), nn.ReLU6(inplace=True), nn.Hardswish(inplace=True),
                          nn.SiLU(), nn.Hardsigmoid(inplace=True), nn.Dropout(inplace=True))
    assert make_inplace_safe(model) == 5
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert make_inplace_safe(model) == 0


class CatNet(nn.Module):
    """conv-BN stem, two conv-BN branches concatenated, then a BN on the concat (not foldable)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True))
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 1, groups=8), nn.BatchNorm2d(8))
        self.bn_cat = nn.BatchNorm2d(16)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(16, 5))

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.bn_cat(torch.cat([self.a(x), self.b(x)], 1)))


def export(model: nn.Module, path, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False,
                          input_names=kwargs.pop("input_names", ["input"]),
                          output_names=kwargs.pop("output_names", ["logits"]),
                          dynamic_axes=kwargs.pop("dynamic_axes", {"input": {0: "batch"}}),
                          opset_version=17, **kwargs)


@pytest.fixture(scope="module")
def catnet():
    torch.manual_seed(0)
    model = CatNet().eval()
    randomize_bn_stats(model, 3)
    return model


def test_check_deploy_form_folded_export(catnet, tmp_path):
    deploy, report = prepare_for_deploy(catnet, recipe())
    assert report.bn_folded == 3 and report.expected_bn_nodes == 1
    assert report.bn_unfolded == [{"module": "bn_cat", "reason": "input is torch.cat, not a conv or linear"}]
    assert report.inplace_changed == 1 and n_bn(catnet) == 4
    path = tmp_path / "folded.onnx"
    export(deploy, path, do_constant_folding=False)  # the exporter must not hide unfolded BNs
    check = check_deploy_form(path, report.expected_bn_nodes)
    assert check.ok and check.bn_nodes == 1 and check.problems == []
    assert check.inputs == ["input"] and check.outputs == ["logits"] and check.op_counts["Conv"] == 3
    json.dumps(check.to_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = catnet(x)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert rel_err(ref, torch.from_numpy(got)) <= RTOL
    assert check_deploy_form(onnx.load(str(path)), 1).ok  # ModelProto form
    with pytest.raises(DeployCheckError, match=r"1 BatchNormalization node\(s\) left where prepare"):
        check_deploy_form(path, 0)


def test_check_deploy_form_unfolded_export_fails(catnet, tmp_path):
    deploy, report = prepare_for_deploy(catnet, recipe(), fold=False)
    assert report.bn_folded == 0 and report.expected_bn_nodes == 4
    path = tmp_path / "unfolded.onnx"
    export(deploy, path, do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    with pytest.raises(DeployCheckError, match=r"3 unfolded Conv/Gemm -> BatchNormalization pair") as info:
        check_deploy_form(path, 1)
    assert "fold" in info.value.fix
    check = check_deploy_form(path, 1, strict=False)
    assert not check.ok and check.bn_nodes == 4 and len(check.problems) == 1


def test_check_deploy_form_training_export_and_io(catnet, tmp_path):
    deploy, _ = prepare_for_deploy(catnet, recipe())
    path = tmp_path / "train.onnx"
    export(deploy, path, training=torch.onnx.TrainingMode.TRAINING)
    check = check_deploy_form(path, 1, strict=False)
    assert check.bn_nodes == 1 and not check.ok
    assert any("BatchNormalization in training mode" in p for p in check.problems)
    assert any("Dropout with training_mode" in p for p in check.problems)

    class TwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.mean((2, 3)), y.amax((2, 3))

    path = tmp_path / "two.onnx"
    export(TwoOut().eval(), path, input_names=["x"], output_names=["logits", "aux"],
           dynamic_axes={"x": {0: "batch"}})
    check = check_deploy_form(path, 0, strict=False)
    assert check.outputs == ["logits", "aux"] and check.inputs == ["x"] and len(check.problems) == 2
    with pytest.raises(DeployCheckError, match="no ONNX file"):
        check_deploy_form(tmp_path / "missing.onnx", 0)


def test_prepare_is_deterministic(catnet):
    a, ra = prepare_for_deploy(catnet, recipe())
    b, rb = prepare_for_deploy(catnet, recipe())
    assert ra.to_dict() == rb.to_dict()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    m1, m2 = copy.deepcopy(catnet), copy.deepcopy(catnet)
    assert randomize_bn_stats(m1, 7) == randomize_bn_stats(m2, 7) == 4
    assert torch.equal(m1.bn_cat.running_var, m2.bn_cat.running_var)
    assert np.all(m1.bn_cat.running_var.numpy() >= 0.5)
