"""First diverging layer: eager intermediates versus the same tensors inside the ONNX graph.

1. Every float tensor a node produces becomes an extra graph output; ONNX Runtime runs it once.
2. The eager reference runs once with a forward hook on every module (outputs cloned at hook time,
   in execution order - children before their parent).
3. ONNX tensors are mapped back to module names from the scopes the exporters leave behind:
   the legacy (TorchScript) exporter names nodes ``/layer1/layer1.0/relu_1/Relu`` (each scope part
   relative to its parent, ``_N`` for the N-th extra call); the dynamo exporter stores
   ``pkg.torch.onnx.name_scopes`` metadata. A module's tensor is the output of the last node of a
   contiguous run of nodes inside its scope (the k-th run is its k-th call). Without usable names
   the Conv/Gemm nodes are paired in order with the eager Conv/Linear modules ("shape-order").
4. BatchNorm folded into the convolution before it has no node of its own; the convolution's ONNX
   output is then compared with the eager output of that BatchNorm.
5. The first module, in execution order, whose max-abs error relative to max|eager| exceeds the
   tolerance is the first diverging layer.
"""
from __future__ import annotations

import ast
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ABSORBABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Identity, nn.Dropout, nn.Dropout2d)
COMPUTE_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose", "QLinearConv", "FusedConv"}
_CALL_SUFFIX = re.compile(r"^(.*)_(\d+)$")


@dataclass
class LayerComparison:
    order: int  # position in eager execution order
    module: str
    module_type: str
    onnx_tensor: str
    onnx_node: str
    onnx_op: str
    shape: list[int]
    max_abs: float
    rel_error: float  # max|eager - onnx| / max|eager|
    exceeds: bool
    call: int = 0
    compared_with: str = ""  # eager module whose output was used (a folded BN after a conv)


