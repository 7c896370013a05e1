"""``exporter parity --zoo``: every recipe (or those ``--models`` names) in turn, each at its native,
reduced or ``--input-size`` size, one report; a format a runtime cannot convert becomes an
'unsupported' cell instead of failing the model."""
from __future__ import annotations

import argparse
import gc
import shutil
import sys
from pathlib import Path


def _zoo_request(args, name: str, recipe):
    """The request for one zoo model: the shared options, at native / reduced / --input-size."""
    from .cli_options import parse_formats, request_from_args

    ns = argparse.Namespace(**vars(args))
    ns.model = name
    size = args.input_size
    spec = recipe.input
    if args.reduced:
        size = spec.test_size
    if size is not None and (spec.fixed_size or size < spec.min_size or size == max(spec.size)):
        size = None
    ns.input_size = size
    base = Path(args.output) if args.output else Path("artifacts")
    suffix = f"@{size}" if size else ""
    ns.output = base / f"{name}{suffix}"
    return request_from_args(ns, formats=parse_formats(args.format))


def _prepare_zoo_model(request):
    """prepare_directory, dropping each format whose runtime cannot convert the model; those
    become 'unsupported' cells (the op and the runtime named) instead of failing the model."""
    import dataclasses

    from .commands.parity import prepare_directory
    from .errors import UnsupportedModelError
    from .parity import ArtifactResult

    cells = []
    while True:
        try:
            directory, recipe, spec, reference, _ = prepare_directory(request, say=lambda m: None)
            return directory, recipe, spec, reference, cells
        except UnsupportedModelError as err:
            if err.format not in request.formats or len(request.formats) == 1:
                raise
            cells.append(ArtifactResult(file=f"({err.format})", format=err.format,
                                        precision=request.precision, status="unsupported",
                                        error=f"{err.runtime}: {err.op}", notes=[err.message]))
            request = dataclasses.replace(
                request, formats=tuple(f for f in request.formats if f != err.format))


def run_zoo(args, console, runner_options) -> int:
    """Parity of every chosen recipe, one at a time; one report; ParityError on any breach."""
    from tqdm import tqdm

    from .errors import ExporterError, ParityError
    from .recipes import all_recipes
    from .report import escape, print_zoo_summary
    from .report_files import write_report

    from .commands.parity import _parity_one, _print_json
    from .zoo_plan import zoo_models

    chosen = zoo_models(args)
    recipes = {name: recipe for name, recipe in all_recipes().items() if name in chosen}
    reports, failures = [], []
    bar = tqdm(list(recipes), desc="parity", unit="model", dynamic_ncols=True,  # a log gets the
               disable=args.quiet or not sys.stderr.isatty())  # per-model lines, not \r frames
    for name in bar:
        bar.set_postfix_str(name)
        written = None
        try:
            request = _zoo_request(args, name, recipes[name])
            out = Path(request.output)
            missing = [p for p in [out, *out.parents] if not p.exists()]
            written = missing[-1] if missing else None  # the topmost folder this run creates
            directory, recipe, spec, reference, unsupported = _prepare_zoo_model(request)
            report = _parity_one(args, directory, recipe, spec, reference, runner_options,
                                 say=lambda m, n=name: bar.set_postfix_str(f"{n}: {m}"))
            report.artifacts += unsupported
            reports.append(report)
            status = "ok" if report.ok else f"FAIL {'; '.join(str(b) for b in report.breaches())}"
        except ExporterError as err:
            failures.append({"model": name, "error": f"{type(err).__name__}: {err.message}"
                             + (f" (fix: {err.fix})" if err.fix else "")})
            status = f"ERROR {type(err).__name__}: {err.message}"
        except Exception as err:  # noqa: BLE001 - one broken model must not stop the zoo
            failures.append({"model": name, "error": f"{type(err).__name__}: {err}"})
            status = f"ERROR {type(err).__name__}: {err}"
        if written is not None and not args.keep_artifacts:
            shutil.rmtree(written, ignore_errors=True)  # only what this run wrote
        gc.collect()  # one model's runners and tensors at a time
        if not args.quiet:
            tqdm.write(f"{name}: {status}", file=sys.stderr)
    bar.close()
    print_zoo_summary(reports, failures, console)
    out = Path(args.report or Path("reports") / "parity-zoo")
    paths = write_report(reports, out, failures, title="Zoo parity report")
    console.print(f"report: {escape(str(paths['markdown']))} (+ report.json, {paths['latency_png'].name}, "
                  f"{paths['errors_png'].name})")
    breaches = [b for r in reports for b in r.breaches()]
    if args.json:
        _print_json(reports, failures, paths, not (breaches or failures) or args.no_fail,
                    None if not (breaches or failures) else ParityError(
                        f"zoo parity: {len(breaches)} breach(es), {len(failures)} failure(s)"))
    if (breaches or failures) and not args.no_fail:
        detail = "; ".join(str(b) for b in breaches[:5]) + ("; ..." if len(breaches) > 5 else "")
        failed = [f["model"] for f in failures]
        msg = f"zoo parity: {len(breaches)} breach(es)" + (f": {detail}" if breaches else "")
        if failed:
            msg += f"; {len(failed)} model(s) failed to export or run: {', '.join(failed)}"
        raise ParityError(msg, fix=f"details in {paths['markdown']}; rerun one model with "
                                   "`exporter parity MODEL --locate`; --no-fail reports without failing")
    return 0
