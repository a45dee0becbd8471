"""What encode and decode share: output-file checks, model loading, a progress bar over windows."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from seqcompress.errors import InputError


def check_output(output: Path, force: bool, inputs: list[Path], model_dir: Path | None = None) -> None:
    """Refuse to overwrite an existing file without --force, and never write over an input of the command
    (the data, or a file of the model directory, even with --force). `-` is stdout. The no-overwrite check
    is repeated when the output is put in place (seqcompress.atomic), where a race cannot slip past it."""
    if str(output) == "-":
        return
    if output.is_dir():
        raise InputError(f"{output} is a directory; give a file name for the output")
    if model_dir is not None and model_dir.is_dir():
        inputs = [*inputs, *(p for p in model_dir.rglob("*") if p.is_file())]
    for source in inputs:
        if str(source) != "-" and source.exists() and output.exists() and os.path.samefile(source, output):
            raise InputError(f"{output} is an input of this command; choose another output file")
    if output.exists() and not force:
        raise InputError(f"{output} already exists; use --force to overwrite it")
    if not output.parent.exists():
        raise InputError(f"{output.parent}: no such directory for the output")


def load_model_and_domain(model_dir: Path, device: str):
    from seqcompress.api import load

    return load(model_dir, device)


def encode_domain(domain, options: dict[str, str]):
    """The model's domain with encode settings from -D (only settings that leave the model unchanged)."""
    allowed = domain.settings_class.encode_names()
    changes = domain.settings_class.parse(options, allowed=allowed)
    return domain.with_settings(**changes) if changes else domain


@contextlib.contextmanager
def windows_progress(label: str, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A Rich bar over windows; yields the `on_progress(done, total)` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from seqcompress.cli.output import console

    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=quiet,
                        transient=True)
    task = progress.add_task(label, total=None)
    started = False

    def update(done: int, total: int) -> None:
        nonlocal started
        if not started:
            progress.start()
            started = True
        progress.update(task, completed=done, total=total)  # total None while a stream is still being read

    try:
        yield update
    finally:
        if started:
            progress.stop()
