"""Terminal output shared by the commands: the Rich console, tables, JSON and the training progress bar.

Only this package draws on the terminal; the library reports progress through callbacks.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from seqcompress.cli.text import plain

console = Console(stderr=True)  # progress and diagnostics for people
results = Console()  # a command's result (info, evaluate, demo): stdout, so `seqcompress info m.sqz | grep` works


def print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def key_value_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=plain(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(plain(key), plain(_fmt(value)))
    return table


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class TrainingProgress:
    """A Rich progress bar fed by train()'s callbacks: loss, batch metric, symbols/s and ETA.

    The bar counts steps when the run has a step total, else seconds of a time budget.
    """

    def __init__(self, metric_name: str, total_seconds: float | None = None, quiet: bool = False):
        self.metric_name, self.total_seconds = metric_name, total_seconds
        self.by_time = self.started = False
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        )
        self.task = self.progress.add_task("train", total=None, count="", stats="loading data")

    def __enter__(self) -> "TrainingProgress":
        return self  # the bar appears with the first step, so an early error prints only its own line

    def __exit__(self, *exc) -> None:
        if self.started:
            self.progress.stop()

    def on_step(self, p) -> None:
        if not self.started:
            self.started = True
            self.progress.start()
            self.by_time = p.total_steps is None and self.total_seconds is not None
            total = self.total_seconds if self.by_time else p.total_steps
            self.progress.update(self.task, total=total)
        stats = (f"loss {p.loss:.3f}  {self.metric_name} {p.batch_metric:.3f}  "
                 f"{p.symbols_per_s:,.0f} sym/s  lr {p.lr:.1e}")
        count = f"step {p.step}" + (f"/{p.total_steps}" if p.total_steps else "")
        self.progress.update(self.task, completed=p.elapsed_s if self.by_time else p.step, stats=stats, count=count)

    def on_eval(self, p) -> None:
        if self.progress.disable:
            return
        held = p.held_out or {}
        value = held.get(self.metric_name, float("nan"))
        self.progress.console.print(
            f"  step {p.step} (epoch {p.epoch:.2f}): held-out {self.metric_name} {value:.4f}, loss {held.get('loss', 0):.4f}"
        )
