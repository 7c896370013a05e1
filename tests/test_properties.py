"""Property-based tests (hypothesis): the recipe loader and the CLI argument parser (with the
up-front validation behind it) give a result or a typed ExporterError for any input, never
another exception."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.errors import ExporterError, RecipeError
from exporter.recipes import load_recipe_file, recipe_from_dict

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner,
                                                                       max_size=4)), max_leaves=12)
KEYS = ["name", "family", "source", "builder", "num_classes", "weights", "description", "input",
        "prepare", "tolerance", "builder_kwargs", "other"]
INPUT = st.fixed_dictionaries({}, optional={
    "channels": values, "size": st.one_of(values, st.lists(st.integers(-2, 300), max_size=3)),
    "resize": values, "mean": values, "std": values, "min_size": values, "fixed_size": values,
    "test_size": values, "color_mode": st.sampled_from(["RGB", "L", "CMYK", 3])})
TOLERANCE = st.dictionaries(st.sampled_from(["fp32", "fp16", "int8", "int4"]),
                            st.one_of(values, st.dictionaries(
                                st.sampled_from(["rel_max_abs", "min_cosine", "min_top1_agreement",
                                                 "x"]), values, max_size=3)), max_size=3)
recipes = st.fixed_dictionaries(
    {"name": st.one_of(st.just("m"), values), "family": st.one_of(st.just("f"), values),
     "source": st.sampled_from(["zoo", "torchvision", "file", "pip", 1]),
     "builder": st.one_of(st.just("b"), values)},
    optional={"input": st.one_of(INPUT, values), "prepare": st.one_of(values, st.fixed_dictionaries(
        {}, optional={"fold_bn": values, "strip_aux": values})), "tolerance": st.one_of(TOLERANCE, values),
        "num_classes": values, "weights": values, "description": values,
        "builder_kwargs": values, "other": values})


@SETTINGS
@given(data=st.one_of(recipes, values))
def test_recipe_from_any_mapping_is_a_recipe_or_a_recipe_error(data):
    try:
        recipe = recipe_from_dict(data)
    except RecipeError as err:
        assert err.message
    else:
        assert recipe.input.channels == len(recipe.input.mean) and min(recipe.input.size) >= 1


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: b.decode("latin-1"))))
def test_recipe_file_from_any_text(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("r") / "m.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_recipe_file(path)
    except RecipeError:
        pass


def test_every_shipped_recipe_still_loads():
    from exporter.recipes import recipes_dir

    for path in sorted(Path(recipes_dir()).glob("*.toml")):
        assert load_recipe_file(path).name == path.stem
        assert isinstance(tomllib.loads(path.read_text()), dict)


# ------------------------------------------------------------------------------ the CLI parser
COMMANDS = ["export", "parity", "build", "lint", "list", "nope"]
OPTIONS = ["--batch", "--opset", "--seed", "--input-size", "--channels", "--mean", "--std",
           "--num-classes", "--output-index", "--output-name", "--exporter", "--simplifier",
           "--precision", "--calibration-samples", "--max-accuracy-drop", "--samples", "--random",
           "--threads", "--runs", "--warmup", "--rounds", "--batch-sizes", "--format", "--checkpoint",
           "--weights", "--workspace", "--min-batch", "--max-batch", "--dynamic-batch", "--no-verify",
           "--zoo", "--reduced", "--json", "--debug"]
TOKENS = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(["lenet5", "0", "-1", "18", "5", "nan",
                                                              "1,2", "", "a,b", "onnx", "int8"]),
                   st.integers(-3, 40).map(str), st.text(max_size=6))


@pytest.fixture(scope="module")
def parser():
    from exporter.cli import build_parser

    return build_parser()


@SETTINGS
@given(argv=st.tuples(st.sampled_from(COMMANDS), st.lists(TOKENS, max_size=8)))
def test_any_command_line_parses_and_validates_or_is_a_typed_error(argv, parser, tmp_path_factory):
    from exporter.cli_options import parse_formats, request_from_args
    from exporter.validate import check_model_options, check_parity_options

    command, rest = argv
    try:
        args = parser.parse_args([command, *rest])
        if command in ("export", "parity", "build") and getattr(args, "model", None):
            request = request_from_args(args, formats=parse_formats(getattr(args, "format", None) or "onnx"))
            check_model_options(request)
        if command == "parity":
            check_parity_options(args)
    except ExporterError as err:
        assert err.message and err.exit_code in (2, 4, 5)
    except SystemExit as err:  # only --help/--version exit through argparse
        assert err.code == 0
