"""``exporter parity --zoo`` / ``exporter export --zoo`` with ``--jobs N`` or ``--ray``: the zoo
as a matrix plan (every recipe x the command's formats x its precision), run by the matrix
executors (``exporter matrix``), so the one job function and its two executors serve both."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

# what a zoo job carries (zoo_plan_data) or the run itself uses; any other option given with a
# value other than its default is refused, never dropped (the parser's own defaults decide)
_CARRIED = {"zoo", "reduced", "models", "jobs", "ray", "format", "precision", "input_size", "seed",
            "weights", "batch", "opset", "exporter", "simplifier", "calibration",
            "calibration_method", "calibration_samples", "target", "max_accuracy_drop",
            "min_agreement", "max_kept_fraction", "eval_images", "eval_samples", "weight_rounding",
            "range_tuning", "lever_retry", "samples", "random",
            "runs", "warmup", "rounds", "batch_sizes", "no_latency", "threads", "output", "report",
            "keep_artifacts", "no_fail", "quiet", "verbose", "debug"}
_SAME_IN_A_JOB = {"device": ("cpu",)}  # values a job runs with anyway


def add_fanout_options(parser, default_jobs: str = "one model at a time in this process") -> None:
    """--jobs / --ray for a --zoo run (mutually exclusive); ``default_jobs``: what no --jobs does."""
    where = parser.add_argument_group("fan-out (with --zoo; see README: The matrix)")
    one = where.add_mutually_exclusive_group()
    one.add_argument("--jobs", "-j", type=int, metavar="N",
                     help="with --zoo: run the models as matrix jobs on N local worker processes, "
                          f"each with cores/N intra-op threads (default: {default_jobs})")
    one.add_argument("--ray", metavar="auto|ADDRESS",
                     help="with --zoo: run the models as Ray tasks, auto (a local instance) or a "
                          "cluster such as ray://head:10001 (pip install 'zoo-exporter[ray]') "
                          "(default: no Ray)")


def add_models_option(parser) -> None:
    parser.add_argument("--models", metavar="GLOBS",
                        help="with --zoo: only these recipes, comma-separated names or globs such "
                             "as 'resnet*,lenet5' (default: every recipe)")


def zoo_models(args) -> list[str]:
    """The recipe names a --zoo run covers: every recipe, or those --models names/matches."""
    from .errors import UsageError
    from .recipes import all_recipes, recipes_matching

    if not getattr(args, "models", None):
        return list(all_recipes())
    chosen: list[str] = []
    for pattern in (p.strip() for p in args.models.split(",") if p.strip()):
        hits = recipes_matching(pattern)
        if not hits:
            raise UsageError(f"--models '{pattern}' matches no recipe of the zoo",
                             fix="`exporter list` shows the recipe names; globs such as 'resnet*' work")
        chosen += hits
    if not chosen:
        raise UsageError("--models is empty", fix="name recipes, e.g. --models 'resnet*,lenet5'")
    return list(dict.fromkeys(chosen))


def fanout_requested(args) -> bool:
    return getattr(args, "jobs", None) is not None or getattr(args, "ray", None) is not None


def _refuse_unsupported(args, command: str) -> None:
    from .cli import build_parser
    from .errors import UsageError

    parser = build_parser()
    defaults = vars(parser.parse_args([command, "--zoo"]))
    actions = parser._subparsers._group_actions[0].choices[command]._actions
    flags = {a.dest: a.option_strings[0] for a in actions if a.option_strings}
    given = [flags.get(dest, dest) for dest, value in vars(args).items()
             if dest not in _CARRIED and dest in defaults and value != defaults[dest]
             and value not in _SAME_IN_A_JOB.get(dest, ())]
    if given:
        alone = ("export the models one at a time (exporter export MODEL ...)" if command == "export"
                 else "run without --jobs/--ray (one model at a time)")
        raise UsageError(f"{', '.join(given)} cannot be carried by the matrix jobs of a --zoo run",
                         fix=f"drop them, or {alone}, or write a plan for `exporter matrix`")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}", fix="pass --jobs 1 or more")


def zoo_plan_data(args, command: str) -> dict[str, Any]:
    """The plan mapping (as a TOML plan would give it) of this --zoo command line."""
    from .cli_options import parse_formats, quant_options
    from .matrix.plan import CALIBRATION_KEYS
    from .pipeline import check_formats_produce

    data: dict[str, Any] = {"models": zoo_models(args), "formats": list(parse_formats(args.format)),
                            "precisions": [getattr(args, "precision", "fp32")],
                            "reduced": bool(getattr(args, "reduced", False))}
    if args.input_size is not None:
        data["input_size"] = args.input_size
    for key in ("seed", "weights", "batch", "opset", "exporter", "simplifier"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    check_formats_produce(tuple(data["formats"]), data["precisions"][0])
    quant = quant_options(args)  # INT8 options on another precision are a usage error
    if data["precisions"] == ["int8"]:
        data["calibration"] = {plan_key: quant[dest] for plan_key, dest in CALIBRATION_KEYS.items()
                               if dest in quant}
    if command == "export":  # the export's verify stage: outputs only, 8 photos + 4 random
        data["parity"] = {"latency": False, "samples": 8, "random": 4}
    else:
        parity = {"samples": args.samples, "random": args.random, "runs": args.runs,
                  "warmup": args.warmup, "rounds": args.rounds,
                  "batch_sizes": list(args.batch_sizes), "latency": not args.no_latency}
        if args.threads is not None:
            parity["threads"] = args.threads
        data["parity"] = parity
    return data


def run_zoo_plan(args, command: str, default_output: str) -> int:
    """Run the zoo as matrix jobs; delete the job directories this run wrote unless
    --keep-artifacts (export --zoo keeps them: they are what it was asked for)."""
    from .matrix import storage
    from .matrix.plan import parse_plan
    from .commands.matrix import execute_plan, finish, result_line

    _refuse_unsupported(args, command)
    output = args.output or default_output
    created = not storage.is_url(str(output)) and not Path(output).exists()
    plan = parse_plan(zoo_plan_data(args, command), source=f"exporter {command} --zoo", cli=True)
    report = getattr(args, "report", None)
    if command == "parity":
        report = Path(report or Path("reports") / "parity-zoo")
    results, paths = execute_plan(
        plan, output, jobs=args.jobs, ray=args.ray, progress=not args.quiet,
        title=f"Zoo {command} report", label=f"the zoo ({len(plan.models)} models)",
        report_dir=report, say=print if not args.quiet else (lambda _m: None))
    keep = command == "export" or getattr(args, "keep_artifacts", False)
    if not keep and not storage.is_url(str(output)):
        for result in results:
            if not result.get("skipped"):  # directories an earlier run proved are left alone
                job_dir = Path(output) / result["key"]
                shutil.rmtree(job_dir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    job_dir.parent.rmdir()  # <model>/ once its last job directory is gone
        if created:
            with contextlib.suppress(OSError):
                Path(output).rmdir()  # the output root this run made, when nothing is left in it
    if not args.quiet:
        _print_summary(results, f"zoo {command}")
    else:  # --quiet: no progress and no table, but the result and where the report is
        print(result_line(results, paths))
    return finish(results, paths, args.no_fail, rerun="rerun the same command")


def _print_summary(results, title: str) -> None:
    """The zoo table ``exporter export|parity --zoo`` prints, from the jobs' reports."""
    from .matrix.merge import report_from_dict
    from .report import print_zoo_summary

    reports = [report_from_dict(r["report"]) for r in results if r.get("report")]
    failures = [{"model": r["key"], "error": r.get("error") or "failed"}
                for r in results if not r.get("report")]
    print_zoo_summary(reports, failures, title=title)
