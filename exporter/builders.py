"""Load stage: resolve a model spec to a recipe, build the module, load weights.

Model specs: a recipe name (``mobilenet_v3_small``), ``torchvision:<name>`` for any torchvision
classifier, ``timm:<name>`` for a timm model (``exporter.timm_source``), or ``path/to/file.py:factory`` for a user's own ``nn.Module``.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import os
import re
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputSpecError, UnknownModelError, UsageError, WeightsError
from .offline_weights import WEIGHTS_FILE
from .recipes import InputSpec, PrepareSpec, Recipe, get_recipe

# torchvision classifiers whose auxiliary heads the deploy form removes.
TORCHVISION_AUX = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def _torchvision_classifiers() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision_recipe(name: str) -> Recipe:
    import torchvision.models as tvm

    names = _torchvision_classifiers()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join('torchvision:' + c for c in close)}?" if close else \
            "see torchvision.models.list_models(module=torchvision.models)"
        raise UnknownModelError(f"'{name}' is not a torchvision classification model", fix=hint)
    default = tvm.get_model_weights(name).DEFAULT
    tr = default.transforms()  # metadata only: no download
    crop, resize = int(tr.crop_size[0]), int(tr.resize_size[0])
    spec = InputSpec(size=(crop, crop), resize=resize, mean=tuple(tr.mean), std=tuple(tr.std))
    aux = TORCHVISION_AUX.get(name, ())
    kwargs = {"aux_logits": True, "init_weights": True} if aux else {}
    return Recipe(name=name, family="torchvision", source="torchvision", builder=name,
                  input=spec, prepare=PrepareSpec(strip_aux=aux), weights="DEFAULT",
                  builder_kwargs=kwargs, description=f"torchvision.models.{name} (no zoo recipe)")


def _file_recipe(spec_str: str, input_spec: InputSpec, num_classes: int | None) -> Recipe:
    path, _, factory = spec_str.rpartition(":")
    if not factory.isidentifier():
        raise UnknownModelError(f"'{spec_str}': '{factory}' is not a Python function name",
                                fix="pass path/to/file.py:factory")
    if Path(path).is_dir():
        raise UnknownModelError(f"model file '{path}' is a directory",
                                fix="pass the .py file: path/to/file.py:factory")
    if not Path(path).is_file():
        raise UnknownModelError(f"model file '{path}' does not exist",
                                fix="pass an existing path/to/file.py:factory")
    return Recipe(name=f"{Path(path).stem}_{factory}", family="custom", source="file",
                  builder=f"{Path(path).resolve()}:{factory}", num_classes=num_classes or 1000,
                  input=input_spec, description=f"user module {spec_str}")


def resolve_model(spec_str: str, *, input_size: int | None = None, channels: int | None = None,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                  num_classes: int | None = None) -> tuple[Recipe, InputSpec]:
    """Turn a model spec into (recipe, input spec actually used), validating the input size."""
    if spec_str.startswith("torchvision:"):
        recipe = _torchvision_recipe(spec_str.split(":", 1)[1])
    elif spec_str.startswith("timm:"):
        from .timm_source import timm_recipe

        recipe = timm_recipe(spec_str.split(":", 1)[1])
    elif ".py:" in spec_str:
        imagenet = channels in (None, 3)  # ImageNet's statistics are for RGB, not a slice of them
        base = InputSpec(channels=channels or 3, size=(input_size or 224,) * 2,
                         resize=round((input_size or 224) * 256 / 224),
                         mean=mean or ((0.485, 0.456, 0.406) if imagenet else ()),
                         std=std or ((0.229, 0.224, 0.225) if imagenet else ()), min_size=1,
                         color_mode="L" if channels == 1 else "RGB")
        if len(base.mean) != base.channels or len(base.std) != base.channels:
            n = base.channels
            raise UsageError(f"--channels {n} needs --mean and --std with {n} values each (got "
                             f"{len(base.mean)} and {len(base.std)}; the ImageNet defaults are for "
                             "3 channels)",
                             fix=f"pass both, e.g. --mean {','.join(['0.5'] * n)} "
                                 f"--std {','.join(['0.25'] * n)}")
        recipe = _file_recipe(spec_str, base, num_classes)
    else:
        recipe = get_recipe(spec_str)
    if ".py:" not in spec_str:
        _refuse_file_options(recipe, channels=channels, mean=mean, std=std)
        if num_classes is not None and num_classes != recipe.num_classes:  # a fine-tuned classifier
            recipe = replace(recipe, num_classes=num_classes)
    spec = recipe.input
    if input_size is not None and input_size != max(spec.size):
        if spec.fixed_size:
            raise InputSpecError(f"{recipe.name} only takes {spec.size[0]}x{spec.size[1]} inputs "
                                 f"(got --input-size {input_size})", fix="drop --input-size")
        if input_size < spec.min_size:
            raise InputSpecError(f"{recipe.name} needs inputs of at least {spec.min_size}x"
                                 f"{spec.min_size} (got --input-size {input_size})",
                                 fix=f"use --input-size {spec.min_size} or larger")
        spec = spec.with_size(input_size)
    return recipe, spec


def _refuse_file_options(recipe: Recipe, **given: Any) -> None:
    """--channels/--mean/--std describe a file.py:factory model; a recipe, torchvision or timm
    model has its own, so a different value would be ignored: a UsageError instead."""
    own = {"channels": recipe.input.channels, "mean": tuple(recipe.input.mean),
           "std": tuple(recipe.input.std)}

    def shown(value: Any) -> str:
        return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)

    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    differ = {f"--{k.replace('_', '-')}": k for k, v in given.items() if v != own[k]}
    if differ:
        asked = ", ".join(f"{flag} {shown(given[k])}" for flag, k in differ.items())
        theirs = ", ".join(f"{flag} {shown(own[k])}" for flag, k in differ.items())
        raise UsageError(f"{asked} would be ignored: {recipe.name} builds its own model and "
                         f"preprocessing ({theirs}); these options describe a file.py:factory model",
                         fix=f"drop {' '.join(differ)}, or export your own module as "
                             "path/to/file.py:factory")


def _instantiate(recipe: Recipe, tv_weights: Any = None) -> nn.Module:
    if recipe.source == "torchvision":
        import torchvision.models as tvm

        kwargs = dict(recipe.builder_kwargs)
        if tv_weights is not None:  # torchvision fixes these itself for pretrained weights
            for key in ("transform_input", "init_weights"):
                kwargs.pop(key, None)
        else:
            kwargs["num_classes"] = recipe.num_classes
        with contextlib.redirect_stdout(sys.stderr):  # torch.hub's 'Downloading: ...' line: stdout is --json's
            return tvm.get_model(recipe.builder, weights=tv_weights, **kwargs)
    if recipe.source == "timm":
        from .timm_source import create

        return create(recipe)
    if recipe.source == "zoo":
        from .zoo import ZOO_BUILDERS

        return ZOO_BUILDERS[recipe.builder](num_classes=recipe.num_classes, **recipe.builder_kwargs)
    return _from_file(*recipe.builder.rpartition(":")[::2])


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + ((str(err).strip().splitlines() or [""])[0][:200])


def _from_file(path: str, factory: str) -> nn.Module:
    """Run the user's ``path`` and call ``factory()``; whatever goes wrong is named for what it is."""
    module_spec = importlib.util.spec_from_file_location(f"user_model_{Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise UnknownModelError(f"'{path}' cannot be imported as a Python module",
                                fix="pass a .py file: path/to/file.py:factory")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(Path(path).resolve().parent)  # its sibling modules import, as under `python file.py`
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise UnknownModelError(f"'{path}' has a syntax error at line {err.lineno}: {err.msg}",
                                fix=f"fix {path} (python -m py_compile {path} shows it)") from None
    except Exception as err:  # noqa: BLE001 - the user's module-level code
        raise UnknownModelError(f"importing '{path}' failed ({_first_line(err)})",
                                fix=f"fix {path}; `python -c \"import runpy; runpy.run_path('{path}')\"` "
                                    "shows the error with its traceback") from None
    finally:
        if added:
            sys.path.remove(folder)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UnknownModelError(f"'{path}' has no attribute '{factory}'" if fn is None else
                                f"'{path}:{factory}' is a {type(fn).__name__}, not a function",
                                fix=f"define {factory}() returning an nn.Module in {path}")
    try:
        model = fn()
    except TypeError as err:
        if not _needs_arguments(fn):  # a TypeError inside the factory's own code
            raise UnknownModelError(f"{path}:{factory}() raised {_first_line(err)}",
                                    fix=f"fix {factory} in {path}") from None
        raise UnknownModelError(f"{path}:{factory}() cannot be called without arguments "
                                f"({_first_line(err)})",
                                fix=f"give every parameter of {factory} a default, or add a "
                                    "factory that takes none") from None
    except Exception as err:  # noqa: BLE001 - the user's factory
        raise UnknownModelError(f"{path}:{factory}() raised {_first_line(err)}",
                                fix=f"fix {factory} in {path}") from None
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"{path}:{factory}() returned {type(model).__name__}, not nn.Module",
                                fix=f"make {factory}() return the torch.nn.Module")
    return model


