"""Build the explicit Q/DQ INT8 ONNX from a :class:`~.placement.Plan` and calibrated ranges.

Our own Q/DQ writer (rather than ``onnxruntime.quantization.quantize_static``) because the
placement *is* the product: TensorRT's fusion rules, fp16 fallback layers, and bias correction
need edge-level control. Conventions follow what TensorRT and ORT accept:

* activations: ``QuantizeLinear -> DequantizeLinear`` with a scalar scale; int8 zero-point 0
  (tensorrt) or uint8 asymmetric (cpu);
* weights: stored int8 (range [-127, 127], symmetric, zero-point 0) per output channel, read
  through a ``DequantizeLinear`` with ``axis``; on ``cpu`` no neighbouring pair may saturate ORT's
  non-VNNI kernels (:func:`u8s8_safe`); biases stay float (``tensorrt``) or int32 (``cpu``);
* layers kept out of int8 run in fp16 for TensorRT: ``Cast -> Conv(fp16 weights) -> Cast`` (graph
  I/O fp32), but a layer fp16 cannot hold (its weights or activations past fp16's range) stays
  fp32; for the ``cpu`` target they stay fp32 (ORT CPU has no fast fp16 conv: measured, fp16
  fallback layers cost more than int8 saves).

Bias correction (:mod:`.bias`) adds per-channel deltas to the float biases written here.

ONNX Runtime note: 1.32's CPU optimizer ``WeightBiasQuantization`` rewrites float biases of
DQ-fed convs into int32 DQ and wrecks graphs whose non-quantized parts are fp16. Every session
made here disables it by name (``disabled_optimizers``).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..onnx_graph import WEIGHT_BIAS_QUANTIZATION, conv_group
from ..scratch import scratch_dir
from .placement import Graph, Plan, weight_axis
from .equalize import drop_redundant_min, restore_float_pairs
from .shift import apply_shift, centred_key, find_shifts

DISABLED_ORT_OPTIMIZERS = [WEIGHT_BIAS_QUANTIZATION]  # one definition: onnx_graph.py


def make_session(model, basic: bool = False, threads: int | None = 1,
                 optimized: str | Path | None = None, profile: str | Path | None = None):
    """ORT CPU session (file path, bytes or ModelProto) with the unsafe pass disabled; it writes
    its optimized graph to ``optimized`` and profiles runs to ``profile``* when given."""
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    if profile is not None:
        so.enable_profiling, so.profile_file_prefix = True, str(profile)
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if basic
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_ORT_OPTIMIZERS)


def optimized_graph(model) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs after its optimizations (QLinearConv where it
    fused a DQ -> Conv -> Q, ...), from a :func:`make_session` of ``model``."""
    with scratch_dir("int8") as tmp:
        path = Path(tmp) / "optimized.onnx"
        make_session(model, optimized=path)
        return onnx.load(str(path))


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The graph input's fixed batch size, or None when the batch axis is dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 \
        else None


def run(model, x: np.ndarray, batch: int | None = None, extra: list[str] | None = None,
        basic: bool = False):
    """Logits (or, with ``extra``, a dict of the named tensors) of a model over ``x``.

    A fixed-batch model is run in exactly its batch size (``x`` must hold a multiple of it).
    """
    if isinstance(model, onnx.ModelProto):
        batch = fixed_batch(model) or batch or 16
    batch = batch or 16
    if extra:
        model = with_outputs(model, extra)
    sess = make_session(model, basic=basic)
    names = [o.name for o in sess.get_outputs()]
    inp = sess.get_inputs()[0].name
    outs = defaultdict(list)
    for i in range(0, len(x), batch):
        chunk = np.ascontiguousarray(x[i:i + batch], dtype=np.float32)
        for name, val in zip(names, sess.run(None, {inp: chunk})):
            outs[name].append(val)
    joined = {k: np.concatenate(v) for k, v in outs.items()}
    return joined if extra else joined[names[0]].astype(np.float32)


def _scale_zp(rng: tuple[float, float, float], signed: bool) -> tuple[float, int]:
    lo, hi, amax = rng
    if signed:
        return max(amax, 1e-12) / 127.0, 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 (narrow range) of a weight: (int8 weight, float32 scales)."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.abs(w).max(axis=other)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


U8S8_PAIR_LIMIT = 128  # 255 x 128 = 32640 fits int16; 255 x (127 + 2) does not


