"""The user's terminal (stderr) while third-party log chatter is hidden.

Runtimes and converters log on stderr as they load and convert: native lines on file descriptor 2
(absl, XNNPACK), and Python-level ones through ``sys.stderr`` (ExecuTorch's pybindings, torch's
logging). :func:`native_log_hidden` sends both to a scratch file for the length of a call; the
exporter's own progress lines go through :func:`console`, which still reaches the terminal.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from typing import Iterator, TextIO

_terminal: TextIO | None = None  # the real stderr while a hidden block runs


def console() -> TextIO:
    """Where the exporter's own stderr lines go: the terminal, also inside a hidden block."""
    return _terminal or sys.stderr


@contextlib.contextmanager
def native_log_hidden() -> Iterator[None]:
    """Third-party log lines kept off the terminal for the block (nested blocks: the outer one
    hides). If the block fails, the hidden lines' tail is a note on the exception (``--debug``)."""
    global _terminal
    if _terminal is not None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, os.fdopen(os.dup(saved), "w", buffering=1) as terminal:
        text_sink = io.TextIOWrapper(os.fdopen(os.dup(sink.fileno()), "wb"), line_buffering=True)
        try:
            os.dup2(sink.fileno(), 2)
            _terminal = terminal
            with contextlib.redirect_stderr(text_sink):
                yield
        except BaseException as err:
            text_sink.flush()
            sink.seek(0)
            hidden = sink.read()[-4000:].decode(errors="replace").strip()
            if hidden:
                err.add_note(f"log lines hidden during the call:\n{hidden}")
            raise
        finally:
            _terminal = None
            text_sink.close()
            os.dup2(saved, 2)
            os.close(saved)
