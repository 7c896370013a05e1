"""The accuracy budget of the PT2E INT8 paths (ExecuTorch, LiteRT), as the ONNX path's
(``quantize.budget``): judge the built artifact on the held-out set; when it misses, rank the
quantized layers by sensitivity and keep the most sensitive ones in float, in growing groups,
judging the artifact each time.

It works on the converted PT2E graph (``convert_pt2e(fold_quantize=False)``), whose every
quantized tensor is a quantize -> dequantize pair in front of its user:

* a layer kept in float reads its input and its weight in float (the pairs are bypassed, and the
  pair before a clamp it reads, where the quantizer put one there): both its weight error and
  its input's rounding go;
* a layer whose output then has a float user runs in float too (its weight pair bypassed): a
  runtime's int8 conv/linear kernel needs a quantized output, and XNNPACK would leave a lone
  dequantize it has no kernel for;
* sensitivity of a layer = KL(FP32 || graph with only that layer's input and weight quantized) on
  the calibration samples and their flips, as ``quantize.budget.sensitivity`` on the ``cpu``
  placement. Measured on real MobileNetV2 (benchmarks/MOBILE_RESULTS.md).
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]
CHUNK = 16  # samples per torch call of the reference-quantized graph (bigger batches run slower here)


@functools.lru_cache(maxsize=None)
def _ops():
    import torch

    q = torch.ops.quantized_decomposed
    aten = torch.ops.aten
    return ({q.quantize_per_tensor.default, q.quantize_per_channel.default},
            {q.dequantize_per_tensor.default, q.dequantize_per_channel.default},
            {aten.conv2d.default, aten.conv1d.default, aten.linear.default},
            {aten.hardtanh.default, aten.relu.default, aten.clamp.default, aten.relu6.default})


def is_quantize(node) -> bool:
    """Whether ``node`` quantizes a tensor (per tensor or per channel)."""
    return node.op == "call_function" and node.target in _ops()[0]


def _pair_source(node) -> Any | None:
    """The float tensor a dequantize(quantize(x)) node stands for, else None."""
    quant, dequant, _, _ = _ops()
    if getattr(node, "target", None) in dequant and getattr(node.args[0], "target", None) in quant:
        return node.args[0].args[0]
    return None


def quantized_layers(graph) -> list:
    """The conv/linear nodes of ``graph`` whose weight is quantized, in graph order."""
    _, _, layers, _ = _ops()
    return [n for n in graph.graph.nodes if n.op == "call_function" and n.target in layers
            and len(n.args) > 1 and _pair_source(n.args[1]) is not None]


def layer_name(node) -> str:
    """The module path of a layer node (``features.1.conv.0.0``), else its graph name."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return path[len("model."):] if path.startswith("model.") else path
    return node.name


def is_conv(node) -> bool:
    return "conv" in str(node.target)


def keep_float(graph, names: set[str]):
    """A copy of ``graph`` whose layers named (graph names) read input and weight in float, and
    whose int8-output layers left with a float-read output run in float as well (module
    docstring)."""
    graph = copy.deepcopy(graph)
    int8_out = {n.name for n in quantized_layers(graph) if _output_quantized(n)}
    for node in quantized_layers(graph):
        if node.name in names:
            for user, pair in _own_pairs(node):
                user.replace_input_with(pair, _pair_source(pair))
    changed = True
    while changed:
        graph.graph.eliminate_dead_code()
        changed = False
        for node in quantized_layers(graph):
            if node.name in int8_out and not _output_quantized(node):
                node.replace_input_with(node.args[1], _pair_source(node.args[1]))
                changed = True
    graph.recompile()
    return graph


def _own_pairs(layer) -> list[tuple[Any, Any]]:
    """(user, dequantize node) of the pairs a layer reads through: its weight's, its input's,
    and, where the input is a clamp of a quantized tensor (a quantizer that takes a ReLU6's range
    before the clamp, as LiteRT's), the clamp's input pair too."""
    _, _, _, clamps = _ops()
    pairs = [(layer, layer.args[1])] if _pair_source(layer.args[1]) is not None else []
    user, arg = layer, layer.args[0]
    while _pair_source(arg) is not None:
        pairs.append((user, arg))
        source = _pair_source(arg)
        if getattr(source, "target", None) not in clamps or len(source.users) != 1:
            break
        user, arg = source, source.args[0]
    return pairs


def _output_quantized(node) -> bool:
    """Whether every user of the layer's output (after a clamp it is fused with) quantizes it."""
    quant, _, _, clamps = _ops()
    out = node
    while len(out.users) == 1 and next(iter(out.users)).target in clamps:
        out = next(iter(out.users))
    return bool(out.users) and all(user.target in quant for user in out.users)


