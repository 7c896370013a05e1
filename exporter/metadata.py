"""Self-describing artifacts: the facts a runtime team needs, written into every artifact.

One flat ``{key: str}`` mapping (values that are lists or mappings are JSON text) goes into the
ONNX ``metadata_props``, the TorchScript and pt2 extra files (``zoo_exporter.json``) and the
AOTInductor package metadata. Keys (all present unless marked optional):

=====================  ==============================================================
``model``              recipe name (``mobilenet_v2``)
``model_spec``         what was asked for (``torchvision:resnet18``, ``timm:resnet10t``)
``source``             torchvision | timm | zoo | file
``input_name``         ``input`` (``output_name``: ``logits``)
``input_shape``        JSON ``[batch, C, H, W]`` (``[batch, H, W, C]`` for NHWC; ``"batch"``,
                       ``"height"``, ``"width"`` where dynamic)
``layout``             ``NCHW`` or ``NHWC`` (``--layout``)
``dynamic_size``       ``true`` when height/width are symbolic (``--dynamic-size``)
``color_order``        ``RGB`` (``L`` for grayscale models)
``pixel_range``        ``[0, 1]``: pixels are divided by 255 before normalization
``mean`` / ``std``     JSON per-channel lists, applied as ``(x / 255 - mean) / std``
``resize``             shorter side before the centre crop (``interpolation``: ``bilinear``)
``normalization``      ``outside the graph`` (the caller normalizes), or ``in the graph``
                       (``--normalize-in-graph``: the graph takes [0, 1] pixels)
``num_classes``        number of logits
``class_names``        JSON list, ImageNet-1k names for 1000-class ImageNet heads (optional)
``weights``            JSON: kind (pretrained/checkpoint/random), name, url or sha256
``precision``          fp32 | fp16 | int8 (set per artifact)
``format``             onnx | torchscript | pt2 | aoti (set per artifact)
``exporter_version``   ``zoo-exporter <version>``; ``torch_version`` too
=====================  ==============================================================
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import __version__

EXTRA_FILE = "zoo_exporter.json"  # name of the extra file in TorchScript and pt2 archives
IMAGENET_SOURCES = ("torchvision", "timm", "zoo")


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, from torchvision's weights metadata (no download)."""
    import torchvision.models as tvm

    return tuple(tvm.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def class_names_for(recipe, weights_info: dict[str, Any]) -> list[str] | None:
    """Names of the logits, where known: the weights' own categories, else ImageNet-1k for a
    1000-class head of a torchvision/timm/zoo ImageNet classifier; None otherwise."""
    names = weights_info.get("categories")
    if names:
        return list(names)
    if recipe.num_classes == 1000 and recipe.source in IMAGENET_SOURCES:
        return list(imagenet_class_names())
    return None


def preprocessing_text(spec, normalize_in_graph: bool) -> str:
    """The preprocessing the export was checked with, as a runtime team would implement it."""
    h, w = spec.size
    order = "L (grayscale)" if spec.color_mode == "L" else "RGB"
    norm = ("(x - mean) / std is in the graph: feed the [0, 1] pixels" if normalize_in_graph
            else "then (x - mean) / std per channel")
    return (f"{order} image, EXIF orientation applied; resize so the shorter side is {spec.resize} "
            f"({getattr(spec, 'interpolation', 'bilinear')}, aspect kept); centre-crop {h}x{w}; "
            f"pixels to float in [0, 1]; {norm}")


def build_metadata(recipe, spec, request, weights_info: dict[str, Any]) -> dict[str, str]:
    """The artifact metadata of one export (per-artifact keys are added by :func:`for_artifact`)."""
    import torch

    from .graph_input import GraphInput, input_shape

    options = GraphInput.of(request)
    weights = {k: v for k, v in weights_info.items() if k != "categories"}
    batch: Any = request.batch if request.batch else "batch"
    meta: dict[str, Any] = {
        "model": recipe.name,
        "model_spec": request.model,
        "source": recipe.source,
        "input_name": "input",
        "output_name": "logits",
        "input_shape": input_shape(spec, options, batch),
        "layout": options.layout.upper(),
        "dynamic_size": options.dynamic_size,
        "color_order": "L" if spec.color_mode == "L" else "RGB",
        "pixel_range": [0, 1],
        "mean": list(spec.mean),
        "std": list(spec.std),
        "resize": spec.resize,
        "crop_size": list(spec.size),
        "interpolation": getattr(spec, "interpolation", "bilinear"),
        "preprocessing": preprocessing_text(spec, options.normalize_in_graph),
        "normalization": ("in the graph: (pixels - mean) / std, pixels in [0, 1]"
                          if options.normalize_in_graph else "outside the graph"),
        "num_classes": recipe.num_classes,
        "weights": weights,
        "exporter_version": f"zoo-exporter {__version__}",
        "torch_version": torch.__version__,
    }
    names = class_names_for(recipe, weights_info)
    if names is not None:
        meta["class_names"] = names
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def for_artifact(meta: dict[str, str], fmt: str, precision: str) -> dict[str, str]:
    return {**meta, "format": fmt, "precision": precision}


def decode(meta: dict[str, str]) -> dict[str, Any]:
    """The mapping as a reader gets it back, JSON values parsed."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def write_onnx_metadata(path: Path, meta: dict[str, str]) -> None:
    """Replace the file's ``metadata_props`` entries of these keys (others are kept)."""
    import onnx

    model = onnx.load(str(path))
    set_onnx_metadata(model, meta)
    onnx.save(model, str(path))


def set_onnx_metadata(model, meta: dict[str, str]) -> None:
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for key, value in [*kept, *meta.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def extra_files(meta: dict[str, str]) -> dict[str, str]:
    """The TorchScript / pt2 ``extra_files`` mapping carrying ``meta``."""
    return {EXTRA_FILE: json.dumps(meta, indent=1)}
