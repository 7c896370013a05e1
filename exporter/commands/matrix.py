"""``exporter matrix PLAN.toml``: every model x format x precision of a plan, exported and proved
in parallel - local worker processes by default, Ray tasks with ``--ray auto|ADDRESS``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EXIT_CODES_ALWAYS


def add_parser(sub) -> None:
    from ..cli_options import folder_or_url

    p = sub.add_parser(
        "matrix", help="run a plan (models x formats x precisions) on local workers or Ray",
        description="Export and prove every job of a plan file (see README: The matrix); one "
                    "artifact directory per job under --output and the merged report.md / "
                    "report.json at its top.",
        epilog="""examples:
  exporter matrix examples/matrix-small.toml --output artifacts/matrix --jobs 2 --no-latency
  exporter matrix plan.toml --ray auto                   # Ray tasks (pip install 'zoo-exporter[ray]')
  exporter matrix plan.toml --ray ray://head:10001       # a running Ray cluster
  exporter matrix plan.toml --ray auto --output s3://bucket/zoo   # artifacts + report at a URL

exit codes: 0 every job ok (or --no-fail), 3 a parity breach, 4 a bad plan (nothing run),
5 no GPU / Ray for the plan, else the failed jobs' code; """ + EXIT_CODES_ALWAYS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", type=Path, help="plan TOML file")
    p.add_argument("--output", "-o", default="artifacts/matrix", type=folder_or_url,
                   help="shared output: a directory, or any fsspec URL the workers can reach, "
                        "e.g. s3://bucket/zoo (pip install 'zoo-exporter[remote]') "
                        "(default artifacts/matrix)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--jobs", "-j", type=int,
                       help="local worker processes (default: the usable cores)")
    where.add_argument("--ray", metavar="auto|ADDRESS",
                       help="run the jobs as Ray tasks: auto (this machine's cluster, else a local "
                            "one) or a cluster address such as ray://head:10001 (default: local "
                            "worker processes)")
    p.add_argument("--reduced", action="store_true",
                   help="every recipe at its reduced test size (default: the plan's 'reduced')")
    p.add_argument("--no-latency", action="store_true",
                   help="compare outputs only, in every job (default: latency is timed)")
    p.add_argument("--samples", type=int, help="parity images per job (default: exporter parity's)")
    p.add_argument("--random", type=int, metavar="N",
                   help="random tensors per job (default: exporter parity's)")
    p.add_argument("--runs", type=int, help="timed runs per batch size (default: exporter parity's)")
    p.add_argument("--warmup", type=int, help="warm-up runs per batch size (default: exporter parity's)")
    p.add_argument("--threads", type=int, help="intra-op threads per job (default: cores / jobs)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr (default: a bar)")
    p.add_argument("--no-fail", action="store_true",
                   help="exit 0 even when a job breaches or fails (default: exit non-zero)")
    p.set_defaults(func=run)


def _parity_overrides(args) -> dict:
    out = {k: getattr(args, k) for k in ("samples", "random", "runs", "warmup", "threads")
           if getattr(args, k) is not None}
    if args.no_latency:
        out["latency"] = False
    return out


def run(args) -> int:
    from ..errors import UsageError
    from ..matrix.plan import load_plan

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    plan = load_plan(args.plan, reduced=True if args.reduced else None,
                     parity=_parity_overrides(args))
    results, paths = execute_plan(plan, args.output, jobs=args.jobs, ray=args.ray,
                                  progress=not args.no_progress,
                                  title=f"Matrix report: {args.plan.name}", label=str(args.plan))
    return finish(results, paths, args.no_fail)


