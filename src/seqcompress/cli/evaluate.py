"""`seqcompress evaluate`: a saved model's reconstruction metric on data files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from seqcompress.defaults import CHUNK_WINDOWS, DEFAULT_BATCH, STORED_DTYPE


def evaluate(
    data: Optional[list[Path]] = typer.Argument(None, help="Data files; the domain's bundled sample when omitted."),
    model_dir: Path = typer.Option(..., "--model", "-m", help="Model directory written by `seqcompress fit`."),
    batch_size: int = typer.Option(DEFAULT_BATCH, "--batch-size", help="Windows per model batch (as in `encode`)."),
    chunk_windows: int = typer.Option(CHUNK_WINDOWS, "--chunk-windows", help="Windows per stored chunk (as in `encode`)."),
    dtype: str = typer.Option(STORED_DTYPE, "--dtype", help="Evaluate latents stored as float32, float16, bfloat16 or "
                              "int8 (default: what `encode` stores)."),
    domain_option: list[str] = typer.Option([], "--domain-option", "-D", metavar="KEY=VALUE",
                                            help="An encode setting of the model's domain, as in `encode`."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Encode and decode data with a model and report the domain's reconstruction metric."""
    from seqcompress.api import evaluate_files
    from seqcompress.cli.options import split_key_values
    from seqcompress.cli.output import key_value_table, print_json, results

    from seqcompress.cli.files import windows_progress

    with windows_progress("evaluating", quiet=json_out) as progress:
        result = evaluate_files(model_dir, data, batch_size=batch_size, chunk_windows=chunk_windows, device=device,
                                dtype=dtype, options=split_key_values(domain_option, "--domain-option"),
                                on_progress=progress)
    if json_out:
        print_json(result)
        return
    rows = [(name, value) for name, value in result["metrics"].items()]
    rows += [("latents stored as", result["dtype"]), ("reduction", f"{result['seq_len']} -> {result['latent_len']} (ratio {result['ratio']:.4g})"),
             ("sequences / symbols", f"{result['n_sequences']} / {result['n_symbols']}")]
    results.print(key_value_table(f"seqcompress evaluate: {result['domain']}", rows))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
