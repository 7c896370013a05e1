"""Where Q/DQ pairs go: the TensorRT placement and the onnxruntime-CPU placement.

A :class:`Plan` lists which *edges* (tensor -> consumer input slot) read a fake-quantized copy of
an activation, and which Conv/Gemm weights are stored as per-channel int8. Edges, not tensors:
a tensor consumed by a quantized conv and by a layer kept in higher precision gets one Q/DQ pair
whose output feeds only the quantized consumer.

``tensorrt`` (the placement NVIDIA's ModelOpt uses, its rules re-derived here):
  * Q/DQ on the activation input and (per-channel, axis 0) the weight of every quantized
    Conv / Gemm; symmetric int8, zero-point 0; the bias stays float (TensorRT wants no int32 DQ).
  * a residual ``Add`` whose one input is the output of a quantized Conv gets Q/DQ on its *other*
    input (the skip branch) only, so TensorRT fuses conv + add into one int8 kernel.
  * no Q/DQ on any op output (no output quantization), nothing else quantized.

``cpu`` (what makes onnxruntime's CPU int8 kernels fire; a layer kept out of int8 keeps FP32
weights and reads its input in float, so keeping it removes its input's activation error too,
which is most of the error on real MobileNetV2: benchmarks/INT8_ERROR_BUDGET.md):
  * uint8 asymmetric activations, int8 symmetric per-channel weights (the U8S8 path of MLAS).
  * every input of Conv / Gemm / Add / Mul / Concat / (Global)AveragePool is quantized, so each
    op's output is also a quantized tensor: ORT fuses DQ -> op -> Q into QLinearConv / QLinearAdd /
    QLinearConcat / QGemm ... and folds a Clip/Relu followed by Q into the Q. Shape-only ops
    (Flatten, Reshape, MaxPool, Transpose, Slice) reuse their input's scale so ORT can drop the
    DQ/Q around them. The graph output stays float.
  * such an op whose output a float op reads (HardSwish, a BatchNormalization after a Concat) still
    writes it behind a Q, so it fuses; the float op runs between a DQ and a Q (``float_readers``).
    Before 2026-12-05 the op ran in float instead: GoogLeNet's INT8 model ran 36 of its 57 convs
    in float and slower than FP32 (benchmarks/CPU_ZOO_FUSION.md).
  * a conv whose output a kept layer reads in float cannot fuse into QLinearConv (ORT needs every
    reader behind a Q): it runs float anyway, so it keeps its FP32 weight (``float_out``) instead of
    an int8 weight ORT would dequantize on every run; its input stays quantized.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import onnx

from ..onnx_graph import GraphIndex

from ..defaults import INT8_TARGETS as TARGETS  # noqa: E402 - re-exported
LINEAR_OPS = ("Conv", "Gemm")
CPU_INT8_OPS = ("Conv", "Gemm", "Add", "GlobalAveragePool", "AveragePool", "Concat", "Mul")
PASSTHROUGH_OPS = ("Flatten", "Reshape", "MaxPool", "Transpose", "Slice")
ACTIVATION_OPS = ("Relu", "Clip")


Graph = GraphIndex  # one graph index for the quantizer, the lint and the deploy check


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique name (exclusion lists and reports refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def constant_weights_to_initializers(model: onnx.ModelProto) -> int:
    """Make a Conv/Gemm weight that a Constant node holds an initializer (onnxsim folds timm
    ConvNeXt's layer scale into the weight and writes it as a Constant node: those convs were
    neither INT8 nor kept with a reason). Returns how many moved."""
    weights = {n.input[1] for n in model.graph.node if n.op_type in LINEAR_OPS and len(n.input) > 1}
    moved = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.output[0] in weights and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            moved.append(node)
    for node in moved:
        model.graph.node.remove(node)
    return len(moved)


def linear_nodes(graph: Graph) -> list[onnx.NodeProto]:
    """Conv / Gemm nodes with a constant weight: the layers that can run in int8."""
    out = []
    for node in graph.model.graph.node:
        if node.op_type not in LINEAR_OPS or len(node.input) < 2 or node.input[1] not in graph.inits:
            continue
        if node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute}
            if attrs.get("transA", 0):
                continue
        out.append(node)
    return out


def weight_axis(node: onnx.NodeProto) -> int:
    """Per-channel axis of a weight: output channels (Conv axis 0, Gemm axis 0 if transB else 1)."""
    if node.op_type == "Gemm":
        return 0 if {a.name: a.i for a in node.attribute}.get("transB", 0) else 1
    return 0


@dataclass
class Plan:
    target: str
    quantized: list[str]  # Conv/Gemm node names running int8
    kept: list[str]  # Conv/Gemm node names left in higher precision
    edges: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # tensor -> [(node, slot)]
    range_of: dict[str, str] = field(default_factory=dict)  # tensor whose range a tensor borrows
    signed: bool = True  # int8 (True) or uint8 (False) activations
    float_out: list[str] = field(default_factory=list)  # cpu: read in float downstream, FP32 weight
    u8s8_guard: bool = True  # uint8 activations: int8 weights fit ORT's non-VNNI kernels (int8.u8s8_safe)

    @property
    def guards_u8s8(self) -> bool:
        return not self.signed and self.u8s8_guard

    @property
    def tensors(self) -> list[str]:
        return list(self.edges)


def plan(model: onnx.ModelProto, target: str, exclude: set[str] | frozenset = frozenset(),
         demote: bool = True) -> Plan:
    """Choose the Q/DQ edges for ``target``; ``exclude`` names Conv/Gemm nodes kept in fp16/fp32.
    ``demote=False`` leaves a ``cpu`` conv that cannot fuse with its int8 weight (error studies)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
    graph = Graph(model)
    linear = linear_nodes(graph)
    quantized = [n.name for n in linear if n.name not in exclude]
    kept = [n.name for n in linear if n.name in exclude]
    qset = set(quantized)
    edges: dict[str, list[tuple[str, int]]] = defaultdict(list)

    def add(tensor: str, node: onnx.NodeProto, slot: int) -> None:
        if graph.is_activation(tensor) and (node.name, slot) not in edges[tensor]:
            edges[tensor].append((node.name, slot))

    if target == "tensorrt":
        for node in graph.model.graph.node:
            if node.name in qset:
                add(node.input[0], node, 0)
            elif node.op_type == "Add" and len(node.input) == 2:
                slots = [i for i, t in enumerate(node.input) if graph.is_activation(t)]
                if len(slots) != 2:
                    continue  # a bias add, not a residual
                fused = _fused_input(graph, node, qset)
                if fused is not None:
                    add(node.input[1 - fused], node, 1 - fused)
        return Plan(target, quantized, kept, dict(edges), signed=True)

    # cpu placement
    range_of: dict[str, str] = {}
    int8_nodes = {n.name for n in graph.model.graph.node
                  if (n.op_type in CPU_INT8_OPS and n.op_type not in LINEAR_OPS) or n.name in qset}
    # a kept layer reads its input in float: a kept layer that still read a Q/DQ'd input only lost
    # its weight error, and the budget could not converge (cpu ladder in INT8_ERROR_BUDGET.md)
    for node in graph.model.graph.node:
        if node.name in int8_nodes:
            for slot in range(len(node.input) if node.op_type in ("Add", "Concat", "Mul") else 1):
                add(node.input[slot], node, slot)
    # shape-only ops between two quantized tensors: quantize their input with their output's range
    changed = True
    while changed:
        changed = False
        for node in graph.model.graph.node:
            if node.op_type in PASSTHROUGH_OPS and node.output[0] in edges \
                    and (node.name, 0) not in edges.get(node.input[0], []):
                add(node.input[0], node, 0)
                range_of[node.output[0]] = node.input[0]
                changed = True
    # an int8 op read by a float op (HardSwish, BatchNormalization, ...) writes its output behind a
    # Q that reader reads through a DQ, so the op still fuses (not where a kept layer reads it)
    kept_set = set(kept)
    for node in graph.model.graph.node:
        if node.name not in int8_nodes:
            continue
        tensor = fused_output(graph, node)
        readers = graph.consumers.get(tensor, [])
        if readers and tensor not in graph.outputs \
                and not any(r.op_type in LINEAR_OPS and (r.name, s) not in edges.get(tensor, [])
                            for r, s in readers) \
                and not _reaches_kept(graph, tensor, edges, kept_set):
            for reader, slot in readers:
                add(tensor, reader, slot)
    float_out = [n for n in quantized if demote and not _fuses(graph, graph.nodes[n], edges)]
    quantized = [n for n in quantized if n not in float_out]
    return Plan(target, quantized, kept, dict(edges), range_of, signed=False, float_out=float_out)


