"""Model options shared by ``export``, ``parity`` and ``build``, and the request they make."""
from __future__ import annotations

import argparse
from pathlib import Path

from typing import TYPE_CHECKING, Callable

from .defaults import (DEFAULT_EXPORTER, DEFAULT_OPSET, DEFAULT_SIMPLIFIER, EXPORTERS, SIMPLIFIERS,
                       WEIGHT_ROUNDING)
from .errors import UsageError

if TYPE_CHECKING:  # the parser imports no torch/onnx (benchmarks/cli_startup.py)
    from .pipeline import ExportRequest


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _path_text(text: str) -> str:
    """A non-empty path (an empty ``--checkpoint "$(cmd)"`` must not fall back to random init)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path (did the command substitution print nothing?)")
    return text


def add_model_options(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    """The options that say which model (and which weights, size, graph form) to export."""
    parser.add_argument("model", nargs=None if model_required else "?",
                        help="recipe name (exporter list), torchvision:<name>, timm:<name>, or "
                             "path/to/file.py:factory")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="pretrained weights: torchvision name (DEFAULT, IMAGENET1K_V1, "
                         "...) or timm tag (DEFAULT, a1_in1k, ...); downloads (default: seeded "
                         "random init)")
    weights.add_argument("--checkpoint", type=_path_text, help="local state_dict file, loaded with weights_only=True "
                         "(default: none; real MobileNetV2: $(python -m exporter.offline_weights))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default 0)")
    parser.add_argument("--output", "-o", type=folder_path,
                        help="artifact directory (default artifacts/<model>)")
    parser.add_argument("--input-size", type=int, help="square input size, where the architecture "
                        "allows (default: the recipe's, e.g. 224)")
    parser.add_argument("--channels", type=int, help="input channels of file.py:factory models (default 3)")
    parser.add_argument("--mean", type=_floats, help="per-channel mean of file.py:factory models "
                        "(default ImageNet 0.485,0.456,0.406)")
    parser.add_argument("--std", type=_floats, help="per-channel std of file.py:factory models "
                        "(default ImageNet 0.229,0.224,0.225)")
    parser.add_argument("--num-classes", type=int,
                        help="classes of the model's classifier (default: the model's own; 1000 for file.py:factory)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, help="fixed batch size (default: dynamic batch axis)")
    batch.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis (the default)")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--output-index", type=int, metavar="N",
                      help="the logits are output N of a model that returns several (tuple/list); default: "
                           "a model with several outputs is refused, listing them")
    pick.add_argument("--output-name", metavar="NAME",
                      help="the logits are output NAME of a model that returns several (dict/namedtuple); "
                           "default: none")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--exporter", choices=EXPORTERS, default=DEFAULT_EXPORTER,
                        help=f"torch ONNX exporter (default {DEFAULT_EXPORTER}, see docs/zoo.md)")
    parser.add_argument("--simplifier", choices=SIMPLIFIERS, default=DEFAULT_SIMPLIFIER,
                        help=f"ONNX simplifier (default {DEFAULT_SIMPLIFIER})")
    parser.add_argument("--simplify-fallback", action="store_true",
                        help="keep the unsimplified graph if simplification fails (default: error)")


def add_graph_input_options(parser: argparse.ArgumentParser) -> None:
    """What the exported graph takes (exporter/graph_input.py); recorded in the manifest."""
    group = parser.add_argument_group("graph input (recorded in manifest.json and the artifact "
                                      "metadata; parity feeds each artifact what it takes)")
    group.add_argument("--dynamic-size", action="store_true",
                       help="symbolic height/width (onnx, pt2, aoti, torchscript), checked at the "
                            "recipe's size and at +32 px; refused for fixed-size architectures "
                            "(default: fixed at --input-size)")
    group.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw",
                       help="input layout of the graph; nhwc transposes inside the graph "
                            "(default nchw)")
    group.add_argument("--normalize-in-graph", action="store_true",
                       help="the graph takes RGB pixels in [0, 1] (pixel / 255) and applies the "
                            "recipe's mean/std itself (default: off, the caller normalizes)")


def add_precision_options(parser: argparse.ArgumentParser) -> None:
    """FP16/INT8 options (the quantize stage)."""
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="fp16/int8: each --format writes that precision; onnx, openvino, ncnn "
                             "and coreml also keep their FP32 artifact (default fp32)")
    parser.add_argument("--calibration", help="INT8 calibration data: an image folder, an .npy of "
                        "preprocessed NCHW tensors, or 'packaged' (photos installed packages ship; "
                        "see calibration/README.md) (default: none, required for int8)")
    parser.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile", "mse"),
                        help="activation range method (default mse: best measured, see "
                             "benchmarks/INT8_RESULTS.md)")
    parser.add_argument("--calibration-samples", type=int, metavar="N",
                        help="calibration samples, chosen seeded and class-balanced (default 256)")
    parser.add_argument("--target", choices=("tensorrt", "cpu"), help="INT8 Q/DQ placement (default tensorrt)")
    parser.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                        help="INT8 budget with labelled held-out images: max top-1 accuracy drop in "
                             "points (default 1.0)")
    parser.add_argument("--min-agreement", type=float, metavar="A",
                        help="INT8 budget: min top-1 agreement with FP32 on the held-out images "
                             "(default 0.95 without labels; with labels the default budget is "
                             "--max-accuracy-drop, and this option replaces it)")
    parser.add_argument("--max-kept-fraction", type=float, metavar="F",
                        help="INT8 budget: the most convs it may keep out of INT8 (fp16 on tensorrt, "
                             "fp32 on cpu, executorch and tflite), as a fraction of all convs, "
                             "before it refuses (default 0.25)")
    parser.add_argument("--eval-images", metavar="DIR",
                        help="held-out images the INT8 budget is judged on (class subfolders named "
                             "by class index give accuracy); default: a deterministic split of the "
                             "calibration source, never the calibration samples themselves")
    parser.add_argument("--eval-samples", type=int, metavar="N",
                        help="held-out samples the INT8 budget is judged on (default 200)")
    parser.add_argument("--weight-rounding", choices=WEIGHT_ROUNDING,
                        help="INT8 weight rounding: exact = searched rounding of the depthwise "
                             "convs, gptq = that plus GPTQ for the others; slower, opt-in levers "
                             "(benchmarks/INT8_EXACT.md, INT8_GPTQ.md) (default nearest)")
    parser.add_argument("--range-tuning", action="store_true", default=None,
                        help="tune the INT8 activation ranges end to end against the prediction "
                             "(minutes; opt-in lever: benchmarks/INT8_TUNE.md) (default off)")
    parser.add_argument("--lever-retry", action=argparse.BooleanOptionalAction, default=None,
                        help="when the INT8 budget is not met and no lever was chosen, retry once "
                             "with --weight-rounding exact (minutes more; it was neutral on unseen "
                             "photos: benchmarks/INT8_PHOTO_SPLIT.md) (default off)")


_QUANT_NAMES = {"calibration": "calibration", "calibration_method": "method",
                "calibration_samples": "samples", "target": "target",
                "max_accuracy_drop": "max_accuracy_drop", "min_agreement": "min_agreement",
                "max_kept_fraction": "max_kept_fraction", "eval_images": "eval_data",
                "eval_samples": "eval_samples", "weight_rounding": "weight_rounding",
                "range_tuning": "range_tuning", "lever_retry": "lever_retry"}


def quant_flag(key: str) -> str:
    """The command-line flag of a quantize option ("samples" -> "--calibration-samples")."""
    src = next((s for s, k in _QUANT_NAMES.items() if k == key), key)
    return "--" + src.replace("_", "-")


def quant_options(args: argparse.Namespace) -> dict:
    """The INT8 options the user gave (only those), by the names the quantize stage takes; a
    UsageError when they were given to a run that makes no INT8 (they would do nothing)."""
    given = {src: getattr(args, src) for src in _QUANT_NAMES if getattr(args, src, None) is not None}
    precision = getattr(args, "precision", "fp32")
    if given and precision != "int8":
        flags = ["--" + src.replace("_", "-") for src in given]
        raise UsageError(f"{', '.join(flags)} only change{'s' if len(flags) == 1 else ''} an INT8 "
                         f"export, and this one is --precision {precision}",
                         fix=f"add --precision int8, or drop {' '.join(flags)}")
    return {_QUANT_NAMES[src]: value for src, value in given.items()}


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    if not formats:
        raise UsageError("--format is empty", fix="use --format onnx, torchscript or onnx,torchscript")
    return formats


def folder_path(value: str) -> Path:
    """An argparse type: a folder path, never empty ('' is Path('.'): an unset $VAR would send the
    files into the current folder)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty (an unset variable?); pass a folder")
    return Path(value)


