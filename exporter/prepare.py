"""Deploy preparation of a classifier: eval mode, aux heads stripped, no in-place activations,
BatchNorm folded into the preceding conv, and a wrapper whose forward returns only logits.

The folding pass finds conv -> BN adjacency with ``torch.fx`` symbolic tracing; the arithmetic is
``torch.nn.utils.fusion.fuse_conv_bn_weights`` (done in float64, cast back).
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from .errors import ExportError, ModelOutputError, RecipeError
from .recipes import Recipe

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FOLDS_INTO = _CONVS + (nn.Linear,)  # layers a following BN folds into
# BN type that may follow each conv type (a BatchNorm2d after a Conv1d would broadcast differently)
_BN_FOR_CONV = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


@dataclass
class FoldReport:
    """Outcome of :func:`fold_batchnorms`.

    ``expected_bn_nodes`` is the number of BatchNormalization nodes an export of the folded model
    should still contain: unfolded BN *call sites* of the traced forward (a BN that is never called
    exports nothing, a BN called twice exports two nodes). Pass it to ``check_deploy_form``.
    """

    folded: list[tuple[str, str]] = field(default_factory=list)  # (conv name, bn name)
    unfolded: list[tuple[str, str]] = field(default_factory=list)  # (bn name, reason)
    expected_bn_nodes: int = 0
    traced: bool = True  # False: fx tracing failed and the Sequential fallback was used

    def to_dict(self) -> dict[str, Any]:
        return {
            "folded": [list(p) for p in self.folded],
            "unfolded": [{"module": m, "reason": r} for m, r in self.unfolded],
            "expected_bn_nodes": self.expected_bn_nodes,
            "traced": self.traced,
        }


def _ndim(conv: nn.Module) -> int:
    return len(conv.kernel_size)


def _remainder(bn: _BatchNorm) -> nn.Module | None:
    """What a BN module becomes once folded: nn.Identity for a plain BN, the dropout and
    activation of timm's BatchNormAct2d (BN -> drop -> act); None for a subclass whose forward
    is unknown (not folded)."""
    if type(bn).forward is _BatchNorm.forward:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(getattr(bn, "act", None), nn.Module) \
            and isinstance(getattr(bn, "drop", None), nn.Module):
        return nn.Sequential(bn.drop, bn.act)
    return None


class _BatchNormLeaves(torch.fx.Tracer):
    """fx tracing that keeps every BN module whole (timm's BatchNormAct2d was traced into, and
    its BN then read as 'not called')."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, _BatchNorm) or super().is_leaf_module(m, qualified_name)


def _fold_blocker(conv: nn.Module, bn: _BatchNorm) -> str | None:
    """Why this (conv or linear, bn) pair cannot be folded, or None when it can."""
    if _remainder(bn) is None:
        return f"{type(bn).__name__} is a BatchNorm subclass with its own forward"
    if bn.running_mean is None or bn.running_var is None:
        return "no running stats (track_running_stats=False): eval uses batch statistics"
    if isinstance(conv, nn.Linear):
        if not isinstance(bn, nn.BatchNorm1d):
            return f"{type(bn).__name__} after a Linear"
        if bn.num_features != conv.out_features:
            return f"BN has {bn.num_features} features but the Linear has {conv.out_features} outputs"
        return None
    if not isinstance(bn, _BN_FOR_CONV[_ndim(conv)]):
        return f"{type(bn).__name__} after a {_ndim(conv)}-d {type(conv).__name__}"
    if bn.num_features != conv.out_channels:
        return f"BN has {bn.num_features} features but the conv has {conv.out_channels} output channels"
    if isinstance(conv, nn.modules.conv._ConvTransposeNd) and conv.groups != 1:
        return "grouped transposed conv (weight layout not foldable per output channel)"
    return None


