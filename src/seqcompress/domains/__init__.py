"""Domain adapters, registered by name. The CLI and library look domains up here.

Adapters are listed explicitly (not discovered by scanning the package), so an editable
install and a wheel see the same set.
"""

from __future__ import annotations

from importlib import import_module

from seqcompress.domain import Domain
from seqcompress.errors import InputError

# name -> "module:Class", imported on first use so that `seqcompress --help` stays fast.
REGISTRY: dict[str, str] = {
    "text": "seqcompress.domains.text:TextDomain",
    "dna": "seqcompress.domains.dna:DnaDomain",
    "timeseries": "seqcompress.domains.timeseries:TimeSeriesDomain",
    "audio": "seqcompress.domains.audio:AudioDomain",
}


def get_domain(name: str, state: dict | None = None) -> Domain:
    """The domain adapter called `name`, restored from its saved state when given."""
    if name not in REGISTRY:
        raise InputError(f"unknown domain {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    module, cls_name = REGISTRY[name].split(":")
    cls = getattr(import_module(module), cls_name)
    return cls.from_state(state) if state else cls()
