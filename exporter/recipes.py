"""Recipes: one declarative TOML file per zoo model in ``recipes/``, validated on load.

A recipe says how to build a model (``source`` + ``builder``), what it eats (``[input]``), how
to prepare it for deployment (``[prepare]``) and how close every artifact must stay to eager
PyTorch (``[tolerance.<precision>]``).
"""
from __future__ import annotations

import difflib
import fnmatch
import math
import os
import tomllib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import RecipeError, UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("torchvision", "timm", "zoo", "file")
PRECISIONS = ("fp32", "fp16", "int8")


def recipes_dir() -> Path:
    """Directory holding the recipe TOML files (``$EXPORTER_RECIPES`` overrides)."""
    env = os.environ.get("EXPORTER_RECIPES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "recipes", here / "_recipes"):  # checkout, then installed
        if candidate.is_dir():
            return candidate
    raise RecipeError(
        f"no recipes directory next to {here}",
        fix="reinstall zoo-exporter (the wheel ships exporter/_recipes), or set "
            "EXPORTER_RECIPES=/path/to/recipes",
    )


@dataclass(frozen=True)
class InputSpec:
    """What the model eats: an NCHW float tensor made by resize -> center-crop -> normalize."""

    channels: int = 3
    size: tuple[int, int] = (224, 224)  # (height, width) fed to the network
    resize: int = 256  # shorter side before the center crop (preprocessing only)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    min_size: int = 32  # smallest spatial size the architecture accepts
    fixed_size: bool = False  # True: only `size` works (e.g. a Linear after a fixed flatten)
    test_size: int | None = None  # reduced size used by the default test suite
    color_mode: str = "RGB"  # PIL mode images are converted to ("L" for grayscale)
    interpolation: str = "bilinear"  # of the resize (timm models often use bicubic)

    def with_size(self, size: int | tuple[int, int]) -> "InputSpec":
        """Same spec at another square/rectangular size; resize keeps the recipe's ratio."""
        hw = (size, size) if isinstance(size, int) else tuple(size)
        ratio = self.resize / max(self.size)
        return replace(self, size=hw, resize=max(hw[0], round(max(hw) * ratio)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "size": list(self.size),
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "color_mode": self.color_mode,
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class PrepareSpec:
    """Deploy preparation steps the recipe asks for."""

    fold_bn: bool = True
    strip_aux: tuple[str, ...] = ()  # attribute names of auxiliary heads to remove
    output: int | str | None = None  # which output of a multi-output forward is the logits


@dataclass(frozen=True)
class Tolerance:
    """Parity bounds of one precision versus eager FP32 PyTorch."""

    rel_max_abs: float  # max |a - b| divided by max |eager logits|
    min_top1_agreement: float  # fraction of samples whose argmax matches eager
    min_cosine: float = 0.0
    max_abs: float | None = None  # absolute bound on max |a - b| (--atol); None: not checked


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(rel_max_abs=1e-4, min_top1_agreement=1.0, min_cosine=0.99999),
    "fp16": Tolerance(rel_max_abs=2e-2, min_top1_agreement=0.97, min_cosine=0.999),
    "int8": Tolerance(rel_max_abs=1.0, min_top1_agreement=0.80, min_cosine=0.9),
}


@dataclass(frozen=True)
class Recipe:
    """One model of the zoo (or an ad-hoc model built from the command line)."""

    name: str
    family: str
    source: str  # torchvision | zoo | file
    builder: str  # torchvision function name, zoo builder name, or "path.py:factory"
    num_classes: int = 1000
    input: InputSpec = field(default_factory=InputSpec)
    prepare: PrepareSpec = field(default_factory=PrepareSpec)
    weights: str | None = None  # default torchvision weights enum name (None: random init)
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    description: str = ""
    path: Path | None = None

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances[precision]

    @property
    def prepare_steps(self) -> list[str]:
        steps = ["eval", "export-safe inplace"]
        if self.prepare.fold_bn:
            steps.append("fold BN")
        if self.prepare.strip_aux:
            steps.append("strip " + "/".join(self.prepare.strip_aux))
        return steps


_TOP_KEYS = {"name", "family", "source", "builder", "num_classes", "weights", "description",
             "input", "prepare", "tolerance", "builder_kwargs"}
_INPUT_KEYS = {"channels", "size", "resize", "mean", "std", "min_size", "fixed_size", "test_size",
               "color_mode", "interpolation"}


def _check_keys(where: str, data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}", fix=f"allowed keys: {sorted(allowed)}")


def _table(where: str, data: dict, key: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: [{key}] must be a table, got {type(value).__name__}",
                          fix=f"write it as a [{key}] section")
    return value


def _whole(where: str, key: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RecipeError(f"{where}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _numbers(where: str, key: str, value: Any, positive: bool = False) -> tuple[float, ...]:
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        and (v > 0 or not positive) for v in value)
    if not ok:
        raise RecipeError(f"{where}: '{key}' must be a list of finite{' positive' if positive else ''} "
                          f"numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _input_spec(where: str, raw: dict) -> InputSpec:
    raw = dict(raw)
    _check_keys(f"{where} [input]", raw, _INPUT_KEYS)
    size = raw.pop("size", 224)
    size = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise RecipeError(f"{where} [input]: size must be N or [H, W], got {size!r}")
    size = tuple(_whole(f"{where} [input]", "size", v) for v in size)
    for key in ("channels", "resize", "min_size"):
        if key in raw:
            _whole(f"{where} [input]", key, raw[key])
    if raw.get("test_size") is not None:
        _whole(f"{where} [input]", "test_size", raw["test_size"])
    for key in ("mean", "std"):
        if key in raw:
            raw[key] = _numbers(f"{where} [input]", key, raw[key], positive=key == "std")
    if not isinstance(raw.get("fixed_size", False), bool):
        raise RecipeError(f"{where} [input]: fixed_size must be true or false")
    if raw.get("color_mode", "RGB") not in ("RGB", "L"):
        raise RecipeError(f"{where} [input]: color_mode must be 'RGB' or 'L', got {raw['color_mode']!r}")
    spec = InputSpec(size=size, **raw)
    if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
        raise RecipeError(f"{where}: mean/std need {spec.channels} values (got {spec.mean}, {spec.std})")
    if min(spec.size) < spec.min_size:
        raise RecipeError(f"{where}: size {spec.size} is below min_size {spec.min_size}")
    return spec


def _tolerances(where: str, raw: dict) -> dict[str, Tolerance]:
    tolerances = dict(DEFAULT_TOLERANCES)
    for precision, values in raw.items():
        if precision not in PRECISIONS:
            raise RecipeError(f"{where}: tolerance for unknown precision '{precision}'",
                              fix=f"use one of {PRECISIONS}")
        if not isinstance(values, dict):
            raise RecipeError(f"{where}: [tolerance.{precision}] must be a table")
        base = tolerances[precision]
        _check_keys(f"{where} [tolerance.{precision}]", values, set(base.__dataclass_fields__))
        for key, value in values.items():
            _numbers(f"{where} [tolerance.{precision}]", key, [value])
        tolerances[precision] = replace(base, **{k: float(v) for k, v in values.items()})
    return tolerances


def recipe_from_dict(data: dict[str, Any], path: Path | None = None) -> Recipe:
    """Validate a parsed recipe mapping and build a :class:`Recipe` (any malformed value is a
    :class:`RecipeError`)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{path or '<recipe>'}: a recipe is a table, got {type(data).__name__}")
    where = str(path or data.get("name", "<recipe>"))
    _check_keys(where, data, _TOP_KEYS)
    for key in ("name", "family", "source", "builder"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise RecipeError(f"{where}: missing or empty string field '{key}'")
    if data["source"] not in SOURCES:
        raise RecipeError(f"{where}: source '{data['source']}' is not one of {SOURCES}")
    for key in ("weights", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise RecipeError(f"{where}: '{key}' must be a string, got {data[key]!r}")
    spec = _input_spec(where, _table(where, data, "input"))
    raw_prep = _table(where, data, "prepare")
    _check_keys(f"{where} [prepare]", raw_prep, {"fold_bn", "strip_aux"})
    strip = raw_prep.get("strip_aux", ())
    if not isinstance(raw_prep.get("fold_bn", True), bool) or not isinstance(strip, (list, tuple)) \
            or not all(isinstance(n, str) and n for n in strip):
        raise RecipeError(f"{where} [prepare]: fold_bn must be true/false and strip_aux a list of "
                          "module names")
    prepare = PrepareSpec(fold_bn=raw_prep.get("fold_bn", True), strip_aux=tuple(strip))
    return Recipe(
        name=data["name"], family=data["family"], source=data["source"], builder=data["builder"],
        num_classes=_whole(where, "num_classes", data.get("num_classes", 1000)), input=spec,
        prepare=prepare, weights=data.get("weights"),
        builder_kwargs=dict(_table(where, data, "builder_kwargs")),
        tolerances=_tolerances(where, _table(where, data, "tolerance")),
        description=data.get("description") or "", path=path,
    )


def override_tolerances(recipe: Recipe, atol: float | None = None,
                        rtol: float | None = None) -> Recipe:
    """``recipe`` with every precision's bounds overridden from the command line: ``rtol`` replaces
    ``rel_max_abs`` (max |a - b| / max |eager|), ``atol`` adds an absolute max |a - b| bound."""
    if atol is None and rtol is None:
        return recipe
    changes: dict[str, Any] = {}
    if rtol is not None:
        changes["rel_max_abs"] = float(rtol)
    if atol is not None:
        changes["max_abs"] = float(atol)
    return replace(recipe, tolerances={p: replace(t, **changes) for p, t in recipe.tolerances.items()})


def load_recipe_file(path: Path) -> Recipe:
    """Parse and validate one recipe file; its file stem must equal its ``name``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: not valid TOML ({err})", fix="fix the recipe file") from None
    recipe = recipe_from_dict(data, path)
    if recipe.name != path.stem:
        raise RecipeError(f"{path}: name '{recipe.name}' differs from the file name '{path.stem}'")
    return recipe


@lru_cache(maxsize=None)
def _registry(directory: str) -> dict[str, Recipe]:
    return {p.stem: load_recipe_file(p) for p in sorted(Path(directory).glob("*.toml"))}


def all_recipes() -> dict[str, Recipe]:
    """Every recipe in the recipes directory, keyed by name."""
    return dict(_registry(str(recipes_dir())))


def recipes_matching(pattern: str) -> list[str]:
    """Recipe names that ``pattern`` names or matches as a glob ('resnet*'), in registry order."""
    return fnmatch.filter(list(all_recipes()), pattern)


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name; unknown names raise with a 'did you mean' suggestion."""
    registry = all_recipes()
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, registry, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else "run `exporter list`"
    raise UnknownModelError(
        f"unknown model '{name}'",
        fix=f"{hint} (any torchvision classifier works as 'torchvision:<name>', "
            "your own module as 'path/to/file.py:factory')",
    )
