"""``exporter parity MODEL | FILE | --artifacts DIR | --zoo``: eager PyTorch vs every artifact.

Exports what is missing (or takes ``--artifacts DIR`` and rebuilds the eager model its manifest
records), runs eager and every artifact on the same preprocessed inputs, prints one table
(errors, agreement, accuracy, latency, speed-up), optionally writes report.md/report.json/PNGs, and
exits non-zero (ParityError, exit code 3) when an artifact breaches its recipe's tolerance.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import EXIT_CODES_ALWAYS
from ..defaults import MODEL_OPTION_KEYS  # options that change the eager model


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got '{text}'")
    return values


EPILOG = """examples:
  exporter parity mobilenet_v3_small --input-size 96        # export what is missing, then compare
  exporter parity --artifacts artifacts/resnet18 --report reports/r18
  exporter parity artifacts/resnet18/resnet18.onnx          # one file; model read from its metadata
  exporter parity model.onnx --model torchvision:resnet18 --checkpoint r18.pth   # a foreign file
  exporter parity resnet18 --format onnx,pt2 --rtol 1e-3 --json > parity.json
  exporter parity --zoo --reduced                            # every recipe at its test size
  exporter parity --zoo --reduced --jobs 2 --no-latency      # as matrix jobs on 2 local workers