def _needs_arguments(fn) -> bool:
    """Whether ``fn`` has a parameter without a default (so ``fn()`` cannot bind)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                   p.KEYWORD_ONLY) for p in params)


def _torchvision_weights(recipe: Recipe, name: str):
    import torchvision.models as tvm

    enum = tvm.get_model_weights(recipe.builder)
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise WeightsError(f"{recipe.name} has no torchvision weights '{name}'",
                           fix=f"use one of {['DEFAULT'] + [w.name for w in enum]}") from None


def _check_pretrained_classes(recipe: Recipe, weights: str, classes: int) -> None:
    """Named weights come with their classifier: --num-classes must not ask for another one."""
    if recipe.num_classes != classes:
        raise UsageError(f"--weights {weights} of {recipe.name} classify {classes} classes, not "
                         f"{recipe.num_classes} (--num-classes)",
                         fix=f"for a fine-tuned {recipe.num_classes}-class model pass its state_dict: "
                             f"--checkpoint PATH --num-classes {recipe.num_classes}; or drop --num-classes")


def load_checkpoint(model: nn.Module, path: Path, recipe: Recipe) -> None:
    """Strictly load a local state_dict; keys of heads the recipe strips may be absent."""
    from .checkpoints import read_checkpoint

    state = read_checkpoint(path)
    own = model.state_dict()
    aux = tuple(f"{name}." for name in recipe.prepare.strip_aux)
    missing = [k for k in own if k not in state and not k.startswith(aux)
               and not k.endswith(".num_batches_tracked")]  # a training counter, unused in eval
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (first: {', '.join(keys[:3])})")
        heads = {int(state[k].shape[0]) for k in own if k in state and state[k].shape != own[k].shape
                 and own[k].ndim >= 1 and own[k].shape[0] == recipe.num_classes and state[k].ndim >= 1}
        fix = "check the model name, or pass the checkpoint of this architecture"
        if len(heads) == 1 and not missing and not unexpected:  # a fine-tuned head: another class count
            n = heads.pop()
            fix = (f"the checkpoint's classifier has {n} classes, {recipe.name} is built with "
                   f"{recipe.num_classes}: add --num-classes {n}")
        raise WeightsError(f"checkpoint '{path}' does not match {recipe.name}: " + "; ".join(parts), fix=fix)
    model.load_state_dict(state, strict=False)


TIMEOUT_ENV = "ZOO_EXPORTER_NET_TIMEOUT"


def download_timeout() -> float:
    """Seconds a weight download may wait for the network (``$ZOO_EXPORTER_NET_TIMEOUT``, 60)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, "60"))
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number of seconds",
                         fix=f"e.g. {TIMEOUT_ENV}=60") from None
    if not value > 0:
        raise UsageError(f"{TIMEOUT_ENV} must be > 0 seconds, got {value:g}", fix=f"e.g. {TIMEOUT_ENV}=60")
    return value