@torch.no_grad()
def _fold_pair(conv: nn.Module, bn: _BatchNorm) -> None:
    f64 = torch.float64
    if isinstance(conv, nn.Linear):
        ones = torch.ones(bn.num_features, dtype=f64)
        bias = torch.zeros(conv.out_features, dtype=f64) if conv.bias is None else conv.bias.to(f64)
        w, b = fuse_linear_bn_weights(
            conv.weight.to(f64), bias, bn.running_mean.to(f64), bn.running_var.to(f64), bn.eps,
            ones if bn.weight is None else bn.weight.to(f64),
            torch.zeros_like(ones) if bn.bias is None else bn.bias.to(f64))
        grad, dtype = conv.weight.requires_grad, conv.weight.dtype
        conv.weight = nn.Parameter(w.detach().to(dtype), requires_grad=grad)
        conv.bias = nn.Parameter(b.detach().to(dtype), requires_grad=grad)
        return
    transpose = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    w, b = fuse_conv_bn_weights(
        conv.weight.to(f64), None if conv.bias is None else conv.bias.to(f64),
        bn.running_mean.to(f64), bn.running_var.to(f64), bn.eps,
        None if bn.weight is None else bn.weight.to(f64),
        None if bn.bias is None else bn.bias.to(f64), transpose=transpose,
    )
    grad = conv.weight.requires_grad
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(w.detach().to(dtype), requires_grad=grad)
    conv.bias = nn.Parameter(b.detach().to(dtype), requires_grad=grad)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _describe(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """Human-readable name of the op that produced ``node``."""
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} '{node.target}'"
    if node.op == "call_function":
        fn = node.target
        mod = (getattr(fn, "__module__", None) or "").lstrip("_")  # _operator -> operator
        return f"{mod + '.' if mod else ''}{getattr(fn, '__name__', str(fn))}"
    if node.op == "call_method":
        return f"Tensor.{node.target}()"
    if node.op == "placeholder":
        return f"the model input '{node.target}'"
    return f"{node.op} '{node.target}'"


def _pairs_from_fx(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str], int]:
    """(foldable (conv, bn) pairs, {bn: reason} for the others, unfolded BN call sites)."""
    graph = _BatchNormLeaves().trace(model)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs: list[tuple[str, str]] = []
    reasons: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        bn_name, bn = node.target, modules[node.target]
        src = node.args[0] if node.args else None
        if calls[bn_name] > 1:
            reasons[bn_name] = f"BN module is called {calls[bn_name]} times"
        elif not isinstance(src, torch.fx.Node) or len(node.args) + len(node.kwargs) != 1:
            reasons[bn_name] = "BN is not called with a single tensor"
        elif src.op != "call_module" or not isinstance(modules[src.target], _FOLDS_INTO):
            reasons[bn_name] = f"input is {_describe(src, modules)}, not a conv or linear"
        elif len(src.users) > 1:
            others = ", ".join(sorted(u.name for u in src.users if u is not node))
            reasons[bn_name] = f"conv output also feeds {others}"
        elif calls[src.target] > 1:
            reasons[bn_name] = f"conv '{src.target}' is called {calls[src.target]} times"
        else:
            blocker = _fold_blocker(modules[src.target], bn)
            if blocker:
                reasons[bn_name] = blocker
            else:
                pairs.append((src.target, bn_name))
    sites = sum(calls[name] for name in reasons)
    return pairs, reasons, sites


def _pairs_from_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    """Fallback without fx: conv -> BN consecutive children of a plain ``nn.Sequential``."""
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        children = list(seq.named_children())
        for (c_name, conv), (b_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, _FOLDS_INTO) and isinstance(bn, _BatchNorm) and uses[id(conv)] == 1
                    and uses[id(bn)] == 1 and _fold_blocker(conv, bn) is None):
                prefix = f"{seq_name}." if seq_name else ""
                pairs.append((prefix + c_name, prefix + b_name))
    return pairs


