"""Architecture tests for our own zoo models (exporter/zoo)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.fx
import torchvision
from torch import nn

from exporter.zoo import ZOO_BUILDERS, channel_shuffle
from exporter.zoo.mobilenet_v1 import _BLOCKS
from exporter.zoo.shufflenet_v1 import STAGE_CHANNELS, ChannelShuffle, ShuffleNetV1

# name -> (num_classes, in_channels, spatial sizes to check)
SPECS = {
    "lenet5": (10, 1, (32,)),
    "nin": (1000, 3, (64,)),
    "mobilenet_v1": (1000, 3, (64, 96)),
    "se_resnet18": (1000, 3, (64, 96)),
    "shufflenet_v1": (1000, 3, (64, 96)),
}
NAMES = sorted(ZOO_BUILDERS)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> int:
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ZOO_BUILDERS[name](num_classes=SPECS[name][0])


def randomize_bn(model: nn.Module, seed: int = 1) -> None:
    """Give every BN non-trivial running stats and affine params, so eval-mode BN is not identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)


def rel_err(ref: np.ndarray, cand: np.ndarray) -> float:
    return float(np.abs(ref - cand).max() / np.abs(ref).max())


def test_registry_names() -> None:
    assert set(ZOO_BUILDERS) == {"lenet5", "nin", "mobilenet_v1", "se_resnet18", "shufflenet_v1"}


@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name: str) -> None:
    classes, channels, sizes = SPECS[name]
    model = build(name).eval()
    for size in sizes:
        with torch.no_grad():
            out = model(torch.randn(2, channels, size, size))
        assert out.shape == (2, classes)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_and_unknown_kwarg(name: str) -> None:
    _, channels, sizes = SPECS[name]
    model = ZOO_BUILDERS[name](num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, sizes[0], sizes[0])).shape == (1, 7)
    with pytest.raises(TypeError):
        ZOO_BUILDERS[name](num_classes=7, no_such_option=1)


def test_nin_min_size_63() -> None:
    model = build("nin").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 63, 63)).shape == (1, 1000)


def test_lenet5_param_count_exact() -> None:
    expected = (conv(1, 6, 5) + bn(6)  # C1 (no bias: BN follows)
                + conv(6, 16, 5) + bn(16)  # C3
                + conv(16, 120, 5, bias=True)  # C5
                + linear(120, 84) + linear(84, 10))  # F6, output
    assert expected == 61728
    assert n_params(ZOO_BUILDERS["lenet5"](num_classes=10)) == expected


def test_nin_param_count() -> None:
    def mlpconv(cin: int, cout: int, k: int) -> int:
        return conv(cin, cout, k) + bn(cout) + 2 * (conv(cout, cout, 1) + bn(cout))

    expected = (mlpconv(3, 96, 11) + mlpconv(96, 256, 5) + mlpconv(256, 384, 3)
                + conv(384, 1024, 3) + bn(1024) + conv(1024, 1024, 1) + bn(1024)
                + conv(1024, 1000, 1, bias=True))
    assert expected == 7599432
    assert n_params(ZOO_BUILDERS["nin"](num_classes=1000)) == expected


def mobilenet_v1_expected(widths: list[int], classes: int = 1000) -> int:
    total = conv(3, widths[0], 3) + bn(widths[0])
    for cin, cout in zip(widths, widths[1:]):
        total += conv(cin, cin, 3, groups=cin) + bn(cin) + conv(cin, cout, 1) + bn(cout)
    return total + linear(widths[-1], classes)


def test_mobilenet_v1_param_count() -> None:
    widths = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    assert [c for c, _ in _BLOCKS] == widths[1:]
    assert [s for _, s in _BLOCKS].count(2) == 4  # with the stem: total stride 32
    expected = mobilenet_v1_expected(widths)
    assert expected == 4231976  # the paper's "4.2 million"
    assert n_params(ZOO_BUILDERS["mobilenet_v1"](num_classes=1000)) == expected


