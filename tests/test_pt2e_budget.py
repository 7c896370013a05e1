"""The PT2E INT8 budget (``backends.pt2e_budget``): a layer kept in float reads float input and
weight, its producer then runs in float, the ranking finds the layer whose input per-tensor int8
destroys, and the ExecuTorch artifact built with it kept is fully delegated and meets a budget the
all-int8 one misses."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                reason="pip install 'zoo-exporter[executorch]' (not installed here)")


def _net():
    """conv -> ReLU6 -> conv -> ReLU -> conv -> pool -> linear, where the second conv's output
    has one channel ~300x the others: per-tensor int8 of the third conv's input rounds the seven
    small channels to a level or two, while per-channel weights keep every other layer exact
    enough."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10)).eval()
    with torch.no_grad():
        net[2].weight[0].mul_(300.0)
        net[2].bias[0] = 300.0  # channel 0 always on, far larger than the rest
        net[4].weight[:, 0].div_(300.0)
    return net


@pytest.fixture(scope="module")
def quantized():
    import torch

    from exporter.backends import pt2e
    from exporter.backends.executorch import _quantizer

    net = _net()
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    held = rng.standard_normal((128, 3, 16, 16)).astype(np.float32)
    graph = pt2e.pt2e_quantize(net, torch.from_numpy(calibration[:1]), _quantizer(), calibration,
                               fold_quantize=False)
    return net, graph, calibration, held


def _kl(net, graph, x):
    import torch

    from exporter.backends.pt2e_budget import run_graph
    from exporter.quantize.judging import mean_kl

    with torch.no_grad():
        return mean_kl(net(torch.from_numpy(x)).numpy(), run_graph(graph, x))


def test_ranking_puts_the_layer_reading_the_outlier_tensor_first(quantized):
    import torch

    from exporter.backends import pt2e_budget as pb

    net, graph, calibration, _ = quantized
    layers = pb.quantized_layers(graph)
    assert [pb.layer_name(n) for n in layers] == ["0", "2", "4", "7"]
    with torch.no_grad():
        ref = net(torch.from_numpy(calibration)).numpy()
    ranking = pb.sensitivity(graph, calibration, ref, lambda _m: None)
    names = {n.name: pb.layer_name(n) for n in layers}
    assert names[ranking[0][0]] == "4", ranking
    assert ranking[0][1] > 10 * ranking[1][1], ranking  # not a near-tie: the outlier input dominates


def test_kept_layer_reads_float_and_its_producer_runs_in_float(quantized):
    from exporter.backends import pt2e_budget as pb

    net, graph, _, held = quantized
    layers = {pb.layer_name(n): n.name for n in pb.quantized_layers(graph)}
    kept = pb.keep_float(graph, {layers["4"]})
    nodes = {n.name: n for n in kept.graph.nodes}
    third, second = nodes[layers["4"]], nodes[layers["2"]]
    # the kept conv reads the ReLU output and its weight parameter, no dequantize in between
    assert "relu" in str(third.args[0].target) and third.args[1].op == "get_attr"
    # its producer's output is now read in float: no int8 kernel can write it, so it is float too
    assert second.args[1].op == "get_attr" and "dequantize" in str(second.args[0].target)
    # the others keep their int8 weights
    assert [pb.layer_name(n) for n in pb.quantized_layers(kept)] == ["0", "7"]
    # the original graph is untouched
    assert len(pb.quantized_layers(graph)) == 4
    assert _kl(net, kept, held) < 0.2 * _kl(net, graph, held), (_kl(net, kept, held),
                                                                  _kl(net, graph, held))


def test_fit_keeps_the_ranked_layer_and_the_pte_is_fully_delegated(quantized, tmp_path):
    import torch

    from exporter.backends import pt2e_budget as pb
    from exporter.backends.executorch import _build_int8
    from exporter.quantize.judging import Criterion, measure

    net, graph, calibration, held = quantized
    example = torch.from_numpy(held[:1])
    built = []

    def build(g):
        made, runner = _build_int8(g, example, tmp_path / "net.int8.pte")
        built.append(made[1])
        return made, runner

    def fp32(x):
        return pb.run_graph(net, x)

    all_int8 = measure(fp32(held), build(graph)[1](held), None, Criterion("agreement", 0.0))
    threshold = min(0.99, all_int8.metrics["top1_agreement"] + 0.05)
    built.clear()
    logs: list[str] = []
    result = pb.fit(graph, build, fp32, held, None, Criterion("agreement", threshold),
                    calibration, 0.5, "executorch", logs.append)
    assert result.kept == ["4"], (result.kept, logs)
    assert result.measurement.ok and result.measurement.metrics["top1_agreement"] >= threshold
    assert [h["kept"] for h in result.history] == [0, 1]
    # every build lowered every node to XNNPACK: no lone dequantize left on the portable ops
    assert all(b["portable_nodes"] == 0 for b in built), built
    record = result.record(Criterion("agreement", threshold), "held")
    assert record["kept_float"] == ["4"] and record["sensitivity_top"][0][0] == "4"


def test_fit_refuses_with_the_best_it_reached(quantized, tmp_path):
    import torch

    from exporter.backends import pt2e_budget as pb
    from exporter.backends.executorch import _build_int8
    from exporter.errors import PrecisionError
    from exporter.quantize.judging import Criterion

    net, graph, calibration, held = quantized
    example = torch.from_numpy(held[:1])
    with pytest.raises(PrecisionError) as info:
        pb.fit(graph, lambda g: _build_int8(g, example, tmp_path / "net.int8.pte"),
               lambda x: pb.run_graph(net, x), held, None, Criterion("agreement", 1.01),
               calibration, 0.0, "executorch", lambda _m: None)
    text = str(info.value)
    assert "keeping at most 0 of the 3 convs in float (--max-kept-fraction 0; the " in text, text
    assert "other layer(s), not convs, are not counted): the best" in text, text
    assert "the best (" in text and "n=128" in text


def test_a_converter_crash_names_the_operator_it_was_on():
    """A quantizer's per-op hook that crashes (litert-torch's _annotate_mul on a tuple model) is
    named by op and place, not 'operator unknown'."""
    from exporter.backends.pt2e import conversion_error

    def _annotate_mul(nodes):
        return nodes[1]

    try:
        _annotate_mul([])
    except IndexError as err:
        made = conversion_error("LiteRT (litert-torch)", "tflite", err)
    assert made.op == "mul (the quantizer's _annotate_mul)"
    assert "IndexError: list index out of range, in tests/test_pt2e_budget.py:_annotate_mul" in made.message