# readers of a Q/DQ'd tensor that ONNX Runtime's CPU provider runs on the int8 data (QLinear* kernels,
# or Q/DQ dropped around a data-movement op); any other reader runs in float between a DQ and a Q
CPU_FUSED_READERS = CPU_INT8_OPS + PASSTHROUGH_OPS + ("Sigmoid", "Split", "Gather")


def float_readers(model: onnx.ModelProto, p: Plan) -> dict[str, int]:
    """Op type -> how many ops read a ``cpu`` plan's Q/DQ'd tensors in float (between a DQ and a Q):
    what costs an INT8 model time ONNX Runtime does not save (HardSwish, BatchNormalization, ...)."""
    graph = Graph(model)
    found: dict[str, int] = defaultdict(int)
    for node_name in {name for edges in p.edges.values() for name, _ in edges}:
        op = graph.nodes[node_name].op_type
        if op not in CPU_FUSED_READERS:
            found[op] += 1
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def fused_output(graph: Graph, node: onnx.NodeProto) -> str:
    """The tensor an op's fused int8 kernel (QLinearConv, QLinearAdd, ...) would write: its output
    through a single-reader Relu/Clip/Min chain (ORT folds those into the Q)."""
    tensor = node.output[0]
    while True:
        readers = graph.consumers.get(tensor, [])
        if len(readers) != 1 or readers[0][0].op_type not in ACTIVATION_OPS + ("Min",) \
                or tensor in graph.outputs:
            return tensor
        tensor = readers[0][0].output[0]