def test_mobilenet_v1_width_mult() -> None:
    widths = [16, 32, 64, 64, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512]
    model = ZOO_BUILDERS["mobilenet_v1"](num_classes=1000, width_mult=0.5).eval()
    assert n_params(model) == mobilenet_v1_expected(widths) == 1331592
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_se_resnet18_param_delta_vs_torchvision() -> None:
    base = torchvision.models.resnet18(num_classes=1000)
    se = ZOO_BUILDERS["se_resnet18"](num_classes=1000)
    # One SE per basic block, two blocks per stage: 1x1 conv C->C/16 and C/16->C, both with bias.
    delta = sum(2 * (linear(c, c // 16) + linear(c // 16, c)) for c in (64, 128, 256, 512))
    assert delta == 89080
    assert n_params(base) == 11689512
    assert n_params(se) - n_params(base) == delta
    # Same module names as torchvision: only the SE weights are missing from a resnet18 state dict.
    result = se.load_state_dict(base.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".se." in k for k in result.missing_keys)
    assert len(result.missing_keys) == 8 * 4  # 8 blocks x (fc1, fc2) x (weight, bias)


def shufflenet_v1_expected(groups: int, classes: int = 1000) -> int:
    total = conv(3, 24, 3) + bn(24) + linear(STAGE_CHANNELS[groups][-1], classes)
    cin = 24
    for stage, (cout, repeats) in enumerate(zip(STAGE_CHANNELS[groups], (4, 8, 4))):
        for unit in range(repeats):
            mid = cout // 4
            branch_out = cout - cin if unit == 0 else cout
            first_groups = 1 if stage == 0 and unit == 0 else groups
            total += (conv(cin, mid, 1, groups=first_groups) + bn(mid)
                      + conv(mid, mid, 3, groups=mid) + bn(mid)
                      + conv(mid, branch_out, 1, groups=groups) + bn(branch_out))
            cin = cout
    return total


def test_shufflenet_v1_param_count() -> None:
    assert shufflenet_v1_expected(3) == 1865728  # paper/reference: ~1.9M at 1.0x, g=3
    assert n_params(ZOO_BUILDERS["shufflenet_v1"](num_classes=1000)) == shufflenet_v1_expected(3)
    for g in (1, 2, 4, 8):
        assert n_params(ShuffleNetV1(num_classes=1000, groups=g)) == shufflenet_v1_expected(g)
    with pytest.raises(ValueError):
        ShuffleNetV1(groups=5)


def test_shufflenet_v1_first_conv_ungrouped() -> None:
    model = ShuffleNetV1(num_classes=10, groups=3)
    first_convs = [u.branch[0] for s in (model.stage2, model.stage3, model.stage4) for u in s]
    assert first_convs[0].groups == 1 and first_convs[0].in_channels == 24
    assert all(c.groups == 3 for c in first_convs[1:])
    assert [u.stride for u in model.stage2] == [2, 1, 1, 1]
    assert len(model.stage3) == 8 and len(model.stage4) == 4


def test_channel_shuffle_permutes() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1).expand(2, 6, 2, 3)
    assert channel_shuffle(x, 3)[0, :, 0, 0].tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2)[1, :, 1, 2].tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 1).equal(x)
    # Applying the (g, k) shuffle and then the (k, g) shuffle restores the order.
    assert channel_shuffle(channel_shuffle(x, 3), 2).equal(x)


def test_channel_shuffle_module_matches_function() -> None:
    x = torch.randn(2, 12, 3, 4)
    module = ChannelShuffle(12, 3)
    assert module.perm.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert module(x).equal(channel_shuffle(x, 3))
    assert "perm" not in module.state_dict()  # derived, not a weight
    model = ShuffleNetV1(num_classes=10, groups=3)
    shuffles = [m for m in model.modules() if isinstance(m, ChannelShuffle)]
    assert len(shuffles) == 16  # one per unit, including stage 2's first (ungrouped-input) unit


@pytest.mark.parametrize("name", NAMES)
def test_fx_symbolic_trace(name: str) -> None:
    _, channels, sizes = SPECS[name]
    model = build(name).eval()
    randomize_bn(model)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, channels, sizes[0], sizes[0])
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_eager(name: str, tmp_path) -> None:
    _, channels, sizes = SPECS[name]
    model = build(name).eval()
    randomize_bn(model)
    size = sizes[0]
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (torch.randn(2, channels, size, size),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = torch.randn(3, channels, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"input": x.numpy()})
    assert out.shape == ref.shape
    assert np.abs(ref).max() > 0
    assert rel_err(ref, out) <= 1e-5
    if name == "shufflenet_v1":  # each channel shuffle is one constant-index Gather
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert ops.count("Gather") == 16 and "Shape" not in ops
