"""Training logs: the scalars of a run (loss, metric, learning rate, symbols/s, held-out metrics) in a folder.

`TrainingLog(folder)` gives the `on_step` and `on_eval` callbacks of `train`. It always writes `scalars.csv`
(one row per scalar: step, tag, value, elapsed_s; the long format TensorBoard exports), and TensorBoard event
files beside it when the `tensorboard` package is installed (`pip install 'seqcompress[tensorboard]'`), so
`tensorboard --logdir FOLDER` shows the run. A resumed run continues the same files: rows past the step it
resumes from (written after its last checkpoint) are dropped first. `plot(folder, png)` draws the training
curve (matplotlib, the `plot` extra).

Tags: train/loss, train/<metric> (of the step's batch), train/lr, train/symbols_per_s, held_out/<name> for
every held-out value (the metric, its companions, the loss).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from seqcompress.atomic import atomic_open, atomic_write_text
from seqcompress.errors import InputError

SCALARS = "scalars.csv"
COLUMNS = ["step", "tag", "value", "elapsed_s"]


class TrainingLog:
    """Callbacks that log a run's scalars in `folder` (CSV, and TensorBoard when installed)."""

    def __init__(self, folder: str | os.PathLike, metric: str) -> None:
        self.folder, self.metric = Path(folder), metric
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"the log folder {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._csv = None
        self._board = None
        self._started = False

    def _start(self, step: int) -> None:
        """Open the files at the first step logged: keep the rows before it (a resumed run's history)."""
        self._started = True
        path = self.folder / SCALARS
        if path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if _int(r.get("step")) is not None and int(r["step"]) < step]
            atomic_write_text(path, _as_csv(rows))
        else:
            atomic_write_text(path, _as_csv([]))
        self._csv = open(path, "a", newline="", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra; the CSV has everything
            return
        self._board = SummaryWriter(str(self.folder), purge_step=step)

    def _write(self, step: int, elapsed: float, values: dict[str, float]) -> None:
        if not self._started:
            self._start(step)
        writer = csv.writer(self._csv)
        for tag, value in values.items():
            writer.writerow([step, tag, repr(float(value)), f"{elapsed:.3f}"])
            if self._board is not None and math.isfinite(value):
                self._board.add_scalar(tag, value, step)
        self._csv.flush()

    def on_step(self, progress) -> None:
        self._write(progress.step, progress.elapsed_s, {
            "train/loss": progress.loss, f"train/{self.metric}": progress.batch_metric, "train/lr": progress.lr,
            "train/symbols_per_s": progress.symbols_per_s})

    def on_eval(self, progress) -> None:
        self._write(progress.step, progress.elapsed_s,
                    {f"held_out/{name}": value for name, value in (progress.held_out or {}).items()})
        if self._board is not None:
            self._board.flush()

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._board is not None:
            self._board.close()

    def __enter__(self) -> "TrainingLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _int(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _as_csv(rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows([r.get(c, "") for c in COLUMNS] for r in rows)
    return text.getvalue()


def read_scalars(folder: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from a log folder's scalars.csv."""
    path = Path(folder) / SCALARS
    if not path.is_file():
        raise InputError(f"no training log in {folder}: {SCALARS} is missing (fit with --log-dir {folder})")
    series: dict[str, list[tuple[int, float]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                step = _int(row.get("step"))
                try:
                    value = float(row.get("value") or "nan")
                except ValueError:
                    value = math.nan
                if step is not None and row.get("tag"):
                    series.setdefault(row["tag"], []).append((step, value))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if not series:
        raise InputError(f"{path} holds no scalars yet")
    return series


def plot(folder: str | os.PathLike, png: str | os.PathLike, metric: str | None = None) -> Path:
    """Draw the training curve of a log folder into `png`: loss (train and held out) and the metric (batch and
    held out) against the step. Returns the path written."""
    series = read_scalars(folder)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install 'seqcompress[plot]'") from None
    if metric is None:
        names = [t.split("/", 1)[1] for t in series if t.startswith("train/") and t not in (
            "train/loss", "train/lr", "train/symbols_per_s")]
        metric = names[0] if names else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for tag, style in (("train/loss", "-"), ("held_out/loss", "o-")):
        if tag in series:
            left.plot(*zip(*series[tag]), style, label=tag, markersize=3)
    left.set(xlabel="step", ylabel="loss per symbol", title="loss")
    if metric:
        for tag, style in ((f"train/{metric}", "-"), (f"held_out/{metric}", "o-")):
            if tag in series:
                right.plot(*zip(*series[tag]), style, label=tag, markersize=3)
        right.set(xlabel="step", ylabel=metric, title=metric)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    png = Path(png)
    try:
        with atomic_open(png, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return png
