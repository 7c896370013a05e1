"""What an exported graph takes as input: layout, where normalization happens, and whether its
height/width are dynamic (``exporter export --layout nhwc --normalize-in-graph --dynamic-size``).

The eager reference always takes the recipe's NCHW, normalized tensor. An export with other input
options wraps the deploy model in :class:`InputAdapter` (NHWC -> NCHW transpose, then
``(x - mean) / std``) before any format is written, records the options in the manifest's
``input`` block and the artifact metadata, and parity feeds every artifact of that manifest
through :class:`AdaptedRunner`, which turns the shared NCHW normalized arrays back into what the
graph takes. A dynamic-size export is checked at two sizes: the recipe's and
:func:`second_size` (each side + :data:`SIZE_STEP`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .errors import InputSpecError, UsageError

LAYOUTS = ("nchw", "nhwc")
SIZE_STEP = 32  # the second size a dynamic-size artifact is checked at: each side + 32 px
MAX_BATCH = 4096  # largest batch of a dynamic batch axis


@dataclass(frozen=True)
class GraphInput:
    """The input options of one export (the defaults: NCHW, normalized outside, static size)."""

    layout: str = "nchw"
    normalize_in_graph: bool = False
    dynamic_size: bool = False

    @property
    def default(self) -> bool:
        return self == GraphInput()

    @property
    def adapts(self) -> bool:
        """True when the graph's input differs from the eager model's (a wrapper is needed)."""
        return self.layout != "nchw" or self.normalize_in_graph

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "normalize_in_graph": self.normalize_in_graph,
                "dynamic_size": self.dynamic_size}

    @classmethod
    def of(cls, request: Any) -> "GraphInput":
        return cls(getattr(request, "layout", "nchw"), bool(getattr(request, "normalize_in_graph", False)),
                   bool(getattr(request, "dynamic_size", False)))

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any] | None) -> "GraphInput":
        """The options a manifest's ``input`` block records (absent keys: the defaults)."""
        block = (manifest or {}).get("input") or {}
        layout = block.get("layout", "nchw")
        if layout not in LAYOUTS:
            from .errors import ArtifactError

            raise ArtifactError(f"manifest input layout '{layout}' is not one of {LAYOUTS}",
                                fix="re-export the model into this directory")
        return cls(layout, bool(block.get("normalize_in_graph", False)),
                   bool(block.get("dynamic_size", False)))


def second_size(size: tuple[int, int]) -> tuple[int, int]:
    """The other size a dynamic-size artifact is checked at (each side + :data:`SIZE_STEP`)."""
    return (size[0] + SIZE_STEP, size[1] + SIZE_STEP)


def check_sizes(spec, options: GraphInput) -> list[tuple[int, int]]:
    """The sizes parity checks: the recipe's, plus :func:`second_size` for a dynamic size."""
    size = tuple(spec.size)
    return [size, second_size(size)] if options.dynamic_size else [size]


def input_shape(spec, options: GraphInput, batch: Any) -> list[Any]:
    """The graph input's shape as metadata writes it (symbolic dims as names)."""
    h, w = ("height", "width") if options.dynamic_size else spec.size
    return [batch, h, w, spec.channels] if options.layout == "nhwc" else [batch, spec.channels, h, w]


def spatial_axes(graph) -> tuple[int, int]:
    """The H/W axes of a graph's input (a GraphInput or a wrapped model)."""
    return (1, 2) if getattr(graph, "layout", "nchw") == "nhwc" else (2, 3)


def check_formats(formats: Iterable[str], options: GraphInput) -> None:
    """Every format must carry the options (registry ``graph_input``): refused up front, never
    exported with a different input than asked."""
    if options.default:
        return
    from .backends import registry

    able = [f for f, b in registry.BACKENDS.items() if b.graph_input]
    for fmt in formats:
        if not registry.get(fmt).graph_input:
            asked = " ".join(flag for flag, on in (("--dynamic-size", options.dynamic_size),
                                                   (f"--layout {options.layout}", options.layout != "nchw"),
                                                   ("--normalize-in-graph", options.normalize_in_graph)) if on)
            raise UsageError(f"--format {fmt} cannot carry {asked} here (its converter takes a "
                             "fixed NCHW normalized input)",
                             fix=f"export {asked} to {', '.join(able)}, or drop {asked} for {fmt}")


def check_precision(precision: str, options: GraphInput) -> None:
    """INT8 calibration feeds NCHW normalized tensors: refuse it with an adapted input."""
    if precision == "int8" and options.adapts:
        raise UsageError("--precision int8 calibrates on NCHW normalized tensors; it is not "
                         "combined with --layout nhwc or --normalize-in-graph",
                         fix="export INT8 with the default input (drop --layout/--normalize-in-graph), "
                             "or export fp32/fp16 with these options")


def check_graph_input(request: Any, formats: Iterable[str]) -> GraphInput:
    """The request's graph input options, checked against its formats and precision."""
    options = GraphInput.of(request)
    if options.layout not in LAYOUTS:
        raise UsageError(f"--layout {options.layout} is not one of {LAYOUTS}", fix="use --layout nchw or nhwc")
    check_formats(formats, options)
    check_precision(request.precision, options)
    return options


