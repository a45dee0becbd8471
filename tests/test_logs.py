"""Training logs: scalars.csv always, TensorBoard event files when tensorboard is installed, a resumed run's log
continued without the steps it repeats, and `seqcompress plot` drawing the curve."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from seqcompress.logs import TrainingLog, plot, read_scalars
from seqcompress.model import ModelConfig, build_model
from seqcompress.options import TrainOptions
from seqcompress.domain import TokenObjective
from seqcompress.train import train


def _windows(count=24, n=16, vocab=8):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, vocab, (n,), generator=g) for _ in range(count)]


def _model():
    config = ModelConfig(n_max=16, ratio=0.5, d_model=16, heads=2, layers=1, ffn_dim=32, latent_dim=16, vocab_size=8)
    return build_model(config, seed=0)


def _rows(folder):
    with open(folder / "scalars.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_logs_every_step_and_every_evaluation(tmp_path):
    opts = TrainOptions(max_steps=6, batch_size=4, eval_every=3, device="cpu")
    with TrainingLog(tmp_path / "log", "token_accuracy") as log:
        result = train(_model(), TokenObjective(), _windows(), opts, on_step=log.on_step, on_eval=log.on_eval)
    series = read_scalars(tmp_path / "log")
    assert [s for s, _ in series["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert {"train/token_accuracy", "train/lr", "train/symbols_per_s"} <= set(series)
    assert [s for s, _ in series["held_out/token_accuracy"]] == [3, 6]
    assert series["held_out/token_accuracy"][-1][1] == pytest.approx(result.held_out["token_accuracy"])
    assert series["train/lr"][0][1] == pytest.approx(1e-3)
    events = list((tmp_path / "log").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0  # tensorboard is in the dev extra


def test_the_final_figure_is_logged_when_no_evaluation_falls_on_the_last_step(tmp_path):
    opts = TrainOptions(max_steps=5, batch_size=4, eval_every=3, device="cpu")
    with TrainingLog(tmp_path / "log", "token_accuracy") as log:
        result = train(_model(), TokenObjective(), _windows(), opts, on_step=log.on_step, on_eval=log.on_eval)
    held = read_scalars(tmp_path / "log")["held_out/token_accuracy"]
    assert [s for s, _ in held] == [3, 5] and held[-1][1] == pytest.approx(result.held_out["token_accuracy"])


def test_a_resumed_log_drops_the_steps_after_the_checkpoint(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    (folder / "scalars.csv").write_text("step,tag,value,elapsed_s\n1,train/loss,2.0,0.1\n2,train/loss,1.9,0.2\n"
                                        "3,train/loss,1.8,0.3\n")
    with TrainingLog(folder, "token_accuracy") as log:
        log.on_step(type("P", (), {"step": 3, "elapsed_s": 0.35, "loss": 1.7, "batch_metric": 0.5, "lr": 1e-3,
                                   "symbols_per_s": 10.0})())
    rows = [(r["step"], r["tag"], r["value"]) for r in _rows(folder) if r["tag"] == "train/loss"]
    assert rows == [("1", "train/loss", "2.0"), ("2", "train/loss", "1.9"), ("3", "train/loss", "1.7")]


def test_plot_draws_a_png_and_refuses_a_folder_without_a_log(tmp_path):
    opts = TrainOptions(max_steps=4, batch_size=4, eval_every=2, device="cpu")
    with TrainingLog(tmp_path / "log", "token_accuracy") as log:
        train(_model(), TokenObjective(), _windows(), opts, on_step=log.on_step, on_eval=log.on_eval)
    png = plot(tmp_path / "log", tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    done = subprocess.run([sys.executable, "-m", "seqcompress", "plot", str(tmp_path / "log")], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "log" / "training.png")
    bad = subprocess.run([sys.executable, "-m", "seqcompress", "plot", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        f"error: no training log in {tmp_path}: scalars.csv is missing (fit with --log-dir {tmp_path})"]


def test_reporting_every_few_steps_trains_the_same_model(tmp_path):
    """--log-every 3: progress (and the host synchronisation it costs on a GPU) every third step and at the end;
    the weights are those of a run that reports every step."""
    models, steps = [], []
    for every in (1, 3):
        model, seen = _model(), []
        opts = TrainOptions(epochs=None, max_steps=7, batch_size=4, log_every=every, device="cpu")
        train(model, TokenObjective(), _windows(), opts, on_step=lambda p, seen=seen: seen.append(p.step))
        models.append(model.state_dict())
        steps.append(seen)
    assert steps == [[1, 2, 3, 4, 5, 6, 7], [3, 6, 7]]
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