def only_quantized(graph, name: str):
    """A copy of ``graph`` with every quantize/dequantize pair bypassed but the named layer's own
    input and weight pairs."""
    graph = copy.deepcopy(graph)
    layer = next(n for n in graph.graph.nodes if n.name == name)
    own = {id(pair) for _, pair in _own_pairs(layer)}
    for node in list(graph.graph.nodes):
        source = _pair_source(node)
        if source is not None and id(node) not in own:
            node.replace_all_uses_with(source)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def run_graph(graph, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([graph(torch.from_numpy(np.ascontiguousarray(x[i:i + CHUNK]))).numpy()
                               for i in range(0, len(x), CHUNK)])


def sensitivity(graph, x: np.ndarray, ref: np.ndarray, log: Callable[[str], None]
                ) -> list[tuple[str, float]]:
    """[(layer graph name, KL with only that layer quantized)], most sensitive first."""
    from ..quantize.judging import mean_kl

    layers = quantized_layers(graph)
    scores = []
    for i, node in enumerate(layers, 1):
        scores.append((node.name, mean_kl(ref, run_graph(only_quantized(graph, node.name), x))))
        if i % 10 == 0 or i == len(layers):
            log(f"int8 budget: sensitivity {i}/{len(layers)} layers")
    return sorted(scores, key=lambda s: -s[1])


@dataclass
class Fit:
    built: Any  # what ``build`` returned for the chosen graph
    kept: list[str]  # module paths of the layers kept in float
    measurement: Any
    history: list[dict] = field(default_factory=list)
    ranking: list[tuple[str, float]] = field(default_factory=list)
    floor: dict | None = None  # quantize.judging.noise_floor of the held-out samples

    def record(self, criterion, held_source: str) -> dict[str, Any]:
        return {"criterion": criterion.describe(), "budget_met": self.measurement.ok,
                "measured": self.measurement.metrics, "measured_on": held_source,
                "budget_warning": criterion.warning(self.measurement.metrics),
                "measured_held_out": True,
                "kept_float": self.kept, "budget_history": self.history,
                "sensitivity_top": [[n, round(s, 6)] for n, s in self.ranking[:10]],
                "judging_floor": self.floor}


def fit(graph, build: Callable[[Any], tuple[Any, Runner]], fp32: Runner, held: np.ndarray,
        labels: np.ndarray | None, criterion, x_rank: np.ndarray, max_kept_fraction: float,
        fmt: str, log: Callable[[str], None], std: tuple[float, ...] = ()) -> Fit:
    """The artifact with every layer int8 if it meets ``criterion`` on ``held``; else with the
    most sensitive layers (ranked on ``x_rank``) in float, in growing groups of at most
    ``max_kept_fraction`` of the convs (``quantize.budget.climb``), else its
    :class:`PrecisionError`. ``build(graph) -> (built, runner)``; ``std``: the input's
    per-channel normalization, for the judging floor (``quantize.judging.noise_floor``)."""
    from ..quantize.budget import climb, conv_cap, largest_prefix, refusal
    from ..quantize.judging import check_labels, measure, noise_floor

    ref = fp32(held)
    check_labels(labels, int(ref.shape[-1]), "held out")
    floor = noise_floor(fp32, held, std, ref, criterion)  # None without a fitting std
    layers = quantized_layers(graph)
    names = {n.name: layer_name(n) for n in layers}
    convs = sum(is_conv(n) for n in layers)
    max_convs = conv_cap(max_kept_fraction, convs)
    history: list[dict] = []

    def attempt(kept: list[str]):
        built, runner = build(keep_float(graph, set(kept)) if kept else graph)
        result = measure(ref, runner(held), labels, criterion)
        history.append({"kept": len(kept), "added": names[kept[-1]] if kept else None,
                        **{k: v for k, v in result.metrics.items() if k != "samples"}})
        log(f"{fmt} int8 budget: {len(kept)} layer(s) in float -> {result.describe()} "
            f"[{'met' if result.ok else 'not met'}: {criterion.describe()}]")
        return built, result

    built, result = attempt([])
    if result.ok:
        return Fit(built, [], result, history, floor=floor)
    log(f"{fmt} int8 budget: ranking {len(layers)} layers by sensitivity on {len(x_rank)} "
        f"calibration samples (with flips)")
    ranking = sensitivity(graph, x_rank, fp32(x_rank), log)
    ranked = [n for n, _ in ranking]
    conv_names = {n.name for n in layers if is_conv(n)}
    cap = largest_prefix(ranked, conv_names.__contains__, max_convs)
    k, built, result, met = climb(ranked, cap, attempt, result)
    if met:
        return Fit(built, [names[n] for n in ranked[:k]], result, history,
                   [(names[n], s) for n, s in ranking], floor)
    raise refusal(criterion, result, k, max_convs, convs, max_kept_fraction, runtime=fmt,
                  kept_as="in float", fp16=_instead_of_int8(fmt),
                  best_convs=sum(n in conv_names for n in ranked[:k]), uncounted=len(layers) - convs,
                  floor=floor)


def _instead_of_int8(fmt: str) -> str:
    """The refusal's first fix: this runtime's fp16, or fp32 where it has none (LiteRT)."""
    from .registry import get

    if "fp16" in get(fmt).precisions:
        return f"use --precision fp16 (the {fmt} fp16 artifact)"
    return f"use --precision fp32 ({fmt} has no fp16)"
