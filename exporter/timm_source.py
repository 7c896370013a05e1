"""``timm:<name>[.<tag>]`` model source: the recipe from timm's pretrained cfg, the module from
``timm.create_model`` (pretrained through timm's own download, a local checkpoint, or random init).

timm is an optional extra (``pip install 'zoo-exporter[timm]'``), imported only here.
"""
from __future__ import annotations

import contextlib
import difflib
import math
import sys
from types import ModuleType
from typing import Any

from .errors import BackendUnavailableError, UnknownModelError, WeightsError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def require_timm() -> ModuleType:
    try:
        import timm
    except ImportError as err:
        raise BackendUnavailableError(f"timm: models need the 'timm' package ({err})",
                                      fix="pip install 'zoo-exporter[timm]'") from None
    return timm


def timm_recipe(name: str):
    """The ad-hoc recipe of a timm model: input spec from its pretrained cfg (size, mean/std,
    crop_pct -> resize, interpolation, fixed input size), 1000 classes unless the cfg says other."""
    from .recipes import InputSpec, PrepareSpec, Recipe

    timm = require_timm()
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        raise UnknownModelError(
            f"'{arch}' is not a timm model",
            fix=(f"did you mean {' or '.join('timm:' + c for c in close)}?" if close else
                 "list them with python -c \"import timm; print(timm.list_models('resnet*'))\""))
    tags = _tags(timm, arch)
    if tag and tag not in tags:
        raise UnknownModelError(f"timm has no pretrained cfg '{name}'",
                                fix=f"use timm:{arch} or one of its tags: "
                                    + ", ".join(f"timm:{arch}.{t}" for t in tags[:5]))
    cfg = get_pretrained_cfg(name if tag else arch)
    if cfg is None:
        raise UnknownModelError(f"timm has no pretrained cfg '{name}'",
                                fix=f"use one of {timm.list_pretrained(arch + '*')[:5]}")
    channels, height, width = cfg.input_size
    crop_pct = cfg.crop_pct or 0.875
    interpolation = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bilinear"
    spec = InputSpec(channels=channels, size=(height, width),
                     resize=int(math.floor(max(height, width) / crop_pct)),
                     mean=tuple(cfg.mean), std=tuple(cfg.std), fixed_size=bool(cfg.fixed_input_size),
                     interpolation=interpolation, color_mode="L" if channels == 1 else "RGB")
    return Recipe(name=name.replace(".", "_").replace("/", "_"), family="timm", source="timm",
                  builder=f"{arch}.{cfg.tag}" if cfg.tag else arch, num_classes=cfg.num_classes or 1000,
                  input=spec, prepare=PrepareSpec(), weights="DEFAULT",
                  description=f"timm {arch} (pretrained cfg {cfg.tag or 'default'}; no zoo recipe)")


def create(recipe, pretrained_tag: str | None = None):
    """``timm.create_model`` of ``recipe`` (pretrained: ``DEFAULT`` or a tag of the arch)."""
    timm = require_timm()
    from timm.models import split_model_name_tag

    arch, cfg_tag = split_model_name_tag(recipe.builder)
    if pretrained_tag is None:
        return timm.create_model(arch, pretrained=False, num_classes=recipe.num_classes)
    full, _ = _pretrained_cfg(recipe, pretrained_tag)
    try:
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # one error line offline, not a page of retries
    except ImportError:
        pass
    try:
        with contextlib.redirect_stdout(sys.stderr):  # a download's progress is not --json's stdout
            return timm.create_model(full, pretrained=True)
    except Exception as err:  # noqa: BLE001 - hub/HTTP/IO errors have no common base
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(
            f"could not download timm weights {full} ({type(err).__name__}: {first})",
            fix="run once with internet access (timm caches them in the Hugging Face cache, "
                "~/.cache/huggingface), or pass --checkpoint PATH to a local state_dict") from None


def _tags(timm: ModuleType, arch: str) -> list[str]:
    """The pretrained tags timm has for ``arch`` (``c3_in1k`` of ``resnet10t.c3_in1k``)."""
    return [t.split(".", 1)[1] for t in timm.list_pretrained(arch + ".*") if "." in t]


def _pretrained_cfg(recipe, pretrained_tag: str) -> tuple[str, Any]:
    """(full name, timm's pretrained config) of ``pretrained_tag`` (``DEFAULT``: the recipe's tag)."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    timm = require_timm()
    arch, cfg_tag = split_model_name_tag(recipe.builder)
    tag = cfg_tag if pretrained_tag == "DEFAULT" else pretrained_tag
    name = f"{arch}.{tag}" if tag else arch
    tags = _tags(timm, arch)
    if tag and tag not in tags:
        raise WeightsError(f"timm has no pretrained weights '{name}'",
                           fix=f"use --weights DEFAULT or one of {tags}")
    return name, get_pretrained_cfg(name)


def pretrained_classes(recipe, pretrained_tag: str) -> int:
    """The class count of the pretrained weights ``pretrained_tag``."""
    return int(getattr(_pretrained_cfg(recipe, pretrained_tag)[1], "num_classes", 0) or 1000)


def weights_info(recipe, pretrained_tag: str) -> dict[str, Any]:
    name, cfg = _pretrained_cfg(recipe, pretrained_tag)
    return {"kind": "timm", "name": name,
            "hf_hub_id": getattr(cfg, "hf_hub_id", None), "url": getattr(cfg, "url", None)}
