"""`seqcompress evaluate`: a saved model's reconstruction metric on data files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate(
    data: Optional[list[Path]] = typer.Argument(None, help="Data files; the domain's bundled sample when omitted."),
    model_dir: Path = typer.Option(..., "--model", "-m", help="Model directory written by `seqcompress fit`."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per batch (as in `encode`)."),
    dtype: str = typer.Option("float32", "--dtype", help="Evaluate latents stored as float32, float16, bfloat16 or int8."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Encode and decode data with a model and report the domain's reconstruction metric."""
    from seqcompress.api import evaluate_files
    from seqcompress.cli.output import console, key_value_table, print_json

    from seqcompress.cli.files import windows_progress

    with windows_progress("evaluating", quiet=json_out) as progress:
        result = evaluate_files(model_dir, data, batch_size=batch_size, device=device, dtype=dtype, on_progress=progress)
    if json_out:
        print_json(result)
        return
    rows = [(name, value) for name, value in result["metrics"].items()]
    rows += [("latents stored as", result["dtype"]), ("reduction", f"{result['seq_len']} -> {result['latent_len']} (ratio {result['ratio']:.4g})"),
             ("sequences / symbols", f"{result['n_sequences']} / {result['n_symbols']}")]
    console.print(key_value_table(f"seqcompress evaluate: {result['domain']}", rows))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