def _reduction_rows(a: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """Weight -> ``[out channels, K]`` in ONNX Runtime's CPU reduction order (a Conv row is
    (kernel position, input channel) with the channel fastest; a Gemm row its input features)."""
    if node.op_type == "Conv":
        return a.transpose(0, 2, 3, 1).reshape(a.shape[0], -1)
    return np.moveaxis(a, weight_axis(node), 0).reshape(a.shape[weight_axis(node)], -1)


def _from_rows(rows: np.ndarray, like: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    if node.op_type == "Conv":
        o, c, h, w = like.shape
        return rows.reshape(o, h, w, c).transpose(0, 3, 1, 2)
    axis = weight_axis(node)
    return np.moveaxis(rows.reshape(np.moveaxis(like, axis, 0).shape), 0, axis)


def _pair_sums(rows: np.ndarray) -> np.ndarray:
    """|a| + |b| of each same-signed pair (a, b) at even offsets of each row; 0 for other pairs."""
    k = rows.shape[1] - rows.shape[1] % 2
    a, b = rows[:, 0:k:2], rows[:, 1:k:2]
    return np.where(a * b > 0, np.abs(a) + np.abs(b), 0)


GROW_STEPS = np.linspace(1.0, 2.0, 21)  # scale factors tried per channel by :func:`u8s8_safe`


def _onto_limit(q: np.ndarray, real: np.ndarray) -> np.ndarray:
    """``q`` (rows of rounded ``real``) with each offending pair moved onto |a| + |b| = limit, at
    the integers nearest the pair's real values."""
    k = q.shape[1] - q.shape[1] % 2
    a, b = q[:, 0:k:2], q[:, 1:k:2]  # views
    bad = (a * b > 0) & (np.abs(a) + np.abs(b) > U8S8_PAIR_LIMIT)
    ra = np.minimum(np.abs(real[:, 0:k:2][bad]), 127)
    rb = np.minimum(np.abs(real[:, 1:k:2][bad]), 127)
    na = np.clip(np.round(ra - (ra + rb - U8S8_PAIR_LIMIT) / 2), U8S8_PAIR_LIMIT - 127, 127)
    a[bad], b[bad] = np.sign(a[bad]) * na, np.sign(b[bad]) * (U8S8_PAIR_LIMIT - na)
    return q


def u8s8_safe(q: np.ndarray, scale: np.ndarray, node: onnx.NodeProto,
              real: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Int8 weight and scales of ``node`` such that no same-signed pair of neighbours along ONNX
    Runtime's reduction sums past :data:`U8S8_PAIR_LIMIT` in magnitude.

    ORT's uint8-activation x int8-weight kernels on x86 without VNNI (AVX2, AVX-512F) multiply
    neighbouring pairs with ``vpmaddubsw``, which saturates at int16: 255 x (127 + 127) does not
    fit, and an unconstrained model silently loses accuracy on such a CPU (real MobileNetV2,
    ``cpu`` placement: top-1 agreement 0.870 -> 0.730 on an AMD EPYC; benchmarks/INT8_U8S8.md).
    The pairing is measured (tests/test_int8_u8s8.py). Depthwise convs (one filter per channel)
    run a kernel without it and are left as they are. A channel with an offending pair gets,
    among scales 1x-2x its max-abs one (:data:`GROW_STEPS`), the one whose rounding, with the
    pairs still over the limit moved onto it, is nearest ``real`` (the weight / scale; default
    ``q``, e.g. weights an opt-in rounding lever learnt): widening costs every weight of the
    channel a little, moving a pair costs two weights more. Either way VNNI and non-VNNI CPUs
    compute the same numbers.
    """
    if node.op_type == "Conv" and q.shape[1] == 1 \
            and conv_group(node) == q.shape[0] > 1:
        return q, scale  # depthwise, one filter per channel
    rows = _reduction_rows(q.astype(np.int32), node)
    worst = _pair_sums(rows).max(axis=1) if rows.shape[1] > 1 else np.zeros(len(rows))
    bad = worst > U8S8_PAIR_LIMIT
    if not bad.any():
        return q, scale
    target = _reduction_rows(np.asarray(q if real is None else real, np.float32), node)[bad]
    best, best_cost = None, np.full(len(target), np.inf)
    best_grow = np.ones(len(target), np.float32)
    for grow in GROW_STEPS:
        scaled = target / grow
        cand = _onto_limit(np.clip(np.round(scaled), -127, 127).astype(np.int32), scaled)
        cost = ((cand * grow - target) ** 2).sum(axis=1)
        better = cost < best_cost
        best = cand if best is None else np.where(better[:, None], cand, best)
        best_cost, best_grow = np.where(better, cost, best_cost), np.where(better, grow, best_grow)
    rows[bad] = best
    new_scale = scale.copy()
    new_scale[bad] = (scale[bad] * best_grow).astype(np.float32)
    return _from_rows(rows, q, node).astype(np.int8), new_scale


def stored_weight(w: np.ndarray, node: onnx.NodeProto, plan: Plan,
                  given: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, per-channel scales) that :func:`build_qdq` stores for ``node``: ``w`` rounded
    to nearest at :func:`quantize_weight`'s scales, or ``given`` (a lever's int8 weight on those
    scales), passed through :func:`u8s8_safe` where ``plan`` guards against u8 x s8 saturation."""
    axis = weight_axis(node)
    q, scale = quantize_weight(w, axis)
    if not plan.guards_u8s8:  # the guard: on cpu, ORT's u8 x s8 kernels without VNNI
        return (q if given is None else given), scale
    if given is not None:
        return u8s8_safe(given, scale, node)
    shape = [-1 if a == axis else 1 for a in range(q.ndim)]
    return u8s8_safe(q, scale, node, w / scale.reshape(shape))


def kept_precision(target: str) -> str:
    """Precision of layers left out of int8: fp16 for TensorRT; fp32 on ORT CPU (no fast fp16 conv)."""
    return "fp16" if target == "tensorrt" else "fp32"


def build_qdq(fp32: onnx.ModelProto, plan: Plan, ranges: dict, bias_delta: dict | None = None,
              kept_dtype: str | None = None, weights: dict | None = None,
              shift: bool | str = True, fp32_layers: Collection[str] = ()) -> onnx.ModelProto:
    """The Q/DQ model for ``plan``; ``bias_delta`` maps node name -> amount added to its bias;
    ``weights`` maps node name -> int8 weight (e.g. AdaRound's) used instead of round-to-nearest,
    with :func:`quantize_weight`'s scales; ``shift`` zero-centres ReLU outputs in signed placements
    (:mod:`.shift`; True: scope ``all``, False: none, or a ``shift.SCOPES`` name), and a reader of
    a zero-centred tensor takes the bias delta fitted for it (``shift.centred_key``) where
    ``bias_delta`` has one. On ``cpu`` the weights go through :func:`u8s8_safe` unless
    ``plan.u8s8_guard`` is off (to measure it). Kept layers named in ``fp32_layers`` stay fp32
    where ``kept_dtype`` is fp16 (:func:`.fp16.fp16_unsafe_layers`: fp16 cannot hold them)."""
    kept_dtype = kept_dtype or kept_precision(plan.target)
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    graph = Graph(model)
    g = model.graph
    new_nodes, new_inits = [], []
    act_dtype = TensorProto.INT8 if plan.signed else TensorProto.UINT8
    shifts = find_shifts(graph, plan, ranges, "all" if shift is True else shift) if shift else {}
    shift_weights: dict[str, np.ndarray] = {}  # dequantized int8 weight of each shift's reader
    readers = {item.consumer.name for item in shifts.values()}
    for tensor, edges in plan.edges.items():
        src = plan.range_of.get(tensor, tensor)
        scale, zp = _scale_zp(ranges[src], plan.signed)
        if tensor in shifts:
            scale = shifts[tensor].scale
        base = safe_name(tensor)
        new_inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{base}_scale"),
                      helper.make_tensor(f"{base}_zp", act_dtype, [], [zp])]
        new_nodes += [
            helper.make_node("QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zp"], [f"{base}_q"],
                             name=f"{base}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zp"],
                             [f"{base}_dq"], name=f"{base}_DequantizeLinear")]
        for node_name, slot in edges:
            graph.nodes[node_name].input[slot] = f"{base}_dq"
    bias_delta = bias_delta or {}
    for name in plan.quantized:
        node = graph.nodes[name]
        w = graph.weight(node)
        given = None
        if weights and name in weights:
            given = np.asarray(weights[name])
            if given.shape != w.shape or given.dtype != np.int8:
                raise ValueError(f"int8 weight for {name}: {given.dtype}{given.shape}, want int8{w.shape}")
        q, scale = stored_weight(w, node, plan, given)
        axis = weight_axis(node)
        shape = [-1 if a == axis else 1 for a in range(q.ndim)]  # per-channel vectors -> weight
        if name in readers:
            shift_weights[name] = q.astype(np.float32) * scale.reshape(shape)
        base = safe_name(name)
        new_inits += [numpy_helper.from_array(q, f"{base}_w_int8"),
                      numpy_helper.from_array(scale, f"{base}_w_scale"),
                      numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{base}_w_zp")]
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_w_int8", f"{base}_w_scale",
                                                               f"{base}_w_zp"], [f"{base}_w_dq"],
                                          name=f"{base}_w_DequantizeLinear", axis=axis))
        node.input[1] = f"{base}_w_dq"
        delta = bias_delta.get(centred_key(name)) if name in readers else None
        delta = bias_delta.get(name) if delta is None else delta
        if delta is not None:
            _set_bias(graph, node, np.asarray(delta, np.float32), new_inits, len(scale))
        if not plan.signed and len(node.input) > 2 and node.input[2]:
            # cpu placement: int32 bias (scale = input scale x weight scale) so ORT's selectors
            # fuse DQ -> Conv/Gemm -> Q into QLinearConv / QGemm
            x_scale = _scale_zp(ranges[plan.range_of.get(_edge_source(plan, name), _edge_source(plan, name))],
                                False)[0]
            bias = _bias_array(graph, node, new_inits)
            b_scale = (x_scale * scale).astype(np.float32)
            b_q = np.round(bias / b_scale).astype(np.int64).clip(-2**31, 2**31 - 1).astype(np.int32)
            new_inits += [numpy_helper.from_array(b_q, f"{base}_b_int32"),
                          numpy_helper.from_array(b_scale, f"{base}_b_scale"),
                          numpy_helper.from_array(np.zeros(len(b_scale), np.int32), f"{base}_b_zp")]
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_b_int32", f"{base}_b_scale",
                                                                   f"{base}_b_zp"], [f"{base}_b_dq"],
                                              name=f"{base}_b_DequantizeLinear", axis=0))
            node.input[2] = f"{base}_b_dq"
    for item in shifts.values():
        apply_shift(model, graph, item, shift_weights[item.consumer.name], new_inits)
    if kept_dtype == "fp16":
        for name in plan.kept:
            if name not in fp32_layers:
                _to_fp16(graph, graph.nodes[name], new_nodes, new_inits)
    g.initializer.extend(new_inits)
    g.node.extend(new_nodes)
    drop_redundant_min(model)
    restore_float_pairs(model)
    toposort(g)
    _drop_unused_initializers(g)
    return model


