"""The KEY=VALUE options several commands share (model options, domain settings)."""

from __future__ import annotations

import json

from seqcompress.errors import InputError


def parse_key_values(items: list[str], flag: str) -> dict:
    """["window=64", "columns=a,b"] -> {"window": 64, "columns": "a,b"}; a value is read as JSON when it
    parses (3, 0.5, true, ["a"]), else kept as text."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