def fold_batchnorms(model: nn.Module) -> FoldReport:
    """Fold every BN that directly follows a conv (whose output has no other consumer) into it.

    In place: the conv gets the folded weight/bias (a bias is created when missing) and the BN
    becomes ``nn.Identity``. The model is put in eval mode: folding bakes in the running stats.
    BNs that cannot be folded are listed in the report with the reason. If fx tracing fails,
    only conv -> BN pairs inside plain ``nn.Sequential`` containers are folded.
    """
    model.eval()
    bns = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    report = FoldReport()
    try:
        pairs, reasons, report.expected_bn_nodes = _pairs_from_fx(model)
    except Exception as err:  # any user forward may defeat symbolic tracing
        first = (str(err).strip().splitlines() or [""])[0][:200]
        trace_error = f"fx trace failed ({type(err).__name__}: {first})"
        pairs = _pairs_from_sequentials(model)
        paired = {bn for _, bn in pairs}
        reasons = {bn: f"{trace_error}; not a conv -> BN pair in an nn.Sequential"
                   for bn in bns if bn not in paired}
        report.traced = False
        report.expected_bn_nodes = len(reasons)  # best guess: each unfolded BN called once
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        _fold_pair(model.get_submodule(conv_name), bn)
        _set_module(model, bn_name, _remainder(bn))
        report.folded.append((conv_name, bn_name))
    seen = {bn for _, bn in pairs} | set(reasons)
    for bn in bns:
        if bn not in seen:
            reasons[bn] = "not called in the traced eval-mode forward"
    order = {name: i for i, name in enumerate(bns)}
    report.unfolded = sorted(reasons.items(), key=lambda kv: order.get(kv[0], len(order)))
    return report


def strip_aux_heads(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Remove the named auxiliary heads (set to None) and turn ``aux_logits`` off.

    ``names`` are attribute paths (``aux1``, ``AuxLogits``, ``head.aux``). Returns the number of
    parameters removed per head (shared parameters still in use are not counted).
    """
    targets = []
    for name in names:  # validate every name before removing anything
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            parent = None
        if parent is None or attr not in parent._modules:
            where = parent if parent is not None else model
            existing = [n for n, _ in where.named_children()]
            raise RecipeError(
                f"auxiliary head '{name}' not found in {type(model).__name__}",
                fix=f"[prepare] strip_aux must name child modules; "
                    f"{parent_name or 'the model'} has {existing}",
            )
        targets.append((name, parent, attr))
    removed: dict[str, int] = {}
    for name, parent, attr in targets:
        before = _num_params(model)
        setattr(parent, attr, None)
        removed[name] = before - _num_params(model)
        if hasattr(parent, "aux_logits"):
            parent.aux_logits = False
    return removed


def make_inplace_safe(model: nn.Module) -> int:
    """Set ``inplace=False`` on every module that has an ``inplace`` flag (ReLU, ReLU6,
    Hardswish, Hardsigmoid, SiLU, Dropout, ...). Returns how many changed.

    In-place calls of the functional API inside a ``forward`` are out of reach.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "inplace", None) is True:
            module.inplace = False
            changed += 1
    return changed


class DeployModel(nn.Module):
    """Wraps a classifier so ``forward(input)`` returns exactly one tensor: the logits
    (``output``: the index or name that selects them from a multi-output forward)."""

    def __init__(self, model: nn.Module, output: int | str | None = None):
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return unwrap_logits(self.model(input), self.output)


def _describe_outputs(out: Any) -> str:
    items = out.items() if isinstance(out, dict) else enumerate(out)
    return ", ".join(f"[{k}] {type(v).__name__}"
                     + (f" {tuple(v.shape)}" if isinstance(v, torch.Tensor) else "")
                     for k, v in items)


def _select(out: Any, output: int | str) -> torch.Tensor:
    fields = getattr(out, "_fields", None)
    try:
        if isinstance(output, str):
            chosen = out[output] if isinstance(out, dict) else getattr(out, output) \
                if fields and output in fields else None
        else:
            chosen = out[output] if isinstance(out, (tuple, list)) else None
    except (IndexError, KeyError):
        chosen = None
    if not isinstance(chosen, torch.Tensor):
        flag = "--output-name" if isinstance(output, str) else "--output-index"
        raise ModelOutputError(f"{flag} {output} does not select a tensor; the model returns "
                               f"{_describe_outputs(out) if isinstance(out, (tuple, list, dict)) else type(out).__name__}",
                               fix="pick one of the outputs listed")
    return chosen


