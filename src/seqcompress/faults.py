"""Fault injection for the crash tests: `point(name)` stops the process at a named step of a write when the
environment variable SEQCOMPRESS_KILL_AT names that step: with SIGKILL, as a power cut or `kill -9` would, or
with the signal named after a colon (`checkpoint:saved:TERM`), as a timeout or a closed terminal would.

The names (grep for `faults.point`) mark the steps between which a crash must leave an old or a new state,
never a mix; tests/test_crash.py stops real commands at each of them. Unset, `point` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "SEQCOMPRESS_KILL_AT"


def point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted or not wanted.startswith(name):
        return
    rest = wanted[len(name):]
    if rest == "":
        os.kill(os.getpid(), signal.SIGKILL)
    elif rest.startswith(":"):
        os.kill(os.getpid(), getattr(signal, f"SIG{rest[1:]}"))
