"""The TensorRT-readiness lint over every zoo model x precision, on the exporter's own artifacts:
the FP32 export, the FP16 stage's graph and the INT8 stage's TensorRT placement must be clean
(no errors) when linted as what they are, and fail when linted as another precision."""
from __future__ import annotations

import onnx
import pytest

from exporter.errors import PrecisionError
from exporter.lint import detect_precision, lint_onnx
from exporter.quantize import quantize_stage
from exporter.recipes import all_recipes

from quant_helpers import fp32_onnx, zoo_recipe

RECIPES = all_recipes()


def _clean(path, precision):
    report = lint_onnx(path, precision)
    assert report.ok, report.render()
    assert report.detected_precision == precision, report.render()
    assert report.opset is not None and report.nodes > 0
    return report


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_zoo_lint_every_precision(name, tmp_path, request):
    recipe = zoo_recipe(name, request)
    path, spec = fp32_onnx(recipe, size=recipe.input.test_size)
    _clean(path, "fp32")
    assert not lint_onnx(path, "int8").ok  # an FP32 graph is not an INT8 engine's input

    try:
        fp16 = quantize_stage(path, tmp_path, recipe, spec, "fp16")
    except PrecisionError as err:  # random-init logits beyond fp16 (inception_v3, resnet152)
        assert "overflows" in err.message
    else:
        _clean(tmp_path / fp16["file"], "fp16")

    int8 = quantize_stage(path, tmp_path, recipe, spec, "int8", calibration="packaged", samples=8,
                          target="tensorrt", budget=False)
    report = _clean(tmp_path / int8["file"], "int8")
    assert report.op_types.get("QuantizeLinear", 0) > 0 and report.op_types.get("DequantizeLinear", 0) > 0
    assert detect_precision(onnx.load(str(tmp_path / int8["file"]))) == "int8"