def check_dynamic_size(model, recipe, spec, options: GraphInput, onnx_exporter: str | None = None) -> None:
    """A dynamic size is exported only where the architecture takes another size: the recipe says
    so (``fixed_size``) or a forward of the prepared model at :func:`second_size` fails. The
    TorchScript ONNX exporter (``onnx_exporter``) cannot write an adaptive pool to an output
    larger than 1x1 from a dynamic size (AlexNet's 6x6, VGG's 7x7): refused up front too."""
    if not options.dynamic_size:
        return
    import torch
    from torch import nn

    pools = [name for name, m in model.named_modules()
             if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
             and any(v not in (1, None) for v in (m.output_size if isinstance(m.output_size, tuple)
                                                  else (m.output_size,)))]
    if onnx_exporter == "torchscript" and pools:
        raise UsageError(f"--dynamic-size: the torchscript ONNX exporter cannot export {recipe.name}'s "
                         f"adaptive pool {pools[0]} (output larger than 1x1) from a dynamic size",
                         fix="add --exporter dynamo (it exports it), or drop --dynamic-size")

    fix = f"drop --dynamic-size (export {recipe.name} at its fixed size)"
    if spec.fixed_size:
        raise InputSpecError(f"--dynamic-size: {recipe.name} takes only {spec.size[0]}x{spec.size[1]} "
                             "inputs (its recipe marks the size fixed, e.g. a Linear after a "
                             "fixed-size flatten)", fix=fix)
    other = second_size(spec.size)
    try:
        with torch.no_grad():
            model(torch.zeros(1, spec.channels, *other))
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputSpecError(f"--dynamic-size: {recipe.name} cannot take a {other[0]}x{other[1]} "
                             f"input besides {spec.size[0]}x{spec.size[1]} ({first})", fix=fix) from None


def wrap(deploy, spec, options: GraphInput):
    """The module every format is exported from: ``deploy`` behind an :class:`InputAdapter` when
    the graph input differs, else ``deploy`` itself; its ``dynamic_size`` flag tells the
    exporters (:func:`dynamic_dims`) to make H/W dynamic."""
    graph = _adapter_class()(deploy, spec, options).eval() if options.adapts else deploy
    graph.dynamic_size = options.dynamic_size
    return graph


def example_input(model, spec, batch: int):
    """A seeded example input of the shape ``model`` takes (NHWC for an NHWC adapter)."""
    import torch

    x = torch.randn(batch, spec.channels, *spec.size, generator=torch.Generator().manual_seed(0))
    if getattr(model, "layout", "nchw") == "nhwc":
        x = x.permute(0, 2, 3, 1).contiguous()
    return x


def dynamic_dims(model, spec, batch: int | None, names: bool = False) -> dict[int, Any]:
    """``{axis: torch.export dim}`` of the input (``names``: ``{axis: "batch"|"height"|"width"}``
    for the TorchScript ONNX exporter): batch unless fixed, H/W for a dynamic size. H/W are
    ``Dim.DYNAMIC``: torch.export infers their range and raises if the model specializes them."""
    import torch

    dims: dict[int, Any] = {} if batch else {0: "batch" if names else torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if getattr(model, "dynamic_size", False):
        for axis, name in zip(spatial_axes(model), ("height", "width")):
            dims[axis] = name if names else torch.export.Dim.DYNAMIC
    return dims


_ADAPTER: list = []


def _adapter_class():
    """InputAdapter, defined on first use (torch stays out of the CLI parser's imports)."""
    if not _ADAPTER:
        _ADAPTER.append(_make_adapter())
    return _ADAPTER[0]


def _make_adapter():
    import torch
    from torch import nn

    class InputAdapter(nn.Module):
        """NHWC -> NCHW and/or ``(x - mean) / std`` in front of the deploy model."""

        def __init__(self, model: nn.Module, spec, options: GraphInput):
            super().__init__()
            self.model = model
            self.layout = options.layout
            self.normalize = options.normalize_in_graph
            shape = (1, spec.channels, 1, 1)
            self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).reshape(shape))
            self.register_buffer("inv_std", (1.0 / torch.tensor(spec.std, dtype=torch.float64))
                                 .float().reshape(shape))

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            x = input.permute(0, 3, 1, 2) if self.layout == "nhwc" else input
            if self.normalize:
                x = (x - self.mean) * self.inv_std
            return self.model(x)

    return InputAdapter


def to_graph_input(array: np.ndarray, spec, options: GraphInput) -> np.ndarray:
    """The shared NCHW normalized ``array`` as the graph takes it: pixels (``x * std + mean``,
    i.e. [0, 1] for images) when normalization is in the graph, NHWC for that layout."""
    out = np.asarray(array, dtype=np.float32)
    if options.normalize_in_graph:
        c = (1, len(spec.std), 1, 1)
        out = out * np.asarray(spec.std, np.float32).reshape(c) + np.asarray(spec.mean, np.float32).reshape(c)
    if options.layout == "nhwc":
        out = out.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


class AdaptedRunner:
    """A runner whose artifact takes another input form: the shared NCHW normalized batches are
    converted (:func:`to_graph_input`) before each call; everything else is the inner runner's."""

    def __init__(self, runner: Any, spec, options: GraphInput):
        self.inner, self.spec, self.options = runner, spec, options
        self.notes = list(getattr(runner, "notes", [])) + [
            f"fed {options.layout.upper()}"
            + (" pixels, normalized in the graph" if options.normalize_in_graph else "")]

    def __getattr__(self, name: str) -> Any:  # name, runtime, provider, fixed_batch, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.inner(to_graph_input(batch, self.spec, self.options))

    def timed_call(self, batch: np.ndarray):
        """The inner runner's timed call on the converted batch (converted once, not timed)."""
        from .latency import timed_call

        return timed_call(self.inner, to_graph_input(batch, self.spec, self.options))


def adapt_runner(runner: Any, spec, options: GraphInput) -> Any:
    return AdaptedRunner(runner, spec, options) if options.adapts else runner
