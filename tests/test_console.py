"""Third-party log chatter kept off the user's terminal while the exporter's own lines reach it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import logging, os, sys
    from exporter.console import console, native_log_hidden
    early = logging.getLogger("lib"); early.addHandler(logging.StreamHandler())  # bound before
    with native_log_hidden():
        os.write(2, b"native chatter\\n")
        print("python chatter", file=sys.stderr)
        early.warning("logged chatter")
        late = logging.getLogger("late"); late.addHandler(logging.StreamHandler())  # bound inside
        late.warning("late chatter")
        print("ours 1", file=console(), flush=True)
        with native_log_hidden():
            os.write(2, b"nested chatter\\n")
            print("ours 2", file=console(), flush=True)
    print("ours 3", file=sys.stderr)
    try:
        with native_log_hidden():
            os.write(2, b"said before failing\\n")
            raise ValueError("boom")
    except ValueError as err:
        print("note:", err.__notes__, file=sys.stderr)
    os.write(2, b"native after\\n")
""")


def test_chatter_is_hidden_our_lines_are_not_and_a_failure_keeps_the_hidden_tail():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "ours 1", "ours 2", "ours 3",
        "note: ['log lines hidden during the call:\\nsaid before failing']", "native after"]
    assert proc.stdout == ""