@dataclass
class LocateResult:
    onnx_file: str
    tolerance: float
    mapping: str  # node-names | dynamo-scopes | shape-order | none
    samples: int
    compared: list[LayerComparison] = field(default_factory=list)
    first: LayerComparison | None = None
    modules_total: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.compared:
            return (f"{self.onnx_file}: no intermediate tensor could be mapped to a module "
                    f"(mapping: {self.mapping})")
        if self.first is None:
            worst = max(self.compared, key=lambda c: c.rel_error)
            return (f"{self.onnx_file}: none of {len(self.compared)} compared layers exceeds "
                    f"{self.tolerance:.0e} (worst {worst.module} at {worst.rel_error:.2e}); the "
                    "divergence appears only at the output")
        f = self.first
        before = [c for c in self.compared if c.order < f.order]
        agree = (f"; the {len(before)} layers before it agree (worst {max(c.rel_error for c in before):.2e})"
                 if before else "; it is the first layer compared")
        via = f" (compared with eager {f.compared_with})" if f.compared_with else ""
        return (f"{self.onnx_file}: first diverging layer: {f.module} ({f.module_type}{', call ' + str(f.call) if f.call else ''})"
                f" -> ONNX node {f.onnx_node or '?'} ({f.onnx_op}, tensor '{f.onnx_tensor}'){via}: "
                f"relative error {f.rel_error:.2e} > {self.tolerance:.0e}{agree}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data


# ------------------------------------------------------------------------------- name mapping
def legacy_scope_path(node_name: str) -> str | None:
    """``/features/features.1/block/block.0/block.0.2/Relu`` -> ``features.1.block.0.2``.

    Each scope part is the module's name relative to its parent, and a part that extends the
    previous one (``features`` -> ``features.1``) replaces it rather than nesting.
    """
    if not node_name.startswith("/"):
        return None
    parts = [p for p in node_name.split("/")[1:-1] if p]
    segments: list[str] = []
    for part in parts:
        if segments and part.startswith(segments[-1] + "."):
            segments[-1] = part
        else:
            segments.append(part)
    return ".".join(segments)


def dynamo_scope_path(node) -> str | None:
    """The deepest module of a dynamo-exported node's ``pkg.torch.onnx.name_scopes``."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            names = [s for s in scopes[:-1] if s]  # the last entry is the op itself
            return names[-1] if names else ""
    return None


def _strip_call_suffixes(path: str, modules: set[str]) -> str:
    """``layer1.0.relu_1`` -> ``layer1.0.relu`` when only the latter is a module."""
    if path in modules:
        return path
    segs = path.split(".")
    out = []
    for i, seg in enumerate(segs):
        cand = ".".join(out + [seg])
        m = _CALL_SUFFIX.match(seg)
        if cand not in modules and m and ".".join(out + [m.group(1)]) in modules:
            seg = m.group(1)
        out.append(seg)
    return ".".join(out)


def _deepest_module(path: str, modules: set[str]) -> str:
    segs = path.split(".") if path else []
    while segs:
        cand = ".".join(segs)
        if cand in modules:
            return cand
        segs.pop()
    return ""


def _best_transform(raw_paths: list[str], modules: set[str]):
    """Pick the prefix fix (none, strip k leading parts, add a wrapper prefix) matching most paths."""
    tops = sorted({m.split(".")[0] for m in modules if m})
    candidates = [("", 0)] + [("", k) for k in (1, 2)] + [(t + ".", 0) for t in tops]

    def apply(path: str, prefix: str, strip: int) -> str:
        segs = path.split(".")[strip:] if path else []
        return _strip_call_suffixes(prefix + ".".join(segs), modules) if segs else ""

    best, best_score = ("", 0), -1
    for prefix, strip in candidates:
        score = sum(apply(p, prefix, strip) in modules for p in raw_paths if p)
        if score > best_score:
            best, best_score = (prefix, strip), score
    return lambda p: apply(p, *best) if p else ""


# ------------------------------------------------------------------------------- capture
def capture_eager(reference: nn.Module, inputs: np.ndarray):
    """Run ``reference`` once; return [(module name, call, type name, output ndarray)] in order."""
    records: list[tuple[str, int, str, np.ndarray]] = []
    calls: Counter = Counter()
    handles = []

    def hook_for(name: str):
        def hook(module, _inp, out):
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                records.append((name, calls[name], type(module).__name__,
                                out.detach().float().cpu().numpy().copy()))
            calls[name] += 1
        return hook

    for name, module in reference.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        device = next((p.device for p in reference.parameters()), torch.device("cpu"))
        with torch.no_grad():
            reference(torch.from_numpy(np.ascontiguousarray(inputs, np.float32)).to(device))
    finally:
        for h in handles:
            h.remove()
    return records, calls


def _float_value_types(model) -> dict[str, int]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is a best effort
        inferred = model
    g = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output)}


def _run_all_tensors(onnx_path: Path, names: list[str], inputs: np.ndarray, threads: int | None,
                     types: dict[str, int] | None = None):
    from .backends.onnxruntime import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(onnx_path, threads=threads, extra_outputs=names,
                               extra_output_types=types)
    return runner.named_outputs(inputs, names)


# ------------------------------------------------------------------------------- locate
def locate_divergence(onnx_path: str | Path, reference: nn.Module, inputs: np.ndarray,
                      tolerance: float, *, max_samples: int = 4, threads: int | None = None,
                      batch: int | None = None) -> LocateResult:
    """Find the first module whose ONNX counterpart differs from eager by more than ``tolerance``
    (relative max-abs error). ``inputs``: NCHW float32 (the first ``max_samples`` are used)."""
    import onnx

    onnx_path = Path(onnx_path)
    x = np.asarray(inputs, np.float32)[:max_samples]
    if batch and len(x) != batch:
        x = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])[:batch]
    reference = reference.eval()
    modules = {name: m for name, m in reference.named_modules() if name}
    module_set = set(modules)
    records, eager_calls = capture_eager(reference, x)

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = list(model.graph.node)
    types = _float_value_types(onnx.load(str(onnx_path)))
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                   onnx.TensorProto.BFLOAT16}

    dynamo = [dynamo_scope_path(n) for n in nodes]
    if sum(p is not None for p in dynamo) > len(nodes) // 2:
        raw, mapping = [p or "" for p in dynamo], "dynamo-scopes"
    else:
        raw, mapping = [legacy_scope_path(n.name) or "" for n in nodes], "node-names"
    fix = _best_transform(raw, module_set)
    paths = [_deepest_module(fix(p), module_set) for p in raw]

    # (module, call) -> index of the node whose first output is the module's output
    last_node: dict[tuple[str, int], int] = {}
    runs: Counter = Counter()
    last_seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        if not path:
            continue
        segs = path.split(".")
        for k in range(1, len(segs) + 1):
            anc = ".".join(segs[:k])
            if anc not in module_set:
                continue
            if last_seen.get(anc) != i - 1:
                runs[anc] += 1
            last_seen[anc] = i
            last_node[(anc, runs[anc] - 1)] = i
    has_nodes = set(runs)

    def usable(i: int) -> bool:
        out = nodes[i].output[0] if nodes[i].output else ""
        return bool(out) and types.get(out, onnx.TensorProto.FLOAT) in float_types

    pairs: list[tuple[int, int, int]] = []  # (record index, compared record index, node index)
    skipped: list[str] = []
    matched = 0
    for r, (name, call, _t, value) in enumerate(records):
        key = (name, call)
        if key not in last_node:
            continue
        if runs[name] != eager_calls[name]:
            skipped.append(f"{name}: {eager_calls[name]} eager call(s) vs {runs[name]} ONNX run(s)")
            continue
        if not usable(last_node[key]):
            continue
        matched += 1
        pairs.append((r, _absorb(records, r, modules, has_nodes), last_node[key]))

    if matched < 3:
        order_pairs = _shape_order_pairs(records, modules, nodes, has_nodes=set())
        if len(order_pairs) > matched:
            pairs, mapping = order_pairs, "shape-order"
    if not pairs:
        return LocateResult(onnx_file=onnx_path.name, tolerance=tolerance, mapping="none",
                            samples=len(x), modules_total=len(modules), skipped=skipped)

    names = list(dict.fromkeys(nodes[n].output[0] for _, _, n in pairs))
    values = _run_all_tensors(onnx_path, names, x, threads, types)
    result = LocateResult(onnx_file=onnx_path.name, tolerance=tolerance, mapping=mapping,
                          samples=len(x), modules_total=len(modules), skipped=skipped)
    wrapper = "model." if all(m == "model" or m.startswith("model.") for m in modules) else ""

    def shown(module_name: str) -> str:  # DeployModel wraps the network as `.model`
        return module_name[len(wrapper):] if wrapper and module_name.startswith(wrapper) else module_name

    for r, c, n in pairs:
        name, call, type_name, _ = records[r]
        ref = records[c][3].astype(np.float64)
        got = np.asarray(values[nodes[n].output[0]], np.float64)
        if got.shape != ref.shape:
            if got.size == ref.size:
                got = got.reshape(ref.shape)
            else:
                skipped.append(f"{name}: eager shape {list(ref.shape)} vs ONNX {list(got.shape)}")
                continue
        diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        rel = diff / (scale or 1.0)
        if not np.isfinite(rel):
            rel = float("inf")
        comp = LayerComparison(order=r, module=shown(name), module_type=type_name,
                               onnx_tensor=nodes[n].output[0], onnx_node=nodes[n].name,
                               onnx_op=nodes[n].op_type, shape=list(ref.shape), max_abs=diff,
                               rel_error=rel, exceeds=rel > tolerance, call=call,
                               compared_with=shown(records[c][0]) if c != r else "")
        result.compared.append(comp)
        if comp.exceeds and result.first is None:
            result.first = comp
    return result


def _absorb(records, r: int, modules: dict[str, nn.Module], has_nodes: set[str]) -> int:
    """Index of the eager record the ONNX tensor of record ``r`` should equal: skip forward over
    leaf BatchNorm/Identity/Dropout modules that have no ONNX node (folded away)."""
    j = r
    shape = records[r][3].shape
    while j + 1 < len(records):
        name = records[j + 1][0]
        module = modules.get(name)
        if (module is None or name in has_nodes or list(module.children())
                or not isinstance(module, ABSORBABLE) or records[j + 1][3].shape != shape):
            break
        j += 1
    return j


def _shape_order_pairs(records, modules, nodes, has_nodes) -> list[tuple[int, int, int]]:
    """Fallback: the k-th eager Conv/Linear output <-> the k-th ONNX Conv/Gemm/MatMul node."""
    compute = [i for i, n in enumerate(nodes) if n.op_type in COMPUTE_OPS]
    leaves = [r for r, rec in enumerate(records)
              if isinstance(modules.get(rec[0]), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    if not compute or len(compute) != len(leaves):
        return []
    return [(r, _absorb(records, r, modules, has_nodes), n) for r, n in zip(leaves, compute)]


def corrupt_onnx_weight(src: str | Path, dst: str | Path, *, node_index: int | None = None,
                        op_type: str = "Conv", scale: float = 10.0, value: float | None = None) -> dict[str, str]:
    """Copy ``src`` to ``dst`` with one weight element of one ``op_type`` node changed.

    Default: the middle Conv node's weight, its largest-magnitude element multiplied by ``scale``
    (or set to ``value``). Returns ``{"node": ..., "initializer": ...}``. Used by the tests and
    handy to try ``--locate`` by hand.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    candidates = [n for n in model.graph.node if n.op_type == op_type and len(n.input) > 1
                  and n.input[1] in inits]
    if not candidates:
        raise ValueError(f"no {op_type} node with an initializer weight in {src}")
    node = candidates[len(candidates) // 2 if node_index is None else node_index]
    init = inits[node.input[1]]
    arr = numpy_helper.to_array(init).copy()
    flat = arr.reshape(-1)
    k = int(np.argmax(np.abs(flat)))
    flat[k] = value if value is not None else (flat[k] * scale if flat[k] != 0 else scale)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(dst))
    return {"node": node.name, "initializer": init.name}


def locate_for_report(report, reference: nn.Module, inputs: np.ndarray, recipe,
                      max_samples: int = 4) -> dict[str, dict[str, Any]]:
    """Run :func:`locate_divergence` for every breaching ONNX artifact of a ParityReport and attach
    the results to ``report.locations`` (file -> result dict)."""
    from collections import OrderedDict

    done: dict[str, dict[str, Any]] = OrderedDict()
    batch = (report.input_spec or {}).get("batch")
    by_file = defaultdict(list)
    for breach in report.breaches():
        by_file[breach.file].append(breach)
    for art in report.artifacts:
        if art.file not in by_file:
            continue
        if art.format != "onnx":
            done[art.file] = {"summary": f"{art.file}: --locate needs an ONNX artifact ({art.format} "
                                         "has no named intermediate tensors); locate the ONNX one",
                              "first": None}
            continue
        if art.precision == "int8":  # equalization and zero-centring change its tensors by design
            done[art.file] = {"summary": f"{art.file}: --locate does not compare an INT8 graph layer by "
                                         "layer: its quantize stage rescales intermediate tensors on "
                                         "purpose (cross-layer equalization, zero-centring), so every "
                                         "layer would differ from eager's; judge it by its outputs and "
                                         "its INT8 budget, and locate the FP32 ONNX", "first": None}
            continue
        res = locate_divergence(Path(report.directory) / art.file, reference, inputs,
                                recipe.tolerance(art.precision).rel_max_abs,
                                max_samples=max_samples, threads=report.threads, batch=batch)
        done[art.file] = res.to_dict()
    report.locations.update(done)
    return done
