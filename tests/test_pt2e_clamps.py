"""PT2E INT8 for ExecuTorch: a ReLU6 is quantized after the clamp, not before it (LiteRT keeps
its quantizer's annotation: ``fuse_clamps=False``)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                reason="pip install 'zoo-exporter[executorch]' (not installed here)")


def _net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.Conv2d(16, 16, 1),
                        nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    with torch.no_grad():  # conv outputs well outside [0, 6] on both sides: what the clamp removes
        net[0].weight.mul_(8.0)
        net[0].bias.sub_(4.0)
    return net


def _quantize(fuse_clamps: bool = True):
    from exporter.backends import pt2e
    from exporter.backends.executorch import _quantizer

    net = _net()
    calibration = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    quantizer = _quantizer()  # the one the ExecuTorch backend uses
    record: dict = {}
    import torch
    graph = pt2e.pt2e_quantize(net, torch.from_numpy(calibration[:1]), quantizer, calibration,
                               record=record, fuse_clamps=fuse_clamps)
    return net, graph, calibration, record


def _quantize_inputs_of(graph, op_name: str) -> list[str]:
    """Targets of the nodes feeding each ``op_name`` call (through its dequantize, if any)."""
    out = []
    for node in graph.graph.nodes:
        if node.op == "call_function" and op_name in str(node.target):
            source = node.args[0]
            if "dequantize" in str(source.target):
                source = source.args[0]
            out.append(str(source.target))
    return out


def test_relu6_is_quantized_after_the_clamp_with_a_range_inside_0_6():
    net, graph, _, record = _quantize()
    assert record["clamps_fused"] == 2
    # conv -> hardtanh directly (no quantize/dequantize between them); the clamp's output is quantized
    assert all("conv2d" in src for src in _quantize_inputs_of(graph, "hardtanh")), \
        _quantize_inputs_of(graph, "hardtanh")
    scales = [float(n.args[1]) for n in graph.graph.nodes
              if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
              and "hardtanh" in str(n.args[0])]
    assert scales and max(scales) <= 6.0 / 255 + 1e-6, scales  # all 256 levels inside [0, 6]


def test_moving_the_quantization_lowers_the_int8_error(monkeypatch):
    import torch

    from exporter.backends import pt2e

    net, fused, x, _ = _quantize()
    # the quantizer's own annotation: the range taken before the clamp
    monkeypatch.setattr(pt2e, "fuse_clamp_annotations", lambda graph_module: 0)
    _, plain, _, _ = _quantize()
    with torch.no_grad():
        ref = net(torch.from_numpy(x))
        err_fused = float((fused(torch.from_numpy(x)) - ref).abs().max())
        err_plain = float((plain(torch.from_numpy(x)) - ref).abs().max())
    assert err_fused < 0.7 * err_plain, (err_fused, err_plain)


def test_without_fuse_clamps_the_quantizer_annotation_is_kept():
    """LiteRT's setting (backends/tflite.py): the clamp reads a dequantized conv output."""
    _, graph, _, record = _quantize(fuse_clamps=False)
    assert "clamps_fused" not in record
    feeding = [str(n.args[0].target) for n in graph.graph.nodes
               if n.op == "call_function" and "hardtanh" in str(n.target)]
    assert len(feeding) == 2 and all("dequantize_per_tensor" in f for f in feeding), feeding
