"""The ``exporter`` command: list, export, parity, build, lint."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import ExporterError

COMMANDS = ("list", "export", "parity", "build", "lint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exporter",
        description="Export the classic CNN zoo for deployment and prove parity with eager PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"zoo-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"exporter.commands.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; typed errors become one line plus a fix and a non-zero exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ExporterError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.fix:
            print(f"  fix: {err.fix}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
