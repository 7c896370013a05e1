"""The ``exporter`` command: list, export, parity, build, lint, matrix."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from .errors import ExporterError

ORDER = ("list", "export", "parity", "build", "lint", "matrix")


def command_names() -> list[str]:
    """Every module of exporter.commands is a subcommand; the usual ones come first."""
    from . import commands

    found = {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exporter",
        description="Export the classic CNN zoo for deployment and prove parity with eager PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"zoo-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_names():
        module = importlib.import_module(f"exporter.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; typed errors become one line plus a fix and a non-zero exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ExporterError as err:
        from .cli_options import json_printed

        if getattr(args, "json", False) and not json_printed():  # --json: one document on stdout
            import json

            print(json.dumps({"ok": False, "error": err.message, "fix": err.fix,
                              "error_type": type(err).__name__, "exit_code": err.exit_code}))
        print(f"error: {err.message}", file=sys.stderr)
        if err.fix:
            print(f"  fix: {err.fix}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
