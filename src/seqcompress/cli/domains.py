"""`seqcompress domains`: each registered domain and its settings (the keys of -D KEY=VALUE)."""

from __future__ import annotations

import typer


def domains(json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout.")) -> None:
    """List the data domains and the settings each takes with -D KEY=VALUE (fit, encode, evaluate, probe)."""
    from rich.markup import escape
    from rich.table import Table

    from seqcompress.cli.output import print_json, results
    from seqcompress.domains import REGISTRY, domain_class

    listing = {}
    for name in sorted(REGISTRY):
        cls = domain_class(name)
        encode = set(cls.settings_class.encode_names())
        listing[name] = {"default_seq_len": cls.default_seq_len, "settings": [
            {"key": key, "default": default, "help": text, "when": "encode" if key in encode else "fit"}
            for key, default, text in cls.settings_class.help()]}
    if json_out:
        print_json(listing)
        return
    table = Table(title="seqcompress domains: settings for -D KEY=VALUE", title_justify="left")
    for column in ("domain", "key", "default", "set at", "meaning"):
        table.add_column(column)
    for name, entry in listing.items():
        rows = entry["settings"] or [{"key": "-", "default": "", "when": "", "help": "no settings"}]
        for i, row in enumerate(rows):
            table.add_row(name if i == 0 else "", row["key"], escape(row["default"]), row["when"], escape(row["help"]))
    results.print(table)


def register(app: typer.Typer) -> None:
    app.command("domains")(domains)
