"""Recipes: one declarative TOML file per zoo model in ``recipes/``, validated on load.

A recipe says how to build a model (``source`` + ``builder``), what it eats (``[input]``), how
to prepare it for deployment (``[prepare]``) and how close every artifact must stay to eager
PyTorch (``[tolerance.<precision>]``).
"""
from __future__ import annotations

import difflib
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


def recipe_from_dict(data: dict[str, Any], path: Path | None = None) -> Recipe:
    """Validate a parsed recipe mapping and build a :class:`Recipe`."""
    where = str(path or data.get("name", "<recipe>"))
    _check_keys(where, data, _TOP_KEYS)
    for key in ("name", "family", "source", "builder"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise RecipeError(f"{where}: missing or empty string field '{key}'")
    if data["source"] not in SOURCES:
        raise RecipeError(f"{where}: source '{data['source']}' is not one of {SOURCES}")
    raw_in = dict(data.get("input", {}))
    _check_keys(f"{where} [input]", raw_in, _INPUT_KEYS)
    size = raw_in.pop("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    for key in ("mean", "std"):
        if key in raw_in:
            raw_in[key] = tuple(float(v) for v in raw_in[key])
    spec = InputSpec(size=size, **raw_in)
    if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
        raise RecipeError(f"{where}: mean/std need {spec.channels} values (got {spec.mean}, {spec.std})")
    if min(spec.size) < spec.min_size:
        raise RecipeError(f"{where}: size {spec.size} is below min_size {spec.min_size}")
    raw_prep = data.get("prepare", {})
    _check_keys(f"{where} [prepare]", raw_prep, {"fold_bn", "strip_aux"})
    prepare = PrepareSpec(fold_bn=bool(raw_prep.get("fold_bn", True)),
                          strip_aux=tuple(raw_prep.get("strip_aux", ())))
    tolerances = dict(DEFAULT_TOLERANCES)
    for precision, values in data.get("tolerance", {}).items():
        if precision not in PRECISIONS:
            raise RecipeError(f"{where}: tolerance for unknown precision '{precision}'",
                              fix=f"use one of {PRECISIONS}")
        base = tolerances[precision]
        _check_keys(f"{where} [tolerance.{precision}]", values, set(base.__dataclass_fields__))
        tolerances[precision] = replace(base, **values)
    return Recipe(
        name=data["name"], family=data["family"], source=data["source"], builder=data["builder"],
        num_classes=int(data.get("num_classes", 1000)), input=spec, prepare=prepare,
        weights=data.get("weights"), builder_kwargs=dict(data.get("builder_kwargs", {})),
        tolerances=tolerances, description=data.get("description", ""), path=path,
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
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML ({err})") from err
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
