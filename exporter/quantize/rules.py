"""The layers a placement keeps out of INT8 by rule (NVIDIA ModelOpt's rules for TensorRT), and
the refusal of an INT8 export that such rules would leave all float."""
from __future__ import annotations

from typing import Any

import onnx

from ..errors import PrecisionError
from ..onnx_graph import conv_group
from . import int8 as q8
from .placement import Graph, linear_nodes

SMALL_CHANNELS = 4  # a conv reading at most this many channels per group stays fp16 on tensorrt
MIN_GEMM_DIM = 16  # ModelOpt's smallest K/N worth INT8 tensor cores


def exclusion_reasons(model: onnx.ModelProto, target: str) -> dict[str, str]:
    """{layer: why} the ``target`` keeps out of INT8 by rule, as NVIDIA's ModelOpt does for
    TensorRT: a conv reading few channels (a 3-channel stem), and a Gemm that runs as a GEMV (the
    batch is dynamic or 1: tensor cores gain nothing) or has K or N under 16. None on ``cpu``."""
    if target != "tensorrt":
        return {}
    graph = Graph(model)
    batch = q8.fixed_batch(model)
    rows = _gemm_rows(graph)
    out = {}
    for node in linear_nodes(graph):
        w = graph.inits[node.input[1]].dims
        if node.op_type == "Conv" and len(w) > 1 and w[1] * conv_group(node) <= SMALL_CHANNELS:
            out[node.name] = (f"conv reading {w[1] * conv_group(node)} channel(s) stays fp16 "
                              "(ModelOpt's small-channel rule)")
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            n, k = (w[0], w[1]) if trans_b else (w[1], w[0])
            if min(n, k) < MIN_GEMM_DIM:
                out[node.name] = f"Gemm with K={k}, N={n} (< {MIN_GEMM_DIM}) stays fp16 (ModelOpt's rule)"
            elif batch in (None, 1) and rows.get(node.name) in ("batch", 1):
                out[node.name] = ("Gemm runs as a GEMV at batch 1 and stays fp16 (ModelOpt's GEMV rule; "
                                  "a fixed --batch of 2 or more quantizes it)")
    return out


def _gemm_rows(graph: Graph) -> dict[str, Any]:
    """{Gemm: its rows} - "batch" where they are the graph's batch (a classifier after Flatten),
    an int where fixed, None where inferred from a reshape (tokens x batch, never a GEMV)."""
    model = graph.model
    if graph.tensor_types is None:  # no shapes: every Gemm counts as batch-sized (the safe rule)
        return {n.name: "batch" for n in model.graph.node if n.op_type == "Gemm"}
    dims = {name: t.shape.dim for name, t in graph.tensor_types.items()}
    batch_dim = dims[model.graph.input[0].name][0] if dims.get(model.graph.input[0].name) else None
    out: dict[str, Any] = {}
    for node in model.graph.node:
        if node.op_type != "Gemm" or not dims.get(node.input[0]):
            continue
        first = dims[node.input[0]][0]
        if first.HasField("dim_value"):
            out[node.name] = first.dim_value
        elif batch_dim is not None and first.dim_param and first.dim_param == batch_dim.dim_param:
            out[node.name] = "batch"
        else:
            out[node.name] = None
    return out


def refuse_nothing_left(model: onnx.ModelProto, rule_reasons: dict[str, str], target: str) -> None:
    """An INT8 export whose every conv and Gemm the target's rules keep in float would ship the
    FP16 model under an INT8 name: refused, before any calibration work."""
    layers = [n.name for n in linear_nodes(Graph(model))]
    if layers and all(name in rule_reasons for name in layers):
        reasons = "; ".join(dict.fromkeys(rule_reasons.values()))
        raise PrecisionError(
            f"no layer of this model can run INT8 on the {target} placement: its {len(layers)} conv/Gemm "
            f"layer(s) all stay in float by rule ({reasons})",
            fix="export --precision fp16 (what this INT8 file would be), or --target cpu for ONNX Runtime's "
                "CPU INT8" if target == "tensorrt" else "export --precision fp16")
