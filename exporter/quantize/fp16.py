"""FP16 ONNX: fp16 weights and compute, graph inputs/outputs kept fp32 (Casts at the edges).

Conversion is onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``. Numerically
sensitive nodes stay fp32 ("AutoCast"-style, like NVIDIA ModelOpt): ops that are unsafe in fp16
by type (``ALWAYS_FP32``), and any node whose FP32 output on sample inputs exceeds
``MAX_FP16_MAGNITUDE`` (fp16 overflows at 65504, and large sums lose too many bits).
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx

ALWAYS_FP32 = ["Softmax", "LogSoftmax", "Exp", "Pow", "ReduceSum", "ReduceMean", "ReduceProd",
               "ReduceL2", "ReduceLogSumExp", "LayerNormalization", "InstanceNormalization",
               "Range", "Resize", "TopK", "NonMaxSuppression", "RandomNormalLike"]
MAX_FP16_MAGNITUDE = 8192.0
FP16_MAX = 65504.0  # the largest finite fp16 value
FP16_PROBE_SAMPLES = 32  # calibration samples the INT8 export's kept-layer range check runs


def large_magnitude_nodes(model: onnx.ModelProto, x: np.ndarray,
                          limit: float = MAX_FP16_MAGNITUDE) -> list[str]:
    """Names of nodes whose FP32 output magnitude exceeds ``limit`` on ``x``."""
    from .calibration import tensor_maxima

    outputs = {o: n.name for n in model.graph.node for o in n.output if n.op_type != "Constant"}
    top = tensor_maxima(model, list(outputs), x) if len(x) else {}
    return list(dict.fromkeys(outputs[t] for t, m in top.items() if m > limit))


def fp16_unsafe_layers(model: onnx.ModelProto, layers: list[str], data: np.ndarray,
                       samples: int = FP16_PROBE_SAMPLES) -> dict[str, str]:
    """Layers of ``layers`` (Conv/Gemm names) that cannot run in fp16 -> why: a weight or bias
    beyond fp16's range, or an input or output past ``MAX_FP16_MAGNITUDE`` on the first
    ``samples`` of ``data`` (streamed by batch)."""
    from onnx import numpy_helper

    from .calibration import tensor_maxima
    from .int8 import fixed_batch

    wanted = set(layers)
    nodes = {n.name: n for n in model.graph.node if n.name in wanted}
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    unsafe: dict[str, str] = {}
    for name, node in nodes.items():
        params = [numpy_helper.to_array(inits[t]) for t in node.input[1:] if t in inits]
        top = max((float(np.abs(p).max()) for p in params if p.size), default=0.0)
        if top > FP16_MAX:
            unsafe[name] = f"a weight or bias of {top:.3g} is beyond fp16's range ({FP16_MAX:g})"
    probed = [n for n in nodes if n not in unsafe]
    tensors = list(dict.fromkeys(t for n in probed for t in (nodes[n].input[0], nodes[n].output[0])
                                 if t not in graph_inputs))
    count = min(samples, len(data))
    count -= count % (fixed_batch(model) or 1)
    if tensors and count:
        top = tensor_maxima(model, tensors, data[:count])
        for n in probed:
            inp, out = top.get(nodes[n].input[0], 0.0), top.get(nodes[n].output[0], 0.0)
            if max(inp, out) > MAX_FP16_MAGNITUDE:
                side, worst = ("input", inp) if inp >= out else ("output", out)
                unsafe[n] = (f"|{side}| reaches {worst:.3g} on calibration samples "
                             f"(fp16 holds {MAX_FP16_MAGNITUDE:g} safely, {FP16_MAX:g} at most)")
    return unsafe


def convert_fp16(model: onnx.ModelProto, sample: np.ndarray | None = None) -> tuple[onnx.ModelProto, dict]:
    """(fp16 model, details) — details list the nodes kept fp32 and why."""
    from onnxconverter_common import float16

    from .placement import ensure_node_names

    model32 = onnx.ModelProto()
    model32.CopyFrom(model)
    ensure_node_names(model32)
    present = {n.op_type for n in model32.graph.node}
    op_block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | (set(ALWAYS_FP32) & present))
    large = large_magnitude_nodes(model32, sample) if sample is not None else []
    _unshare_initializers(model32, {n.name for n in model32.graph.node if n.op_type in op_block} | set(large))
    with warnings.catch_warnings():  # "float32 number ... truncated to 1e-07" per tiny weight
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model32, keep_io_types=True, op_block_list=op_block, node_block_list=large or None,
            disable_shape_infer=False)
    fixed = _force_fp32_outputs(converted)
    kept = sorted({n.name for n in model32.graph.node if n.op_type in op_block} | set(large))
    details = {"converter": "onnxconverter-common convert_float_to_float16(keep_io_types=True)",
               "io": "float32", "kept_fp32_nodes": kept, "outputs_recast_fp32": fixed,
               "kept_fp32_reasons": {**{n: "op type unsafe in fp16" for n in kept if n not in large},
                                     **{n: f"|output| > {MAX_FP16_MAGNITUDE:g} on sample inputs"
                                        for n in large}}}
    return converted, details


def _unshare_initializers(model: onnx.ModelProto, kept: set[str]) -> int:
    """Give each node kept fp32 its own copy of an initializer it shares with a converted node.
    onnxsim merges equal initializers (a random init's zero biases), and the converter then left
    the one tensor float for both a fp16 Conv and a fp32 LayerNormalization: an invalid graph."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                readers.setdefault(name, set()).add(node.name)
    copies = 0
    for node in model.graph.node:
        if node.name not in kept:
            continue
        for slot, name in enumerate(node.input):
            if name in inits and readers[name] - kept:  # also read by a node that turns fp16
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__fp32_{node.name}"
                model.graph.initializer.append(copy)
                node.input[slot] = copy.name
                copies += 1
    return copies


def _force_fp32_outputs(model: onnx.ModelProto) -> list[str]:
    """Make every graph output float32; returns the outputs that needed fixing.

    onnxconverter-common (1.14-1.16) declares an output fp16 and casts to fp16 when the node that
    produces it is kept fp32 (node_block_list) despite ``keep_io_types=True``.
    """
    fp32, fixed = onnx.TensorProto.FLOAT, []
    producers = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        if out.type.tensor_type.elem_type == fp32:
            continue
        node = producers.get(out.name)
        if node is not None and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = fp32
        else:
            raw = f"{out.name}_fp16"
            for n in model.graph.node:
                n.output[:] = [raw if o == out.name else o for o in n.output]
                n.input[:] = [raw if i == out.name else i for i in n.input]
            model.graph.node.append(onnx.helper.make_node("Cast", [raw], [out.name], to=fp32,
                                                          name=f"{out.name}_to_fp32"))
        out.type.tensor_type.elem_type = fp32
        fixed.append(out.name)
    return fixed