exit codes: 0 ok, 2 usage, 3 parity breach, 4 bad input, 5 environment (a missing runtime, a full
or read-only disk, out of memory), 6 could not produce; """ + EXIT_CODES_ALWAYS


def add_parser(sub) -> None:
    import argparse as ap

    from ..cli_options import (add_model_options, add_output_options, add_precision_options, folder_path,
                               add_tolerance_options)
    from ..defaults import DEFAULT_RANDOM, DEFAULT_RUNS, DEFAULT_SAMPLES, DEFAULT_WARMUP
    from ..zoo_plan import add_fanout_options, add_models_option

    p = sub.add_parser(
        "parity", help="eager PyTorch vs every artifact: errors, agreement, accuracy, latency",
        description="Run eager PyTorch and every artifact on the same inputs and compare outputs, "
                    "accuracy and latency. Exit code 3 when an artifact breaches its recipe's "
                    "tolerance. MODEL may also be one ONNX/pt2/TorchScript file.",
        epilog=EPILOG, formatter_class=ap.RawDescriptionHelpFormatter)
    add_model_options(p, model_required=False)
    p.add_argument("--model", dest="model_spec", metavar="SPEC",
                   help="with a FILE: the eager model it was exported from (default: the model "
                        "recorded in the file's metadata)")
    add_precision_options(p)
    from ..backends import registry

    p.add_argument("--format", "-f", default=None,
                   help="comma-separated formats to export when missing (default onnx,torchscript; "
                        "onnx with --precision fp16/int8, as every format must produce it; "
                        f"any of {', '.join(registry.export_formats())}); every artifact of the "
                        "directory is compared")
    src = p.add_argument_group("what to compare")
    src.add_argument("--artifacts", type=Path, metavar="DIR",
                     help="existing artifact directory; the eager model is rebuilt from its manifest "
                          "(model options given here override the manifest's) (default: export into artifacts/<model>)")
    src.add_argument("--trust-model-code", action="store_true",
                     help="with --artifacts: run the file.py:factory its manifest names (by default "
                          "an artifact directory never executes code; passing MODEL again also works)")
    src.add_argument("--accept-modified", action="store_true",
                     help="compare artifacts whose sha256 differs from the manifest (default: error)")
    src.add_argument("--zoo", action="store_true", help="every recipe of the zoo, with a progress bar (default: one model)")
    src.add_argument("--keep-artifacts", action="store_true",
                     help="with --zoo: keep each model's artifact directory (default: delete the "
                          "ones this run wrote once the model is done; existing ones are kept)")
    src.add_argument("--reduced", action="store_true",
                     help="with --zoo: each recipe's reduced test size instead of its native size "
                          "(default: native)")
    add_models_option(src)
    data = p.add_argument_group("inputs (one preprocessing path: exporter/data.py)")
    data.add_argument("--images", type=Path, metavar="DIR",
                      help="image folder; class subfolders (DIR/<class>/*.jpg) give accuracy "
                           "(default: packaged photo crops)")
    data.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                      help=f"images to use (default {DEFAULT_SAMPLES}; packaged photo crops when no --images)")
    data.add_argument("--random", type=int, default=DEFAULT_RANDOM, metavar="N",
                      help=f"random N(0,1) tensors added to the images (default {DEFAULT_RANDOM})")
    timing = p.add_argument_group("latency (docs/LATENCY.md)")
    timing.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available (CUDA events, ORT CUDA provider), else CPU "
                             "(default auto)")
    timing.add_argument("--ort-provider", choices=("cpu", "cuda", "tensorrt"),
                        help="ONNX Runtime execution provider for the ONNX artifacts (default: cuda "
                             "on a CUDA run when onnxruntime-gpu is installed, else cpu); the report "
                             "names the provider that actually ran")
    timing.add_argument("--allow-provider-fallback", action="store_true",
                        help="with --ort-provider: run on ONNX Runtime's fall-back provider instead "
                             "of failing when the requested one does not load (the report says so) "
                             "(default: fail)")
    timing.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"timed runs (default {DEFAULT_RUNS})")
    timing.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"discarded warm-up runs (default {DEFAULT_WARMUP})")
    timing.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    timing.add_argument("--threads", type=int, help="intra-op threads for every runtime (default: torch's)")
    timing.add_argument("--batch-sizes", type=_int_list, default=(1, 8), metavar="1,8",
                        help="batch sizes to time (default 1,8; a fixed --batch overrides)")
    timing.add_argument("--no-latency", action="store_true", help="compare outputs only (default: time every runtime too)")
    out = p.add_argument_group("outcome")
    out.add_argument("--report", type=folder_path, metavar="DIR",
                     help="write report.md, report.json and PNG plots here (--zoo default: reports/parity-zoo)")
    out.add_argument("--no-fail", action="store_true",
                     help="exit 0 even when an artifact breaches its tolerance (default: exit 3)")
    out.add_argument("--locate", action="store_true",
                     help="on a breach, find the first diverging layer of the ONNX artifact "
                          "(default: off)")
    add_fanout_options(p)
    add_tolerance_options(p)
    add_output_options(p)
    p.set_defaults(func=run, parity_defaults={a.dest: a.default for a in p._actions})


# ------------------------------------------------------------------------------- helpers
def _explicit_overrides(args) -> dict[str, Any]:
    """Model options the user actually typed (differ from the parser's defaults)."""
    defaults = getattr(args, "parity_defaults", {})
    return {k: getattr(args, k) for k in MODEL_OPTION_KEYS
            if k != "model" and getattr(args, k, None) != defaults.get(k)}


def prepare_directory(request, say=print):
    """Export what is missing for ``request`` (``reuse.export_or_reuse``; export-time verification
    is skipped: parity is the verification); return (directory, recipe, spec, reference, note)."""
    from ..reuse import export_or_reuse

    ready = export_or_reuse(request, verify=False, say=say)
    return ready.directory, ready.recipe, ready.spec, ready.reference, ready.note


def reference_for_directory(directory: Path, overrides: dict[str, Any] | None = None):
    """(recipe, spec, reference) recorded by ``directory``'s manifest, with optional overrides."""
    from ..manifest_model import check_same_weights, load_reference, request_from_manifest
    from ..pipeline import load_stage
    from ..prepare import prepare_for_deploy

    if not overrides:
        return load_reference(directory)
    request = request_from_manifest(directory, **overrides)
    recipe, spec, model, weights = load_stage(request)
    if "checkpoint" not in overrides:
        check_same_weights(directory, weights, recipe.builder)
    reference, _ = prepare_for_deploy(model, recipe, fold=False)
    return recipe, spec, reference


def check_trust(manifest: dict[str, Any], directory: Path, model: str | None, trusted: bool) -> None:
    """An artifact directory never runs code: a manifest whose model is ``file.py:factory`` is only
    rebuilt when the user names that spec again on the command line or passes --trust-model-code."""
    import shlex

    from ..cli_options import absolute_model_spec
    from ..errors import TrustError

    spec = str((manifest.get("model_options") or {}).get("model") or manifest.get("model_spec") or "")
    if ".py:" in spec and not trusted and absolute_model_spec(model) != spec:  # ./m.py:f names it too
        raise TrustError(f"{directory / 'manifest.json'} rebuilds its eager model by running "
                         f"{spec}; code named by an artifact directory is not run without consent",
                         fix=f"read {spec.rpartition(':')[0]} first, then pass it again: exporter "
                             f"parity {shlex.quote(spec)} --artifacts {shlex.quote(str(directory))} "
                             "(or add --trust-model-code)")


def _parity_one(args, directory: Path, recipe, spec, reference, runner_options, say,
                manifest=None, only=None):
    from ..locate import locate_for_report
    from ..parity import build_inputs, run_parity
    from ..recipes import override_tolerances

    from ..artifacts import read_manifest_if_any
    from ..graph_input import GraphInput, check_sizes

    recipe = override_tolerances(recipe, getattr(args, "atol", None), getattr(args, "rtol", None))
    graph_input = GraphInput.from_manifest(manifest if manifest is not None
                                           else read_manifest_if_any(directory))
    inputs = build_inputs(spec, images=args.images, samples=args.samples, random=args.random,
                          seed=args.seed or 0, sizes=check_sizes(spec, graph_input))
    report = run_parity(directory, reference, spec, recipe, inputs, args.device,
                        runner_options=runner_options, latency=not args.no_latency,
                        batch_sizes=args.batch_sizes,
                        warmup=args.warmup, runs=args.runs, rounds=args.rounds,
                        threads=args.threads, progress=say, manifest=manifest, artifacts=only,
                        accept_modified=getattr(args, "accept_modified", False))
    if getattr(args, "atol", None) is not None or getattr(args, "rtol", None) is not None:
        given = [f"{flag} {value:g}" for flag, value in (("--atol", args.atol), ("--rtol", args.rtol))
                 if value is not None]
        report.notes.append(f"tolerances overridden on the command line: {', '.join(given)}")
        report.tolerance_flags = given
    if args.locate:
        if report.breaches() and graph_input.adapts:
            report.notes.append("--locate: not run; it feeds the ONNX graph NCHW normalized inputs "
                                "layer by layer and this graph takes "
                                f"{graph_input.layout.upper()}"
                                + (" pixels" if graph_input.normalize_in_graph else ""))
        elif report.breaches():
            locate_for_report(report, reference, inputs[0].array, recipe)
        else:
            report.notes.append("--locate: every artifact is within tolerance, nothing to locate")
    return report


def ort_options(args) -> dict[str, Any]:
    """Runner options for the ONNX artifacts, checked before anything is exported or run."""
    from ..backends.onnxruntime import check_provider, default_trt_cache_dir
    from ..errors import UsageError

    provider = getattr(args, "ort_provider", None)
    if provider is None:
        if args.allow_provider_fallback:
            raise UsageError("--allow-provider-fallback goes with --ort-provider",
                             fix="e.g. --ort-provider cuda --allow-provider-fallback")
        return {}
    if provider != "cpu" and args.device == "cpu":
        raise UsageError(f"--ort-provider {provider} runs on a GPU; --device cpu was asked for",
                         fix=f"use --device cuda (or auto) with --ort-provider {provider}, or "
                             "--ort-provider cpu")
    check_provider(provider, args.allow_provider_fallback)
    options: dict[str, Any] = {"provider": provider, "allow_fallback": args.allow_provider_fallback}
    if provider == "tensorrt":
        options["trt_cache_dir"] = default_trt_cache_dir()
    return options


# ------------------------------------------------------------------------------- run
def run(args) -> int:
    from ..cli_options import absolute_model_spec, parse_formats, progress_logger, request_from_args
    from ..errors import InputError, UsageError
    from ..report import escape, print_report, wide_console
    from ..report_files import write_report

    console = wide_console(stderr=args.json)  # --json: the table and logs go to stderr
    say = progress_logger(args)  # progress on stderr (--verbose: with elapsed seconds), as export's

    from ..validate import check_parity_options

    check_parity_options(args)
    if args.report is not None or args.zoo:  # before any work: it is written at the end
        from ..report_folder import check_report_dir

        check_report_dir(args.report if args.report is not None else Path("reports") / "parity-zoo")
    if args.format is None:  # the default: what produces the precision (fp16/int8: onnx only)
        args.format = "onnx,torchscript" if args.precision == "fp32" else "onnx"
    runner_options = {"onnx": ort_options(args)}  # an unusable provider fails before any export
    from ..zoo_plan import fanout_requested, run_zoo_plan

    if fanout_requested(args) and not args.zoo:
        raise UsageError("--jobs/--ray fan out a --zoo run; one model runs in this process",
                         fix="add --zoo, or drop --jobs/--ray (or use `exporter matrix PLAN.toml`)")
    if args.zoo:
        if args.model or args.artifacts:
            raise UsageError("--zoo runs every recipe; it takes no MODEL and no --artifacts",
                             fix="drop the model name (or drop --zoo)")
        if fanout_requested(args):
            return run_zoo_plan(args, "parity", "artifacts/zoo")
        from ..zoo_parity import run_zoo

        return run_zoo(args, console, runner_options)
    if args.reduced or args.keep_artifacts or args.models:
        raise UsageError("--reduced, --models and --keep-artifacts go with --zoo",
                         fix="use --input-size N for one model (its artifacts are always kept)")

    from ..artifact_file import looks_like_file

    manifest = only = None
    _check_not_other_path(args.model)
    if args.model_spec and not looks_like_file(args.model):
        raise UsageError("--model names the eager model of a FILE",
                         fix="exporter parity path/to/model.onnx --model SPEC (or drop --model)")
    if looks_like_file(args.model):
        if args.artifacts:
            raise UsageError("pass a FILE or --artifacts DIR, not both")
        directory, recipe, spec, reference, manifest, only, note = _file_source(args, say)
    elif args.artifacts:
        directory = Path(args.artifacts)
        if not (directory / "manifest.json").is_file():
            what = "does not exist" if not directory.exists() else "has no manifest.json"
            raise InputError(f"--artifacts '{directory}' {what}",
                             fix="pass a directory written by `exporter export`, or drop --artifacts")
        from ..artifacts import read_manifest

        manifest = read_manifest(directory)
        recorded = manifest.get("model_spec") or manifest.get("model")
        if args.model and absolute_model_spec(args.model) not in (
                absolute_model_spec(recorded), manifest.get("model")):
            raise UsageError(f"'{directory}' holds {recorded}, not {args.model}",
                             fix=f"drop the model name or run `exporter parity {args.model}`")
        check_trust(manifest, directory, args.model, args.trust_model_code)
        overrides = _explicit_overrides(args)
        if overrides:
            say(f"overriding the manifest's model options: {overrides}")
        recipe, spec, reference = reference_for_directory(directory, overrides)
        note = f"eager reference rebuilt from {directory / 'manifest.json'}"
    else:
        if not args.model:
            raise UsageError("which model?", fix="exporter parity MODEL, exporter parity --artifacts DIR, "
                                                 "or exporter parity --zoo")
        request = request_from_args(args, formats=parse_formats(args.format))
        directory, recipe, spec, reference, note = prepare_directory(request, say)
    say(note)
    report = _parity_one(args, directory, recipe, spec, reference, runner_options, say,
                         manifest=manifest, only=only)
    paths = None
    if args.report:  # written before the table is printed: a reader that closes stdout loses nothing
        paths = write_report([report], args.report, title=f"Parity report: {report.model}")
    if not args.quiet or not args.json:
        print_report(report, console)
    if paths:
        console.print(f"report: {escape(str(paths['markdown']))} (+ report.json, {paths['latency_png'].name}, "
                      f"{paths['errors_png'].name})")
    err = report.error()
    if args.json:
        _print_json([report], [], paths, err is None or args.no_fail, err)
    if err is not None:
        if args.no_fail:
            console.print(f"[yellow]--no-fail: {len(report.breaches())} breach(es) reported, exit 0[/yellow]")
            return 0
        raise err
    return 0


def _print_json(reports, failures, paths, ok: bool, err=None) -> None:
    """The parity document: every report (report.json's content), plus the error and exit code
    of a breach (the CLI prints no second document)."""
    import json

    from ..cli_options import print_json
    from ..report_files import _json_default, to_json

    document = json.loads(json.dumps(to_json(reports, failures), default=_json_default))
    document.update(command="parity", exit_ok=ok,
                    report={k: str(v) for k, v in (paths or {}).items()})
    if err is not None:
        document.update(error=err.message, fix=err.fix, error_type=type(err).__name__,
                        exit_code=0 if ok else err.exit_code)
    print_json(document)


# file endings of every artifact format: a MODEL ending so names a file, not a recipe
ARTIFACT_SUFFIXES = (".onnx", ".pt2", ".pt", ".ts", ".pth", ".pte", ".tflite", ".xml", ".param",
                     ".mlpackage", ".engine", ".plan")


def _check_not_other_path(model: str | None) -> None:
    """A MODEL that is a folder or a file parity FILE does not take: say what to run instead
    (it read as an unknown model name)."""
    from ..artifact_file import looks_like_file
    from ..errors import InputError, UsageError
    from ..recipes import all_recipes

    if model and ":" not in model and model not in all_recipes() and not Path(model).exists() \
            and (model.endswith(ARTIFACT_SUFFIXES) or "/" in model):
        raise InputError(f"file {model} does not exist", fix="check the path (an artifact file, or "
                         "--artifacts DIR for a folder `exporter export` wrote)")
    if not model or ":" in model or looks_like_file(model) or not Path(model).exists() \
            or model in all_recipes():  # `-o lenet5` then `parity lenet5`: the recipe
        return
    if Path(model).is_dir():
        raise UsageError(f"'{model}' is a folder, not a model name",
                         fix=f"exporter parity --artifacts {model} (a folder `exporter export` wrote)")
    raise UsageError(f"exporter parity FILE takes an ONNX, pt2, AOTInductor or TorchScript file; "
                     f"'{model}' is not one",
                     fix="compare it with the rest of its export: exporter parity --artifacts "
                         f"{Path(model).parent}")


def _file_source(args, say):
    """(directory, recipe, spec, reference, manifest, only, note) for ``exporter parity FILE``."""
    import argparse as ap

    from ..artifact_file import file_manifest, resolve
    from ..cli_options import request_from_args
    from ..pipeline import load_stage
    from ..prepare import prepare_for_deploy

    path, fmt, meta, options = resolve(args)
    ns = ap.Namespace(**{**vars(args), **options})
    recipe, spec, model, weights_info = load_stage(request_from_args(ns))
    reference, _ = prepare_for_deploy(model, recipe, fold=False)
    shape = meta.get("input_shape") or []
    batch = args.batch or (shape[0] if shape and isinstance(shape[0], int) else None)
    manifest = file_manifest(path, fmt, meta, batch)
    # the report says which eager model was the reference, as an export's manifest does
    manifest["input"] = {**spec.to_dict(), **manifest["input"]}
    manifest["weights"] = {k: v for k, v in weights_info.items() if k != "categories"}
    source = "the file's metadata" if meta else "the command line"
    note = (f"{path.name}: {fmt}, eager model {ns.model} at {spec.size[0]}x{spec.size[1]} "
            f"(from {source}: {options})")
    return path.parent, recipe, spec, reference, manifest, [path.name], note