def _reaches_kept(graph: Graph, tensor: str, edges: dict, kept: set[str]) -> bool:
    """Whether a layer kept out of int8 reads ``tensor``, or reads it through float ops, without a
    Q/DQ between (a kept layer reads its input in float)."""
    todo, seen = [tensor], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        quantized_reads = set(edges.get(t, []))
        for reader, slot in graph.consumers.get(t, []):
            if (reader.name, slot) in quantized_reads:
                continue
            if reader.name in kept:
                return True
            todo += list(reader.output)
    return False


def _fuses(graph: Graph, node: onnx.NodeProto, edges: dict) -> bool:
    """Whether ORT can fuse a cpu-placement Conv into QLinearConv: its output, through a
    single-reader Relu/Clip/Min chain, is read only behind a Q (Gemm: QGemm may output float)."""
    if node.op_type != "Conv":
        return True
    tensor = fused_output(graph, node)
    readers = graph.consumers.get(tensor, [])
    quantized_reads = set(edges.get(tensor, []))
    return bool(readers) and tensor not in graph.outputs \
        and all((reader.name, slot) in quantized_reads for reader, slot in readers)


def _fused_input(graph: Graph, add: onnx.NodeProto, quantized: set[str]) -> int | None:
    """Index of the Add input TensorRT would fuse into its producing conv (None: not a conv add).

    The fusible input is the output of a quantized Conv consumed only by this Add; when both
    inputs qualify (a projection shortcut), the later-produced one is fused, the other is the
    skip branch.
    """
    order = {n.name: i for i, n in enumerate(graph.model.graph.node)}
    best, best_pos = None, -1
    for idx, tensor in enumerate(add.input):
        prod = graph.producer.get(tensor)
        if prod is None or prod.op_type != "Conv" or prod.name not in quantized:
            continue
        if len(graph.consumers.get(tensor, [])) != 1:
            continue
        if order[prod.name] > best_pos:
            best, best_pos = idx, order[prod.name]
    return best
