"""A CLI that teaches: every option of every command says its default, every command has examples,
and building the parser imports neither torch nor onnx (speed: benchmarks/cli_startup.py)."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from exporter.cli import build_parser, command_names


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", command_names())
def test_every_option_shows_its_default_and_the_command_has_examples(command):
    parser = _subparsers()[command]
    missing = [a.option_strings[0] for a in parser._actions
               if a.option_strings and a.dest != "help" and a.help != argparse.SUPPRESS
               and "default" not in (a.help or "").lower()]
    assert missing == [], f"exporter {command}: options without a default in their help: {missing}"
    assert parser.epilog and "examples:" in parser.epilog and f"exporter {command}" in parser.epilog


def test_help_and_version_import_no_torch_or_onnx():
    code = ("import sys; from exporter.cli import main\n"
            "for argv in (['--version'], ['--help'], ['export', '--help'], ['parity', '--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'timm') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_help_states_its_exit_codes():
    """The README: every `exporter COMMAND --help` lists its exit codes."""
    from exporter.cli import command_names

    for name in command_names():
        proc = subprocess.run([sys.executable, "-m", "exporter", name, "--help"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "exit codes:" in proc.stdout, name


def test_no_color_drops_every_ansi_style(monkeypatch):
    """NO_COLOR on a terminal: rich kept bold/dim/italic escapes; none are written now."""
    import io

    from rich.console import Console

    from exporter.report import plain_if_asked

    for env, styled in (("1", False), (None, True)):
        if env is None:
            monkeypatch.delenv("NO_COLOR", raising=False)
        else:
            monkeypatch.setenv("NO_COLOR", env)
        buffer = io.StringIO()
        Console(file=buffer, force_terminal=True, **plain_if_asked()).print("[bold]a[/bold] [dim]b[/dim]")
        text = buffer.getvalue()
        assert ("\x1b[" in text) == styled and "a b" in re.sub(r"\x1b\[[0-9;]*m", "", text)
