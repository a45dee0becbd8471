"""`seqcompress encode`: a data file -> a .sqz latent file, with an honest size report."""

from __future__ import annotations

from pathlib import Path

import typer

from seqcompress.defaults import CHUNK_WINDOWS, DEFAULT_BATCH


def encode(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="Data file to encode (- reads stdin)."),
    model_dir: Path = typer.Option(..., "--model", "-m", help="Model directory written by `seqcompress fit`."),
    output: Path = typer.Option(..., "--output", "-o", help="Latent file to write (.sqz; - writes stdout)."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored latent type: float32, float16, bfloat16 or int8."),
    codec: str = typer.Option("zlib", "--codec", help="Payload codec: zlib or none."),
    batch_size: int = typer.Option(DEFAULT_BATCH, "--batch-size", help="Windows per model batch."),
    chunk_windows: int = typer.Option(CHUNK_WINDOWS, "--chunk-windows", help="Windows per stored chunk (and int8 scale)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    domain_option: list[str] = typer.Option([], "--domain-option", "-D", metavar="KEY=VALUE",
                                            help="An encode setting of the model's domain (e.g. -D qualities=drop); "
                                                 "`seqcompress domains` lists them."),
    compare: bool = typer.Option(False, "--compare/--no-compare", help="Also compress the input with gzip -9, bzip2 -9 "
                                 "and xz -9 (streamed) and show their sizes; this can take longer than the encode."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON object on stdout."),
) -> None:
    """Encode a data file into latents stored in a .sqz file."""
    from seqcompress.cli.files import check_output, encode_domain, load_model_and_domain, windows_progress
    from seqcompress.cli.options import split_key_values
    from seqcompress.cli.output import console, key_value_table, print_json
    from seqcompress.compress import classical_sizes, encode_file
    from seqcompress.errors import InputError
    from seqcompress.streams import is_stdio

    if is_stdio(output) and json_out:
        raise InputError("--json prints on stdout, where -o - writes the latent file; choose one")
    if is_stdio(input_path) and compare:
        raise InputError("--compare reads the input a second time; it needs a file, not stdin")
    check_output(output, force, inputs=[input_path], model_dir=model_dir)
    model, meta, domain = load_model_and_domain(model_dir, device)
    domain = encode_domain(domain, split_key_values(domain_option, "--domain-option"))
    with windows_progress("encoding", quiet=json_out) as progress:
        report = encode_file(model, meta, domain, input_path, output, dtype=dtype, codec=codec,
                             batch_size=batch_size, chunk_windows=chunk_windows, on_progress=progress, overwrite=force)
    if compare:
        report["classical_bytes"] = classical_sizes(input_path)
        report["classical_bits_per_symbol"] = {k: 8 * v / report["symbols"] for k, v in report["classical_bytes"].items()}
    if json_out:
        print_json(report)
        return
    rows = [("input", f"{report['input']} ({report['input_bytes']:,} bytes, {report['symbols']:,} symbols)"),
            ("output", f"{report['output']} ({report['sqz_bytes']:,} bytes)"),
            ("windows -> latents", f"{report['windows']} windows, {report['symbols']:,} -> {report['latents']:,} vectors"),
            ("latent floats per symbol", report["latent_floats_per_symbol"]),
            ("stored as", f"{report['dtype']}, {report['codec']}"),
            ("sqz bits per symbol", report["sqz_bits_per_symbol"]),
            ("of which side information", f"{report['side_bytes']:,} bytes, "
                                          f"{8 * report['side_bytes'] / report['symbols']:.3f} bits/symbol")]
    for name, bits in report["reference_bits_per_symbol"].items():
        rows.append((name, f"{bits:.3f} bits/symbol"))
    for name, size in report.get("classical_bytes", {}).items():
        rows.append((f"{name} (lossless)", f"{size:,} bytes, {report['classical_bits_per_symbol'][name]:.3f} bits/symbol"))
    console.print(key_value_table("seqcompress encode", rows))  # stderr: the result is the .sqz file


def register(app: typer.Typer) -> None:
    app.command("encode")(encode)
