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


DEFAULT_DOMAIN = "text"

# What `seqcompress demo` trains on each bundled sample: (domain, seq_len, ratio, share of the time budget).
DEMO_RUNS = [("text", 128, 0.5, 0.5), ("dna", 128, 0.5, 0.25), ("timeseries", 4, 0.5, 0.1), ("audio", 32, 0.5, 0.15)]


def domain_class(name: str) -> type[Domain]:
    if name not in REGISTRY:
        raise InputError(f"unknown domain {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    module, cls_name = REGISTRY[name].split(":")
    return getattr(import_module(module), cls_name)


def make_domain(name: str, options: dict[str, str] | None = None) -> Domain:
    """The domain `name` with user settings given as text (`-D key=value` on the command line)."""
    cls = domain_class(name)
    return cls(cls.settings_class(**cls.settings_class.parse(options or {})))


def get_domain(name: str, state: dict | None = None) -> Domain:
    """The domain adapter called `name`, restored from its saved state when given."""
    cls = domain_class(name)
    return cls.from_state(state) if state else cls()