def unwrap_logits(out: Any, output: int | str | None = None) -> torch.Tensor:
    """The logits of a model output: a tensor, a ``.logits`` namedtuple (GoogLeNet/Inception),
    a dict with one tensor or a ``logits`` key, or - chosen by ``output`` (index or name) - one
    item of a multi-output tuple/dict. Several candidate outputs without ``output`` are an
    error that lists them: nothing is dropped silently."""
    if output is not None and not isinstance(out, torch.Tensor):
        return _select(out, output)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):  # GoogLeNet/InceptionOutputs
        return out.logits
    if isinstance(out, (tuple, list)) and len(out) == 1 and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, dict) and len(out) == 1 and isinstance(out.get("out"), torch.Tensor):
        return out["out"]
    if isinstance(out, (tuple, list, dict)) and len(out) > 1:
        items = list(out.items()) if isinstance(out, dict) else list(enumerate(out))
        widths = [(v.shape[-1] if isinstance(v, torch.Tensor) and v.dim() == 2 else -1, k) for k, v in items]
        likely = max(widths, key=lambda w: w[0])[1]  # the widest (batch, N) output: the classes, likely
        example = f"--output-name {likely}" if isinstance(out, dict) else f"--output-index {likely}"
        raise ModelOutputError(
            f"the model returns {len(out)} outputs ({_describe_outputs(out)}); which one is the "
            "logits?", fix=f"pass --output-index N or --output-name NAME (e.g. {example}, the widest "
                           "2-d output)")
    raise ExportError(
        f"cannot find the logits in a model output of type {type(out).__name__}",
        fix="make forward return a tensor, a tuple whose first item is the logits, "
            "or a dict with a 'logits' key",
    )


@dataclass
class PrepareReport:
    """What :func:`prepare_for_deploy` did; ``to_dict()`` is manifest.json's ``prepare``."""

    bn_folded: int = 0
    folded: list[tuple[str, str]] = field(default_factory=list)
    bn_unfolded: list[dict[str, str]] = field(default_factory=list)  # {"module", "reason"}
    expected_bn_nodes: int = 0
    aux_removed: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    inplace_changed: int = 0
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["folded"] = [list(p) for p in self.folded]
        return data


def prepare_for_deploy(model: nn.Module, recipe: Recipe, fold: bool = True
                       ) -> tuple[DeployModel, PrepareReport]:
    """Deploy form of ``model`` per ``recipe.prepare``, on a deep copy: the caller's model is not
    mutated and stays the unfolded eager reference.

    Steps: eval, strip ``recipe.prepare.strip_aux``, ``inplace=False``, fold BN (when both
    ``recipe.prepare.fold_bn`` and ``fold``), wrap in :class:`DeployModel`.
    """
    work = copy.deepcopy(model).eval()
    report = PrepareReport(params_before=_num_params(work), steps=["eval"])
    if recipe.prepare.strip_aux:
        report.aux_removed = strip_aux_heads(work, recipe.prepare.strip_aux)
        report.steps.append("strip " + "/".join(recipe.prepare.strip_aux))
    report.inplace_changed = make_inplace_safe(work)
    report.steps.append("export-safe inplace")
    if recipe.prepare.fold_bn and fold:
        fold_report = fold_batchnorms(work)
        report.folded = list(fold_report.folded)
        report.bn_folded = len(fold_report.folded)
        report.bn_unfolded = [{"module": m, "reason": r} for m, r in fold_report.unfolded]
        report.expected_bn_nodes = fold_report.expected_bn_nodes
        report.steps.append("fold BN")
    else:
        report.bn_unfolded = [{"module": n, "reason": "folding disabled"}
                              for n, m in work.named_modules() if isinstance(m, _BatchNorm)]
        report.expected_bn_nodes = len(report.bn_unfolded)
    report.params_after = _num_params(work)
    return DeployModel(work, recipe.prepare.output).eval(), report
