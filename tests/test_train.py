"""Training: loss falls, runs are reproducible, checkpoints resume where they stopped."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from seqcompress.domains.text import TextDomain
from seqcompress.errors import InputError, ModelFileError
from seqcompress.model import build_model
from seqcompress.train import TrainOptions, split_held_out, train
from tests.conftest import tiny_config


class TinyTokens(TextDomain):
    """The text domain's loss and metric over a 50-symbol vocabulary."""

    def model_fields(self):
        return {"vocab_size": 50}


def _windows(count=40, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (int(torch.randint(4, n + 1, (1,), generator=g)),), generator=g) for _ in range(count)]


def test_training_learns_to_reconstruct():
    model = build_model(tiny_config(d_model=64, ffn_dim=128, latent_dim=64), seed=0)
    windows = _windows(64)
    result = train(model, TinyTokens(), windows, TrainOptions(epochs=None, max_steps=150, batch_size=8, lr=3e-3,
                                                             lr_end=1e-3, val_fraction=0.1))
    assert result.steps == 150 and not result.held_out_is_train
    assert result.held_out["token_accuracy"] > 0.5, result.held_out
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]


def test_training_is_reproducible():
    def run():
        model = build_model(tiny_config(), seed=3)
        train(model, TinyTokens(), _windows(), TrainOptions(epochs=None, max_steps=5, seed=3))
        return model.fingerprint()

    assert run() == run()


def test_resume_continues_to_the_same_weights(tmp_path):
    opts = TrainOptions(epochs=2, batch_size=8, seed=1)
    full = build_model(tiny_config(), seed=1)
    train(full, TinyTokens(), _windows(), opts)

    part = build_model(tiny_config(), seed=1)
    train(part, TinyTokens(), _windows(), TrainOptions(epochs=1, batch_size=8, seed=1), checkpoint_dir=tmp_path)
    resumed = build_model(tiny_config(), seed=99)  # weights come from the checkpoint
    result = train(resumed, TinyTokens(), _windows(), opts, checkpoint_dir=tmp_path, resume=True)
    assert result.steps == 10
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="nothing to resume"):
        train(build_model(tiny_config()), TinyTokens(), _windows(), TrainOptions(), checkpoint_dir=tmp_path, resume=True)


def test_held_out_split_is_seeded_and_disjoint():
    windows = _windows(100)
    tr, val, same = split_held_out(windows, 0.1, seed=4)
    assert len(val) == 10 and len(tr) == 90 and not same
    assert {id(w) for w in tr}.isdisjoint({id(w) for w in val})
    assert [id(w) for w in split_held_out(windows, 0.1, seed=4)[1]] == [id(w) for w in val]
    one = _windows(1)
    assert split_held_out(one, 0.1, 0)[2] is True


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(lr=0), dict(epochs=0), dict(epochs=None),
                                 dict(val_fraction=1.0), dict(max_steps=-1)])
def test_bad_training_options_are_refused(bad):
    with pytest.raises(InputError):
        TrainOptions(**bad)


def test_lr_schedule_is_the_papers_linear_decay():
    from seqcompress.train import _Schedule

    sched = _Schedule(TrainOptions(lr=1e-3, lr_end=1e-4, decay_epochs=5), steps_per_epoch=10)
    assert sched(0) == pytest.approx(1e-3)
    assert sched(25) == pytest.approx(5.5e-4)
    assert sched(50) == pytest.approx(1e-4) and sched(500) == pytest.approx(1e-4)


def test_weights_and_checkpoints_get_the_umask_mode(tmp_path):
    """safetensors' save_file creates mode-0600 files; weights go through atomic_write_bytes instead."""
    old = os.umask(0o022)
    try:
        model = build_model(tiny_config(), seed=0)
        train(model, TinyTokens(), _windows(), TrainOptions(epochs=None, max_steps=1), checkpoint_dir=tmp_path / "ckpt")
        model.save(tmp_path / "model")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert set(modes) >= {"model.safetensors", "config.json", "train.safetensors", "state.json"}
    assert modes == dict.fromkeys(modes, 0o644)