def folder_or_url(value: str) -> str:
    """An argparse type: a folder path or an fsspec URL, kept as text, never empty."""
    folder_path(value)
    return value


def absolute_model_spec(spec: str | None) -> str | None:
    """A file.py:factory spec with the file's absolute path (the manifest records it, and a later
    `parity --artifacts` from another folder must find it); other specs as they are."""
    if not spec or ".py:" not in spec:
        return spec
    path, _, factory = spec.rpartition(":")
    return f"{Path(path).absolute()}:{factory}" if Path(path).is_file() else spec


def request_from_args(args: argparse.Namespace, formats: tuple[str, ...] = ("onnx",)) -> "ExportRequest":
    """Build the ExportRequest the model options describe."""
    from .pipeline import ExportRequest

    return ExportRequest(
        model=absolute_model_spec(args.model), formats=formats, output=args.output,
        weights=args.weights, seed=args.seed, input_size=args.input_size,
        checkpoint=str(Path(args.checkpoint).absolute()) if args.checkpoint else args.checkpoint,
        channels=args.channels, mean=args.mean, std=args.std, num_classes=args.num_classes,
        batch=args.batch, output_index=args.output_index, output_name=args.output_name,
        opset=args.opset, exporter=args.exporter, simplifier=args.simplifier,
        simplify_fallback=args.simplify_fallback, precision=getattr(args, "precision", "fp32"),
        quant=quant_options(args), atol=getattr(args, "atol", None), rtol=getattr(args, "rtol", None),
        layout=getattr(args, "layout", "nchw"), dynamic_size=getattr(args, "dynamic_size", False),
        normalize_in_graph=getattr(args, "normalize_in_graph", False),
    )


