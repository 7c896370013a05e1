"""The ``exporter`` command: list, export, parity, build, lint, matrix.

One error model: every failure ends with exactly one ``error: ...`` line and one ``fix: ...`` line
on stderr and the exit code of its class (``errors.py``); a traceback only with ``--debug``.
SIGINT/SIGTERM unwind through the staging clean-up and exit 130/143.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import threading
import pkgutil
import signal
import sys
import traceback

from . import __version__
from .errors import (EXIT_ENVIRONMENT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED,
                     ExporterError, Interrupted, UsageError)

ORDER = ("list", "export", "parity", "build", "lint", "matrix")
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose pipe closed
DEBUG_HINT = "rerun with --debug for the traceback and report it as a bug"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UsageError` (one line + fix, exit 2), not ``sys.exit``."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise UsageError(f"{self.prog}: {message}", fix=f"see `{self.prog} --help`")


def command_names() -> list[str]:
    """Every module of exporter.commands is a subcommand; the usual ones come first."""
    from . import commands

    found = {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="exporter",
        description="Export the classic CNN zoo for deployment and prove parity with eager PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"zoo-exporter {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a failure (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_names():
        module = importlib.import_module(f"exporter.commands.{name}")
        module.add_parser(sub)
    for command in sub.choices.values():  # --debug after the command name works as well
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)
    return parser


def _say(message: str, fix: str) -> None:
    """The one error line and the one fix line (multi-line texts are joined)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    print("fix: " + " ".join(str(fix).split()), file=sys.stderr)


def _os_error(err: OSError) -> tuple[str, str]:
    """Message and fix of an OS-level failure nobody translated earlier."""
    where = f" ({err.filename})" if err.filename else ""
    what = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"no space left on the device{where}",
                "free space on that filesystem or pass --output on another one")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}{where}", "use a writable location (--output) or fix the permissions"
    return f"{what}{where}", "check the path; " + DEBUG_HINT


OOM_TEXTS = ("can't allocate memory", "failed to allocate memory", "std::bad_alloc", "out of memory",
             "cannot allocate memory")


def _out_of_memory(err: BaseException) -> tuple[str, str] | None:
    """Message and fix when ``err`` is an allocation that failed (torch, onnxruntime, a converter),
    which is this machine's limit at these options, not a bug; None otherwise."""
    text = str(err)
    if not isinstance(err, MemoryError) and not any(t in text.lower() for t in OOM_TEXTS):
        return None
    import re

    asked = re.search(r"allocate (\d+) bytes", text)
    size = f" of {int(asked.group(1)) / 2**30:.2f} GiB" if asked else ""
    return (f"out of memory: an allocation{size} failed ({type(err).__name__}){_memory_limits()}",
            "lower --input-size or --batch, close other programs, or run on a machine with more "
            "memory (or a higher limit); nothing half-written was left behind")


def _memory_limits() -> str:
    """'; X GiB is available now[, this process may use at most Y GiB (ulimit -v)]'."""
    said = ""
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        said = f"; {int(info['MemAvailable'].split()[0]) / 2**20:.1f} GiB is available now"
    except (OSError, KeyError, ValueError):
        pass
    try:
        import resource
    except ImportError:  # not on Windows
        return said
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        said += f"; this process may use at most {limit / 2**30:.1f} GiB of address space (ulimit -v)"
    return said


def _on_signal(signum, _frame):
    signal.signal(signum, signal.SIG_IGN)  # one clean-up; a second signal must not cut it short
    raise Interrupted(signum, EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED)


def _fail(args, argv: list[str], message: str, fix: str, error_type: str, code: int) -> int:
    """Every failure: with --json one document on stdout (unless the command printed its own),
    then one ``error:`` and one ``fix:`` line on stderr; returns the exit code."""
    from .cli_options import json_printed

    wants_json = getattr(args, "json", False) if args is not None else "--json" in argv
    if wants_json and not json_printed():  # a parse error, an interrupt or an OS error too
        import json

        try:
            print(json.dumps({"ok": False, "error": message, "fix": fix, "error_type": error_type,
                              "exit_code": code}), flush=True)
        except OSError:
            pass  # stdout itself is gone (a closed pipe): stderr still says it
    _say(message, fix)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: typed errors become one ``error:`` line, one ``fix:`` line and an exit code."""
    console_entry = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for sig in handlers:
            signal.signal(sig, _on_signal)
    try:
        code = _run(argv)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if console_entry and handlers:  # the interpreter's teardown (~2 s with torch) follows: a
        for sig in handlers:  # signal then ends it with the command's own result, not a silent 130
            signal.signal(sig, lambda *_: _exit_now(code))
    return code


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _run(argv: list[str]) -> int:
    debug = "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]
    if debug:  # native libraries' warnings pass through (backends.base.native_stderr_captured)
        os.environ["ZOO_EXPORTER_DEBUG"] = "1"
    args = None
    try:
        args = build_parser().parse_args(argv)
        from .scratch import sweep_stale_scratch

        sweep_stale_scratch()  # scratch folders of runs killed with SIGKILL
        return int(args.func(args) or 0)
    except ExporterError as err:
        if debug:
            traceback.print_exc()
        return _fail(args, argv, err.message, err.fix or DEBUG_HINT, type(err).__name__, err.exit_code)
    except (Interrupted, KeyboardInterrupt) as err:
        code = getattr(err, "exit_code", EXIT_INTERRUPTED)
        name = "SIGTERM" if code == EXIT_TERMINATED else "SIGINT"
        return _fail(args, argv, f"interrupted by {name}; nothing half-written was left behind",
                     "rerun the command (a stale staging directory of a killed run is swept on the next "
                     "run)", "Interrupted", code)
    except BrokenPipeError:  # stdout's reader went away (`| head`): stop quietly, as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except OSError as err:
        if debug:
            traceback.print_exc()
        message, fix = _os_error(err)
        return _fail(args, argv, message, fix, type(err).__name__, EXIT_ENVIRONMENT)
    except SystemExit as err:  # --help / --version exit 0 through argparse
        if isinstance(err.__context__, BrokenPipeError):  # rich's Console.on_broken_pipe: SystemExit(1)
            return EXIT_BROKEN_PIPE
        return int(err.code or 0) if isinstance(err.code, int) or err.code is None else 2
    except Exception as err:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if debug:
            traceback.print_exc()
        memory = _out_of_memory(err)
        if memory:
            return _fail(args, argv, *memory, type(err).__name__, EXIT_ENVIRONMENT)
        return _fail(args, argv, f"internal error: {type(err).__name__}: {err}", DEBUG_HINT,
                     type(err).__name__, EXIT_INTERNAL)
