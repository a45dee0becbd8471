"""The KEY=VALUE options several commands share (model options, domain settings)."""

from __future__ import annotations

import json

import typer

from seqcompress.errors import InputError
from seqcompress.options import TrainOptions

# The options `fit` and `probe` share, defined once, with the defaults of the dataclasses that take them.
LR = typer.Option(TrainOptions.lr, "--lr", help=f"Initial learning rate (paper: 1e-3).")
LR_END = typer.Option(TrainOptions.lr_end, "--lr-end", help="Learning rate after the decay (paper: 1e-4).")
DECAY_EPOCHS = typer.Option(None, "--decay-epochs", help="Epochs of linear LR decay; default: the domain's "
                            "(paper: 5; dna: 50, measured in docs/dna.md).")
TRAIN_BATCH = typer.Option(TrainOptions.batch_size, "--batch-size", help="Windows per optimizer step.")
D_MODEL = typer.Option(256, "--d-model", help="Model width.")
HEADS = typer.Option(4, "--heads", help="Attention heads.")
LAYERS = typer.Option(2, "--layers", help="Blocks in the encoder and in the decoder.")
LATENT_DIM = typer.Option(None, "--latent-dim", help="Width of a stored latent (default d-model).")
DEVICE = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda.")

# One vocabulary for domain settings in every command: -D KEY=VALUE, parsed by the domain's Settings class.
DOMAIN_OPTION = typer.Option([], "--domain-option", "-D", metavar="KEY=VALUE",
                             help="A domain setting, repeatable (e.g. -D k=3); `seqcompress domains` lists each "
                                  "domain's settings and defaults.")
TOKENIZER = typer.Option(None, "--tokenizer", help="Text: bert (the paper's WordPiece, lower-cased), bpe (a "
                         "byte-level BPE learned from the training files; size: -D bpe_vocab=N) or bytes; bpe and "
                         "bytes give the input back byte for byte when every token is right (docs/text.md). "
                         "Short for -D tokenizer=NAME.")


def domain_options(items: list[str], domain: str, tokenizer: str | None) -> dict:
    """The -D settings, with --tokenizer added (text only)."""
    from seqcompress.errors import InputError

    options = split_key_values(items, "--domain-option")
    if tokenizer is not None:
        if domain != "text":
            raise InputError(f"--tokenizer chooses the text domain's tokens; domain {domain!r} has none")
        if options.get("tokenizer", tokenizer) != tokenizer:
            raise InputError(f"--tokenizer {tokenizer} and -D tokenizer={options['tokenizer']} disagree")
        options["tokenizer"] = tokenizer
    return options


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


def split_key_values(items: list[str], flag: str) -> dict[str, str]:
    """["k=3", "columns=a,b"] -> {"k": "3", "columns": "a,b"}, values kept as text for the parser that owns them."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def ratio_list(text: str, flag: str) -> list[float]:
    """"0.5, 1/4" -> [0.5, 0.25]: comma-separated decimals or fractions (--ratios, --stages)."""
    from fractions import Fraction

    try:
        values = [float(Fraction(v.strip())) for v in text.split(",") if v.strip()]
    except (ValueError, ZeroDivisionError):
        raise InputError(f"{flag} takes numbers like 0.5,0.25 or 1/2,1/4, got {text!r}") from None
    if not values:
        raise InputError(f"{flag} is empty")
    return values
