"""`seqcompress plot`: draw the training curve of a run logged with `fit --log-dir`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def plot(
    log_dir: Path = typer.Argument(..., help="The folder `fit --log-dir` wrote (it holds scalars.csv)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG to write (default LOG_DIR/training.png)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Metric of the right panel (default: the run's)."),
) -> None:
    """Draw loss and metric (training batches and held-out) against the step, as a PNG; prints its path."""
    from seqcompress.cli.output import results
    from seqcompress.logs import plot as draw

    png = draw(log_dir, output or log_dir / "training.png", metric)
    results.print(str(png), markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)
