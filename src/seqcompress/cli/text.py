"""Text from outside (file names, names read from a .sqz header, error messages that quote them) made safe
to show: control characters are written as escapes, so no name can move the cursor, clear the screen or
forge a line; Rich markup is escaped where text goes through Rich."""

from __future__ import annotations

import re

from rich.markup import escape

# C0 and C1 controls, line and paragraph separators, and the bidirectional overrides that reorder what follows
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """`text` with every control character (newline and tab included) shown as a Python escape."""
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], str(text))


def plain(text: object) -> str:
    """`text` for a Rich console: control characters escaped and markup (`[bold]`, `[/`) shown as written."""
    return escape(printable(text))
