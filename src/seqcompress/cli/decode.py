"""`seqcompress decode`: a .sqz latent file -> the domain's native file."""

from __future__ import annotations

from pathlib import Path

import typer

from seqcompress.defaults import DEFAULT_BATCH


def decode(
    input_path: Path = typer.Argument(..., metavar="IN.sqz", help="Latent file written by `seqcompress encode` (- reads stdin)."),
    model_dir: Path = typer.Option(..., "--model", "-m", help="The model directory that encoded the file."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write, in the domain's format (- writes stdout)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    batch_size: int = typer.Option(DEFAULT_BATCH, "--batch-size", help="Windows per model batch."),
    force_model: bool = typer.Option(False, "--force-model", help="Decode even if the file names another model."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
) -> None:
    """Rebuild a data file from its latents."""
    from seqcompress.cli.files import check_output, load_model_and_domain, windows_progress
    from seqcompress.cli.output import console, print_json
    from seqcompress.cli.text import plain
    from seqcompress.compress import decode_file
    from seqcompress.errors import InputError
    from seqcompress.format import LatentReader
    from seqcompress.streams import is_stdio

    if is_stdio(output) and json_out:
        raise InputError("--json prints on stdout, where -o - writes the decoded file; choose one")
    check_output(output, force, inputs=[input_path], model_dir=model_dir)
    if not is_stdio(input_path):
        LatentReader(input_path)  # a corrupt file fails here, before the model is loaded
    model, meta, domain = load_model_and_domain(model_dir, device)
    with windows_progress("decoding", quiet=json_out) as progress:
        report = decode_file(model, meta, domain, input_path, output, force_model=force_model,
                             batch_size=batch_size, on_progress=progress, overwrite=force)
    if json_out:
        print_json(report)
        return
    if report.get("note"):
        console.print(f"note: {plain(report['note'])}")
    console.print(f"wrote {plain(report['output'])}: {report['windows']} windows, {report['symbols']:,} symbols "
                  f"(from {plain(report['source'].get('name'))})")


def register(app: typer.Typer) -> None:
    app.command("decode")(decode)
