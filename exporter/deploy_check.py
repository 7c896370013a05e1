"""Deploy-form check of the exported ONNX graph itself: no Conv/Gemm -> BatchNormalization pair
left unfolded, no BN at all where prepare folded every BN, one input ``input``, one output
``logits``, no training-only ops, and ``onnx.checker`` (full check) passes.

The graph is judged, not a BN count predicted before export: the ONNX exporters and simplifiers
fold conv -> BN themselves, so a model prepare could not fold (fx-untraceable, a BN shared by two
convs) is fine when the graph the user gets is."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx
from onnx import numpy_helper

from .errors import DeployCheckError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TRAINING_DOMAIN = "ai.onnx.preview.training"
# op types that only make sense while training (anywhere they appear, in any domain)
TRAINING_OPS = ("Gradient", "Momentum", "Adagrad", "Adam",
                "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss")


@dataclass
class DeployCheck:
    """Result of :func:`check_deploy_form`; ``ok`` when ``problems`` is empty."""

    bn_nodes: int
    expected_bn: int
    inputs: list[str]
    outputs: list[str]
    op_counts: dict[str, int]
    problems: list[str] = field(default_factory=list)
    path: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "bn_nodes": self.bn_nodes, "expected_bn": self.expected_bn,
                "inputs": self.inputs, "outputs": self.outputs,
                "op_counts": dict(sorted(self.op_counts.items())), "problems": list(self.problems),
                "path": self.path}


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk(sub)


def _constant_values(graph: onnx.GraphProto) -> dict[str, Any]:
    """Values of initializers and Constant nodes (to read Dropout's training_mode)."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer
              if not init.data_location == onnx.TensorProto.EXTERNAL}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _training_problems(model: onnx.ModelProto, training_ops: Sequence[str]) -> list[str]:
    constants = _constant_values(model.graph)
    found: Counter[str] = Counter()
    for node in _walk(model.graph):
        label = node.name or node.op_type
        if node.domain == TRAINING_DOMAIN or node.op_type in training_ops:
            found[f"training-only op {node.op_type}"] += 1
        elif node.op_type == "BatchNormalization":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("training_mode", 0) or sum(1 for o in node.output if o) > 1:
                found[f"BatchNormalization in training mode ({label})"] += 1
        elif node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            value = constants.get(node.input[2])
            if value is None or bool(value.item()):
                found[f"Dropout with training_mode ({label})"] += 1
    return [f"{what} x{n}" if n > 1 else what for what, n in found.items()]


FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def unfolded_pairs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(producer, BN) node names where a BatchNormalization directly consumes the output of a
    Conv/ConvTranspose/Gemm that nothing else reads: a fold the export should have made."""
    from .onnx_graph import GraphIndex

    index = GraphIndex(model)
    pairs = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or not node.input:
            continue
        src, tensor = index.producer.get(node.input[0]), node.input[0]
        readers = len(index.consumers.get(tensor, [])) + (tensor in index.outputs)
        if src is not None and src.op_type in FOLDABLE_PRODUCERS and readers == 1:
            pairs.append((src.name or src.op_type, node.name or node.op_type))
    return pairs


def _load(model_or_path: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, None
    path = Path(model_or_path)
    if not path.is_file():
        raise DeployCheckError(f"no ONNX file at {path}", fix="export the model first")
    try:
        return onnx.load(str(path), load_external_data=False), str(path)
    except Exception as err:  # noqa: BLE001 - DecodeError and friends
        raise DeployCheckError(f"{path} is not a readable ONNX model ({err})",
                               fix="re-export the model; the file may be truncated") from err


def check_deploy_form(onnx_path_or_model: str | Path | onnx.ModelProto, expected_unfolded_bn: int,
                      training_ops: Sequence[str] = TRAINING_OPS, strict: bool = True) -> DeployCheck:
    """Check that an exported graph is in deploy form.

    ``expected_unfolded_bn``: BNs the prepare stage could not fold
    (``PrepareReport.expected_bn_nodes``); with 0, any BatchNormalization left is a problem,
    otherwise only BNs that still follow a foldable Conv/Gemm are. With ``strict`` (default) a failing check
    raises :class:`DeployCheckError`; otherwise the problems are only listed in the result.
    """
    model, path = _load(onnx_path_or_model)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    op_counts = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                        for n in _walk(graph))
    result = DeployCheck(bn_nodes=op_counts.get("BatchNormalization", 0),
                         expected_bn=expected_unfolded_bn, inputs=inputs, outputs=outputs,
                         op_counts=dict(op_counts), path=path)
    pairs = unfolded_pairs(model)
    if pairs:
        shown = ", ".join(f"{a} -> {b}" for a, b in pairs[:4]) + (", ..." if len(pairs) > 4 else "")
        result.problems.append(f"{len(pairs)} unfolded Conv/Gemm -> BatchNormalization pair(s): "
                               f"{shown}")
    elif expected_unfolded_bn == 0 and result.bn_nodes:
        result.problems.append(f"{result.bn_nodes} BatchNormalization node(s) left where prepare "
                               "folded every BN")
    if inputs != [INPUT_NAME]:
        result.problems.append(f"graph inputs are {inputs}, expected exactly ['{INPUT_NAME}']")
    if outputs != [OUTPUT_NAME]:
        result.problems.append(f"graph outputs are {outputs}, expected exactly ['{OUTPUT_NAME}']")
    result.problems.extend(_training_problems(model, training_ops))
    try:  # the path form lets the checker handle external data / files over 2 GB
        onnx.checker.check_model(path if path is not None else model, full_check=True)
    except Exception as err:  # ValidationError, InferenceError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        result.problems.append(f"onnx.checker failed: {first[:300]}")
    if strict and result.problems:
        raise DeployCheckError(
            f"{path or 'ONNX model'} is not in deploy form: " + "; ".join(result.problems),
            fix="export the DeployModel from prepare_for_deploy in eval mode "
                "(TrainingMode.EVAL) with input_names=['input'], output_names=['logits'], "
                "and BN folded (recipe [prepare] fold_bn = true)",
        )
    return result