def build_model(recipe: Recipe, *, weights: str | None = None, checkpoint: str | Path | None = None,
                seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Build the module in eval mode and load its weights; returns (model, weights info).

    With neither ``weights`` nor ``checkpoint`` the model gets a seeded random init whose
    BatchNorm statistics are also randomized (default statistics would hide folding bugs).
    """
    if weights and checkpoint:
        raise UsageError("--weights and --checkpoint are mutually exclusive", fix="pass only one")
    info: dict[str, Any]
    torch.manual_seed(seed)
    if weights and recipe.source == "timm":
        from .timm_source import create, pretrained_classes, weights_info

        _check_pretrained_classes(recipe, weights, pretrained_classes(recipe, weights))
        model = create(recipe, pretrained_tag=weights)
        info = weights_info(recipe, weights)
    elif weights:
        if recipe.source != "torchvision":
            raise WeightsError(f"{recipe.name} is not a torchvision model (nor timm): it has no named weights",
                               fix="pass --checkpoint PATH with a state_dict, or omit --weights for random init")
        tv_weights = _torchvision_weights(recipe, weights)
        _check_pretrained_classes(recipe, weights, len(tv_weights.meta.get("categories") or range(1000)))
        timeout = download_timeout()
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)  # urllib (torch.hub) has no timeout of its own
        try:
            model = _instantiate(replace(recipe, num_classes=1000), tv_weights)
        except (OSError, RuntimeError) as err:  # URLError and TimeoutError are OSErrors
            reason = getattr(err, "reason", err)
            timed_out = isinstance(reason, TimeoutError) or "timed out" in str(err)
            why = f"no answer within {timeout:g}s" if timed_out else f"{type(err).__name__}: {err}"
            raise WeightsError(
                f"could not download torchvision weights {tv_weights} from {tv_weights.url} ({why})",
                fix=f"run once with internet access (cached in {torch.hub.get_dir()})"
                    + (f", raise {TIMEOUT_ENV} for a slow network" if timed_out else "")
                    + ", or pass --checkpoint PATH to a local state_dict"
                    + (" (these very weights ship with set-up: --checkpoint \"$(python -m "
                       "exporter.offline_weights)\")" if WEIGHTS_FILE in tv_weights.url else ""),
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
        info = {"kind": "torchvision", "name": str(tv_weights), "url": tv_weights.url}
    else:
        model = _instantiate(recipe)
        if checkpoint:
            load_checkpoint(model, Path(checkpoint), recipe)
            digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
            info = {"kind": "checkpoint", "path": str(Path(checkpoint).resolve()), "sha256": digest}
        else:
            from .random_init import randomize_bn_stats, randomize_zero_weights

            randomized = randomize_bn_stats(model, seed)
            info = {"kind": "random", "seed": seed,
                    "bn_stats": "randomized" if randomized else "no BatchNorm in this model"}
            zeros = randomize_zero_weights(model, seed)
            if zeros:  # a zero-initialized head (torchvision's ViT) gives all-zero logits
                info["zero_weights_randomized"] = zeros
    return model.eval(), info


def check_input_size(model: nn.Module, recipe: Recipe, spec: InputSpec) -> int | None:
    """Run one forward pass at the requested size; a shape error becomes an InputSpecError.
    Returns the width of a (batch, classes) output (None for another shape)."""
    dummy = torch.zeros(1, spec.channels, *spec.size)
    try:
        with torch.no_grad():
            out = model(dummy)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - RuntimeError, and a model's own assert/ValueError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fix = (f"use the recipe's size {recipe.input.size[0]} (not every size >= "
               f"{recipe.input.min_size} fits this architecture: its layers must divide evenly)")
        if recipe.source == "file":  # no recipe knows its size: the user does
            fix = (f"pass the --input-size {recipe.name} was built for (got {spec.size[0]}; a "
                   "fixed-size flatten before a Linear takes one size only; --input-size is square, so "
                   "a model built for a non-square input such as 128x64 needs a factory that pads or "
                   "resizes a square input to it)")
        wanted = re.search(r"to have (\d+) channels, but got (\d+)", first)
        if wanted:
            n = int(wanted.group(1))
            fix = (f"the model takes {n} input channel(s): pass --channels {n} with --mean and --std "
                   f"of {n} value(s) each")
        raise InputSpecError(
            f"{recipe.name} cannot take a 1x{spec.channels}x{spec.size[0]}x{spec.size[1]} input ({first})",
            fix=fix) from None
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def checked_class_count(recipe: Recipe, width: int | None, asked: int | None) -> Recipe:
    """A user module's recipe with the class count its output really has (the 1000 default is
    a guess); ``--num-classes`` that contradicts the output is an InputSpecError."""
    if width is None or width == recipe.num_classes or recipe.source != "file":
        return recipe
    if asked is not None:
        factory = recipe.builder.rpartition(":")[2]
        raise InputSpecError(f"{recipe.name} outputs {width} logits per sample, but its class count is "
                             f"{recipe.num_classes} (--num-classes): --num-classes declares the count "
                             f"and is not passed to {factory}(), which is called without arguments",
                             fix=f"for a {recipe.num_classes}-class model add a factory that builds it "
                                 f"(def {factory}{recipe.num_classes}(): return {factory}(num_classes="
                                 f"{recipe.num_classes})) and export file.py:{factory}{recipe.num_classes}; "
                                 f"else pass --num-classes {width} or pick the logits output "
                                 "(--output-index / --output-name)")
    return replace(recipe, num_classes=width)
