"""Adaptive average pools whose sizes do not divide: written as MatMuls by the TorchScript ONNX
exporter, equal to PyTorch's pooling, and the eager model is left as it was."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporter.adaptive_pool import MatMulAdaptiveAvgPool2d, matmul_pools
from exporter.export import export_onnx
from exporter.recipes import InputSpec


@pytest.mark.parametrize("in_hw,out_hw", [((2, 2), (7, 7)), ((3, 5), (7, 6)), ((13, 13), (6, 6)),
                                          ((1, 1), (6, 6)), ((9, 10), (4, 3)), ((7, 7), (7, 7))])
def test_matmul_form_equals_pytorch_pooling(in_hw, out_hw):
    x = torch.randn(2, 5, *in_hw, generator=torch.Generator().manual_seed(1))
    expected = nn.AdaptiveAvgPool2d(out_hw)(x)
    got = MatMulAdaptiveAvgPool2d(in_hw, out_hw)(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


class _TinyVgg(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_torchscript_exporter_writes_a_non_divisible_pool_and_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = _TinyVgg().eval()
    spec = InputSpec(size=(12, 12), min_size=8)  # features 3x3 -> 7x7: not a divisor
    path = tmp_path / "tiny.onnx"
    facts = export_onnx(model, spec, path, exporter="torchscript")
    assert facts["adaptive_pools_as_matmul"] == ["avgpool"]
    assert type(model.avgpool) is nn.AdaptiveAvgPool2d  # the eager model is given back unchanged
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMul" in ops and not ops & {"AveragePool", "GlobalAveragePool"}
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_divisible_pools_are_left_to_the_exporter():
    model = _TinyVgg().eval()
    with matmul_pools(model, torch.randn(1, 3, 28, 28)) as swapped:  # features 7x7 -> 7x7
        assert swapped == [] and type(model.avgpool) is nn.AdaptiveAvgPool2d
    with matmul_pools(model, torch.randn(1, 3, 12, 12)) as swapped:
        assert swapped == ["avgpool"] and isinstance(model.avgpool, MatMulAdaptiveAvgPool2d)
    assert type(model.avgpool) is nn.AdaptiveAvgPool2d