def add_tolerance_options(parser: argparse.ArgumentParser) -> None:
    """Command-line overrides of the recipe's parity tolerances (every precision)."""
    group = parser.add_argument_group("tolerance overrides (default: the recipe's [tolerance.*])")
    group.add_argument("--rtol", type=float, metavar="R",
                       help="max |artifact - eager| / max |eager| allowed (replaces the recipe's "
                            "rel_max_abs; default: recipe, 1e-4 for fp32)")
    group.add_argument("--atol", type=float, metavar="A",
                       help="max |artifact - eager| allowed in logits units (default: not checked)")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--json / --quiet / --verbose: what goes to stdout and how much progress goes to stderr."""
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true",
                       help="print exactly one JSON document on stdout (progress and logs go to "
                            "stderr; an error is {\"ok\": false, ...} with the exit code) "
                            "(default: a human summary)")
    loud = group.add_mutually_exclusive_group()
    loud.add_argument("--quiet", "-q", action="store_true",
                      help="no progress lines, only the result and errors (default: progress on stderr)")
    loud.add_argument("--verbose", "-v", action="store_true",
                      help="every progress line, including per-stage details (default: off)")


def progress_logger(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines on stderr, silenced by --quiet; --verbose prefixes the elapsed seconds."""
    import time

    from .console import console

    if getattr(args, "quiet", False):
        return lambda _msg: None
    if getattr(args, "verbose", False):
        start = time.perf_counter()
        return lambda msg: print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=console(),
                                 flush=True)
    return lambda msg: print(msg, file=console(), flush=True)


_JSON_PRINTED = []  # set once a --json run printed its document (the CLI then prints no other)


def print_json(document) -> None:
    """The one JSON document of a --json run, on stdout."""
    import json

    print(json.dumps(document, indent=2, default=str), flush=True)
    _JSON_PRINTED.append(True)


def json_printed() -> bool:
    return bool(_JSON_PRINTED)
