"""Bias correction: per-channel deltas that pull each int8 Conv/Gemm's mean output back to FP32's."""
from __future__ import annotations

import numpy as np
import onnx

from .int8 import build_qdq, fixed_batch, safe_name, session_with_outputs, toposort
from .placement import Graph, Plan
from .shift import add_centred_copies, centred_key, find_shifts


def bias_correction(fp32: onnx.ModelProto, plan: Plan, ranges: dict, data: np.ndarray,
                    kept_dtype: str | None = None, weights: dict | None = None, shift: bool = True) -> dict:
    """Per-channel bias deltas that zero each int8 Conv/Gemm's *own* mean output error.

    One pass over ``data``: every int8 layer gets a shadow copy that reads the Q/DQ'd FP32 input
    through the int8 weight; the difference of the per-channel means of the FP32 output and the
    shadow output is the layer's own systematic error, added to its bias. (Layer-local, so the
    corrections do not double-count errors inherited from earlier layers.) With ``shift``, a layer
    whose input some placement zero-centres (:func:`.shift.find_shifts`, scope ``any``) gets a
    second shadow reading the zero-centred quantizer, and a second delta under
    ``shift.centred_key(layer)``: the two quantizers round differently, so their mean errors differ.
    """
    qdq = build_qdq(fp32, plan, ranges, None, kept_dtype, weights, shift=False)
    qgraph = Graph(qdq)
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    g = model.graph
    have = {t.name for t in g.initializer}
    g.initializer.extend(t for t in qdq.graph.initializer if t.name not in have)
    g.node.extend(n for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    centred = find_shifts(Graph(fp32), plan, ranges, "any") if shift else {}
    centred_inputs = add_centred_copies(model, centred)
    readers = {item.consumer.name: centred_inputs[t] for t, item in centred.items()}
    pairs = {}
    for name in plan.quantized:
        qnode = qgraph.nodes[name]
        for key, source in [(name, None)] + ([(centred_key(name), readers[name])] if name in readers else []):
            shadow = onnx.NodeProto()
            shadow.CopyFrom(qnode)
            shadow.name = f"{safe_name(key)}_shadow"
            if source is not None:
                shadow.input[0] = source
            del shadow.output[:]
            shadow.output.append(f"{safe_name(key)}_shadow_out")
            g.node.append(shadow)
            pairs[key] = (qnode.output[0], shadow.output[0])
    toposort(g)
    names = sorted({t for pair in pairs.values() for t in pair})
    sums: dict[str, np.ndarray] = {}
    count = 0
    sess = session_with_outputs(model, names)
    out_names = [o.name for o in sess.get_outputs()]
    inp = sess.get_inputs()[0].name
    step = fixed_batch(fp32) or 8
    for i in range(0, len(data), step):  # streaming: per-channel sums, one batch in memory
        x = np.ascontiguousarray(data[i:i + step], dtype=np.float32)
        for name, val in zip(out_names, sess.run(None, {inp: x})):
            if name in names:
                axes = tuple(a for a in range(val.ndim) if a != 1)
                per_channel = val.astype(np.float64).sum(axis=axes)
                spatial = int(np.prod([val.shape[a] for a in axes[1:]])) if val.ndim > 2 else 1
                sums[name] = sums.get(name, 0.0) + per_channel / spatial
        count += len(x)
    return {key: ((sums[ref] - sums[sh]) / count).astype(np.float32)
            for key, (ref, sh) in pairs.items()}
