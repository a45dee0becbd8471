"""`seqcompress info`: describe a model directory."""

from __future__ import annotations

from pathlib import Path

import typer


def info(
    path: Path = typer.Argument(..., help="A model directory."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Show a model's configuration, fingerprint and training summary."""
    from seqcompress.api import describe_model
    from seqcompress.cli.output import console, key_value_table, print_json

    described = describe_model(path)
    if json_out:
        print_json(described)
        return
    rows = [("domain", described["domain"]), ("fingerprint", described["fingerprint"]),
            ("parameters", f"{described['parameters']:,}"),
            ("reduction", f"{described['seq_len']} -> {described['latent_len']}")]
    rows += [(f"config.{k}", v) for k, v in described["config"].items()]
    rows += [(f"training.{k}", v) for k, v in described["training"].items()]
    console.print(key_value_table(f"seqcompress model {path}", rows))


def register(app: typer.Typer) -> None:
    app.command("info")(info)
