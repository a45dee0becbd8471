"""Fault injection for the crash tests: `point(name)` kills the process at a named step of a multi-file write
when the environment variable SEQCOMPRESS_KILL_AT names that step, as a power cut or `kill -9` would.

The names (grep for `faults.point`) mark the steps between which a crash must leave an old or a new state,
never a mix; tests/test_crash.py kills a real `seqcompress fit` at each of them. Unset, `point` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "SEQCOMPRESS_KILL_AT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
