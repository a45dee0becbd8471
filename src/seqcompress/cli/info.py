"""`seqcompress info`: describe a model directory."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def info(
    path: Path = typer.Argument(..., help="A model directory or a .sqz latent file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Show a model's configuration and training summary, or a latent file's header."""
    from seqcompress.api import describe_model
    from seqcompress.cli.output import key_value_table, print_json, results
    from seqcompress.format import LatentReader, is_latent_file

    if path.is_file() and is_latent_file(path):
        reader = LatentReader(path)
        described = {**reader.header, "windows": reader.windows, "symbols": reader.symbols,
                     "latent_rows": reader.latent_rows, "source": reader.source}
        if json_out:
            print_json(described)
            return
        rows = [(key, value) for key, value in _flatten(described) if not key.startswith(("side.", "windows."))]
        if reader.version == 1:
            rows.append(("side", f"{len(reader.side)} field(s), {len(json.dumps(reader.side)):,} bytes of JSON"))
        results.print(key_value_table(f"seqcompress latent file {path}", rows))
        return
    described = describe_model(path)
    if json_out:
        print_json(described)
        return
    rows = [("domain", described["domain"]), ("fingerprint", described["fingerprint"]),
            ("parameters", f"{described['parameters']:,}"),
            ("reduction", f"{described['seq_len']} -> {described['latent_len']}")]
    rows += [(f"config.{k}", v) for k, v in described["config"].items()]
    rows += [(f"training.{k}", v) for k, v in described["training"].items()]
    results.print(key_value_table(f"seqcompress model {path}", rows))


def _flatten(obj: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            text = str(value)
            rows.append((f"{prefix}{key}", text if len(text) <= 80 else text[:77] + "..."))
    return rows


def register(app: typer.Typer) -> None:
    app.command("info")(info)