def _edge_source(plan: Plan, node_name: str) -> str:
    for tensor, edges in plan.edges.items():
        if (node_name, 0) in edges:
            return tensor
    raise KeyError(f"no quantized input edge for {node_name}")


def _bias_array(graph: Graph, node, new_inits: list) -> np.ndarray:
    name = node.input[2]
    for t in new_inits:
        if t.name == name:
            return numpy_helper.to_array(t).astype(np.float32)
    return numpy_helper.to_array(graph.inits[name]).astype(np.float32)


def safe_name(name: str) -> str:
    return name.strip("/").replace("/", "_").replace(":", "_") or "t"


def _set_bias(graph: Graph, node, delta: np.ndarray, new_inits: list, channels: int) -> None:
    base = safe_name(node.name)
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(graph.inits[node.input[2]]).astype(np.float32)
    else:
        bias = np.zeros(channels, np.float32)
        while len(node.input) < 3:
            node.input.append("")
    new_inits.append(numpy_helper.from_array((bias + delta).astype(np.float32), f"{base}_bias_corr"))
    node.input[2] = f"{base}_bias_corr"


def _to_fp16(graph: Graph, node, new_nodes: list, new_inits: list) -> None:
    base = safe_name(node.name)
    for slot in (1, 2):
        if len(node.input) > slot and node.input[slot] in graph.inits:
            arr = numpy_helper.to_array(graph.inits[node.input[slot]]).astype(np.float16)
            new_inits.append(numpy_helper.from_array(arr, f"{base}_fp16_{slot}"))
            node.input[slot] = f"{base}_fp16_{slot}"
    src, out = node.input[0], node.output[0]
    new_nodes.append(helper.make_node("Cast", [src], [f"{base}_in_fp16"], to=TensorProto.FLOAT16,
                                      name=f"{base}_CastIn"))
    node.input[0] = f"{base}_in_fp16"
    node.output[0] = f"{base}_out_fp16"
    new_nodes.append(helper.make_node("Cast", [f"{base}_out_fp16"], [out], to=TensorProto.FLOAT,
                                      name=f"{base}_CastOut"))


def toposort(g: onnx.GraphProto) -> None:
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError("Q/DQ graph has a cycle or a dangling input: "
                               + ", ".join(n.name for n in rest[:5]))
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
    return m


def session_with_outputs(model: onnx.ModelProto, names: list[str]):
    """A basic-optimization session of ``model`` that also outputs the tensors ``names``."""
    return make_session(with_outputs(model, names), basic=True)