def execute_plan(plan, output: str | Path, *, jobs: int | None, ray: str | None, progress: bool,
                 title: str, label: str, report_dir: Path | None = None, say=print):
    """Run every job of ``plan`` into ``output`` (a directory or an fsspec URL) on local workers
    or Ray; the merged report goes to ``output``'s top (or ``report_dir``). Returns (results,
    report paths). Shared by ``exporter matrix`` and ``--zoo --jobs/--ray``."""
    from ..matrix import storage
    from ..matrix.driver import run_jobs
    from ..matrix.executors import describe, make_executor
    from ..matrix.merge import write_matrix_report
    from ..matrix.plan import job_in_plan_keys, with_threads

    remote = storage.is_url(str(output))
    output = str(output).rstrip("/") if remote else Path(output)
    if remote:
        storage.prepare(output)  # fsspec, the protocol and write access, before any job
    else:  # jobs and the report would land among the images the INT8 jobs read
        from ..validate import check_output_outside_data

        for folder in (output, report_dir):
            if folder is not None:
                check_output_outside_data(Path(folder), plan.quant)
    specs = plan.jobs(output)
    for cell in plan.dropped:
        say(f"not in the matrix: {cell}")
    created = [] if remote else [p for p in [output, *output.parents] if not p.exists()]
    try:
        executor = make_executor(ray, jobs, output, plan.cpus_per_job)
        try:
            executor.check(specs)
        except BaseException:
            executor.close()
            raise
        specs = [with_threads(j, executor.threads) for j in specs]
        say(f"{len(specs)} job(s) from {label} -> {output} ({describe(executor)})")
        results = run_jobs(specs, executor, progress=progress,
                           reword=None if plan.cli else job_in_plan_keys)
    except BaseException:  # Ctrl-C, no Ray: the folders this run made stay only if a job finished
        _remove_empty(created)
        raise
    report = dict(title=title, executor=describe(executor),
                  notes=[f"not in the matrix: {c}" for c in plan.dropped])
    if report_dir is not None:
        paths = write_matrix_report(results, Path(report_dir), **report)
    elif remote:
        paths = _write_remote_report(results, output, report)
    else:
        paths = write_matrix_report(results, output, **report)
    say(result_line(results, paths))
    return results, paths


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders in ``created`` (deepest first) that hold nothing, with the empty
    ``<model>/<precision>`` folders of jobs cut short under the first of them."""
    if not created or not created[0].is_dir():
        return
    for folder in sorted((p for p in created[0].rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    for folder in created:
        if folder.is_dir() and any(folder.iterdir()):
            return
        if folder.is_dir():
            folder.rmdir()


def result_line(results, paths) -> str:
    """'N job(s): a ok, b breach, c failed, d skipped (...); report: PATH'."""
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "breach", "error")}
    skipped = sum(bool(r.get("skipped")) for r in results)
    return (f"{len(results)} job(s): {counts['ok']} ok, {counts['breach']} breach, {counts['error']} "
            f"failed, {skipped} skipped (proved by an earlier run); report: {paths['markdown']}")


def finish(results, paths, no_fail: bool, rerun: str = "rerun the plan") -> int:
    """0 when every job is ok (or ``no_fail``); else the failed jobs' error, with their own fix
    when they share one, or a parity breach."""
    from ..errors import ExporterError, ParityError

    failed = [r for r in results if r["status"] == "error"]
    breached = [r for r in results if r["status"] == "breach"]
    if no_fail or not (failed or breached):
        return 0
    if failed:
        codes = {r.get("exit_code", 1) for r in failed}
        fixes = {r.get("fix") for r in failed}
        own = fixes.pop() if len(fixes) == 1 and None not in fixes else None
        err = ExporterError(f"{len(failed)} job(s) failed: " + "; ".join(
            f"{r['key']}: {r['error']}" for r in failed[:5]) + ("; ..." if len(failed) > 5 else ""),
            fix=(f"{own} (details in {paths['markdown']})" if own else
                 f"details in {paths['markdown']}; {rerun} (proved jobs are skipped)"))
        err.exit_code = codes.pop() if len(codes) == 1 else 1
        raise err
    raise ParityError(f"{len(breached)} job(s) breach their tolerance: "
                      + ", ".join(r["key"] for r in breached),
                      fix=f"details in {paths['markdown']}; rerun one model with "
                          "`exporter parity MODEL --locate`")


def _write_remote_report(results, url: str, report: dict) -> dict:
    """report.md / report.json / plots written locally, then uploaded to the URL's top."""
    from ..scratch import scratch_dir

    from ..matrix import storage
    from ..matrix.merge import write_matrix_report

    with scratch_dir("report") as scratch:
        paths = write_matrix_report(results, Path(scratch), **report)
        storage.upload(Path(scratch), url, last=("report.json",))
    return {name: storage.join(url, Path(path).name) for name, path in paths.items() if path}
