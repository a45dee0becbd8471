"""Training: loss falls, the data streams (split, shuffle and evaluation never hold the corpus), runs are
reproducible, and a resumed run continues bit for bit where the interrupted one stopped."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seqcompress.domain import (Codec, Domain, Piece, Settings, TokenObjective, Writer, option, real_positions,
                                split_windows)
from seqcompress.errors import InputError, ModelFileError
from seqcompress.model import build_model
from seqcompress.train import (
    SHUFFLE_BYTES, Split, TokenNoise, TrainOptions, TrainWindows, WindowSource, candidates, evaluate, held_out_draw,
    held_out_windows, scan, shuffle_buffer_size, split_held_out, train,
)
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- a toy token domain: one line of space-separated token ids per record -------------------------------
@dataclasses.dataclass(frozen=True)
class ToySettings(Settings):
    vocab: int = option(50, "token ids are below this", learned=True)


class LineCodec(Codec):
    """Each line of a file is a record of token ids; a record longer than seq_len spans several windows."""

    suffix = ".tok"

    def iter_windows(self, path: Path, seq_len: int):
        with open(path, encoding="utf-8") as lines:
            for line in lines:  # read as it goes
                ids = torch.tensor([int(t) for t in line.split()], dtype=torch.long)
                yield Piece(split_windows(ids, seq_len) if len(ids) else [], {"ids": len(ids)})

    def open_writer(self, file, name, header):
        return LineWriter(file)


class LineWriter(Writer):
    def __init__(self, file) -> None:
        self.file = file

    def write(self, windows, side):
        self.file.write((" ".join(str(int(t)) for w in windows for t in w) + "\n").encode())


class ToyTokens(Domain):
    name = "toy"
    settings_class = ToySettings
    default_seq_len = 16

    def make_codec(self):
        return LineCodec(self.settings)

    def make_objective(self):
        return TokenObjective(never=0)

    def model_fields(self):
        return {"vocab_size": self.settings.vocab}

    def default_data(self):
        raise InputError("the toy domain has no bundled sample")

    def learn(self, paths):
        top = max(int(w.max()) for w in self.windows(paths, 10**9))
        return self.with_settings(vocab=top + 1)


OBJECTIVE = TokenObjective(never=0)


def _windows(count=40, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (int(torch.randint(4, n + 1, (1,), generator=g)),), generator=g) for _ in range(count)]


def _write(path: Path, windows) -> Path:
    path.write_text("".join(" ".join(str(int(t)) for t in w) + "\n" for w in windows), encoding="utf-8")
    return path


def _tagged(count):
    """Windows whose first token is their index in the stream (+1: 0 is padding)."""
    return [torch.tensor([i + 1, 7, 7]) for i in range(count)]


class Counting:
    """A source that builds its windows as they are pulled and counts passes and windows pulled."""

    def __init__(self, count: int) -> None:
        self.count, self.opened, self.pulled = count, 0, 0

    def __iter__(self):
        self.opened += 1
        for i in range(self.count):
            self.pulled += 1
            yield torch.tensor([i % 49 + 1, 7, 7, 7])


def _assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


# ---- training ---------------------------------------------------------------------------------------
def test_training_learns_to_reconstruct():
    model = build_model(tiny_config(d_model=64, ffn_dim=128, latent_dim=64), seed=0)
    result = train(model, OBJECTIVE, _windows(128), TrainOptions(epochs=None, max_steps=150, batch_size=8, lr=3e-3,
                                                                  lr_end=1e-3, val_fraction=0.1))
    assert result.steps == 150 and not result.held_out_is_train
    assert (result.train_windows, result.held_out_windows) == (113, 15)
    assert result.held_out["token_accuracy"] > 0.5, result.held_out
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]


# ---- the sampled softmax (--sampled-softmax) --------------------------------------------------------------
def test_a_sampled_softmax_over_every_token_is_the_full_softmax():
    model = build_model(tiny_config(), seed=0)
    x = torch.randint(1, 50, (3, 16))
    lengths = torch.tensor([16, 9, 4])
    mask = torch.arange(16)[None] < lengths[:, None]
    with torch.no_grad():
        hidden, _, _ = model(x, lengths, hidden=True)
        full = OBJECTIVE.loss(model.output(hidden), x, mask)
        positions = real_positions(lengths, 16)
        assert torch.equal(positions, torch.nonzero(mask.reshape(-1)).squeeze(1))
        loss, prediction = OBJECTIVE.sampled_loss(hidden, model.embed.weight, x, positions, torch.arange(50))
        fewer, _ = OBJECTIVE.sampled_loss(hidden, model.embed.weight, x, positions, torch.unique(x))
        assert OBJECTIVE.scored(prediction, x, mask) == OBJECTIVE.totals(model.output(hidden), x, mask)
        assert torch.equal(prediction[mask], OBJECTIVE.prediction(model.output(hidden))[mask])
    assert float(loss) == pytest.approx(float(full), rel=1e-5)
    assert float(fewer) < float(full)  # fewer tokens to tell apart


def test_candidates_hold_the_batch_and_a_draw_fixed_by_seed_and_step():
    tokens = torch.tensor([3, 9, 41])
    chosen = candidates(tokens, 20, 50, seed=0, step=7)
    assert torch.equal(chosen, torch.unique(chosen)) and set(tokens.tolist()) <= set(chosen.tolist())
    assert 3 < len(chosen) <= 23 and int(chosen.max()) < 50
    assert torch.equal(chosen, candidates(tokens, 20, 50, seed=0, step=7))  # every rank and a resumed run
    assert not torch.equal(chosen, candidates(tokens, 20, 50, seed=0, step=8))
    assert not torch.equal(chosen, candidates(tokens, 20, 50, seed=1, step=7))


def test_training_with_a_sampled_softmax_learns_and_is_scored_over_the_whole_vocabulary():
    config = tiny_config(d_model=64, ffn_dim=128, latent_dim=64)
    options = dict(epochs=None, max_steps=150, batch_size=8, lr=3e-3, lr_end=1e-3, val_fraction=0.1)
    sampled = build_model(config, seed=0)
    result = train(sampled, OBJECTIVE, _windows(128), TrainOptions(**options, sampled_softmax=4))
    assert result.held_out["token_accuracy"] > 0.5, result.held_out
    again = evaluate(sampled, OBJECTIVE, held_out_windows(_windows(128), result.split))
    assert again == pytest.approx(result.held_out)  # the full-vocabulary score, as for any model
    full = build_model(config, seed=0)
    train(full, OBJECTIVE, _windows(128), TrainOptions(**options))
    assert sampled.fingerprint() != full.fingerprint()


def test_a_sampled_softmax_is_refused_for_vector_outputs():
    model = build_model(tiny_config(vocab_size=0, feature_dim=3), seed=0)
    with pytest.raises(InputError, match="sampled softmax"):
        train(model, OBJECTIVE, [torch.randn(8, 3)] * 4, TrainOptions(epochs=1, sampled_softmax=8))
    with pytest.raises(InputError, match="sampled_softmax"):
        TrainOptions(sampled_softmax=-1)


def test_token_noise_replaces_a_share_of_tokens_drawn_by_seed_and_step():
    noise = TokenNoise(0.25, 50, seed=0)
    windows = [torch.zeros(4000, dtype=torch.long), torch.zeros(7, dtype=torch.long)]
    noised = noise(windows, step=3)
    assert [w.shape for w in noised] == [w.shape for w in windows] and noised[0].dtype == torch.long
    assert 0.22 < float((noised[0] != 0).float().mean()) < 0.27  # a 1/50 draw gives 0 back
    assert int(noised[0].max()) < 50 and len(torch.unique(noised[0])) == 50
    assert not windows[0].any()  # the batch itself is left alone
    assert all(torch.equal(a, b) for a, b in zip(noised, noise(windows, step=3)))  # every rank, a resumed run
    assert not torch.equal(noised[0], noise(windows, step=4)[0])
    assert not torch.equal(noised[0], TokenNoise(0.25, 50, seed=1)(windows, step=3)[0])
    padded = TokenNoise(1.0 - 1e-9, 5, seed=0, never=2)([torch.zeros(2000, dtype=torch.long)], step=0)[0]
    assert set(padded.tolist()) == {0, 1, 3, 4}  # the padding id is never drawn


def test_token_noise_teaches_the_model_tokens_the_training_windows_never_hold():
    g = torch.Generator().manual_seed(0)
    seen = [torch.randint(1, 25, (16,), generator=g) for _ in range(128)]  # training: tokens 1-24 only
    unseen = [torch.randint(25, 50, (16,), generator=g) for _ in range(32)]  # tokens 25-49 only
    options = dict(epochs=None, max_steps=200, batch_size=8, lr=3e-3, lr_end=1e-3, val_fraction=0.0)
    scores = {}
    for rate in (0.0, 0.3):
        model = build_model(tiny_config(d_model=64, ffn_dim=128, latent_dim=64), seed=0)
        train(model, OBJECTIVE, seen, TrainOptions(**options, token_noise=rate))
        scores[rate] = evaluate(model, OBJECTIVE, unseen)["token_accuracy"]
    assert scores[0.0] < 0.05 and scores[0.3] > 0.25, scores


def test_token_noise_is_refused_for_vector_outputs_and_out_of_range():
    model = build_model(tiny_config(vocab_size=0, feature_dim=3), seed=0)
    with pytest.raises(InputError, match="token noise"):
        train(model, OBJECTIVE, [torch.randn(8, 3)] * 4, TrainOptions(epochs=1, token_noise=0.1))
    for rate in (-0.1, 1.0):
        with pytest.raises(InputError, match="token_noise"):
            TrainOptions(token_noise=rate)


def test_training_is_reproducible():
    def run(seed):
        model = build_model(tiny_config(), seed=3)
        train(model, OBJECTIVE, _windows(), TrainOptions(epochs=None, max_steps=5, seed=seed))
        return model.fingerprint()

    assert run(3) == run(3)
    assert run(3) != run(4)  # the seed also orders the batches


def test_files_stream_exactly_like_the_same_windows_in_a_list(tmp_path):
    windows = _windows(30)
    path = _write(tmp_path / "data.tok", windows)
    opts = TrainOptions(epochs=2, batch_size=4, shuffle_buffer=8, seed=2)
    from_list = build_model(tiny_config(), seed=2)
    listed = train(from_list, OBJECTIVE, windows, opts)
    from_files = build_model(tiny_config(), seed=2)
    streamed = train(from_files, OBJECTIVE, WindowSource.files(ToyTokens(), [path], 16), opts)
    _assert_same_weights(from_list, from_files)
    assert streamed.steps == listed.steps == 2 * -(-streamed.train_windows // 4)
    assert streamed.held_out == listed.held_out


def test_training_reads_the_data_once_per_pass():
    """A counting pass, then one pass per epoch and one per evaluation (each epoch's end and the final one)."""
    source = Counting(40)
    result = train(build_model(tiny_config(), seed=0), OBJECTIVE, WindowSource(lambda: source),
                   TrainOptions(epochs=2, batch_size=8, val_fraction=0.1))
    assert result.steps == 2 * -(-result.train_windows // 8)
    assert source.opened == 1 + 2 + 2 + 1


def test_empty_data_is_refused():
    with pytest.raises(InputError, match="no data"):
        train(build_model(tiny_config()), OBJECTIVE, [], TrainOptions())


# ---- resume -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("memory", [0, 32])
def test_resume_mid_epoch_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, memory):
    """N steps, interrupted, resumed to 2N == 2N straight: the stream position (epoch, batches consumed), the
    optimizer and the dropout generator all come back. 7 and 14 steps are mid-epoch (5 batches per epoch).
    With memory, batches are runs of consecutive windows and the same holds."""
    path = _write(tmp_path / "data.tok", _windows(40))
    source = WindowSource.files(ToyTokens(), [path], 16)
    config = tiny_config(dropout=0.1, memory=memory, positions="t5" if memory else "learned")

    def opts(steps):
        return TrainOptions(epochs=None, max_steps=steps, batch_size=8, shuffle_buffer=8, seed=1, decay_epochs=2)

    straight = build_model(config, seed=1)
    full = train(straight, OBJECTIVE, source, opts(14))
    part = build_model(config, seed=1)
    first = train(part, OBJECTIVE, source, opts(7), checkpoint_dir=tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batches"]) == (7, 1, 2)
    resumed = build_model(config, seed=99)  # weights, optimizer and random state come from the checkpoint
    result = train(resumed, OBJECTIVE, source, opts(14), checkpoint_dir=tmp_path / "run", resume=True)
    assert first.steps == 7 and result.steps == full.steps == 14
    _assert_same_weights(straight, resumed)
    assert result.final_loss == full.final_loss and result.held_out == full.held_out


def test_resume_at_an_epoch_boundary_continues_to_the_same_weights(tmp_path):
    opts = TrainOptions(epochs=2, batch_size=8, seed=1)
    full = build_model(tiny_config(), seed=1)
    train(full, OBJECTIVE, _windows(), opts)

    part = build_model(tiny_config(), seed=1)
    train(part, OBJECTIVE, _windows(), TrainOptions(epochs=1, batch_size=8, seed=1), checkpoint_dir=tmp_path)
    resumed = build_model(tiny_config(), seed=99)
    result = train(resumed, OBJECTIVE, _windows(), opts, checkpoint_dir=tmp_path, resume=True)
    assert result.steps == 10
    _assert_same_weights(full, resumed)


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="nothing to resume"):
        train(build_model(tiny_config()), OBJECTIVE, _windows(), TrainOptions(), checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize("change, message", [
    (dict(seed=5), "resume needs the same seed as the interrupted run"),
    (dict(batch_size=4), "resume needs the same batch_size"),
    (dict(shuffle_buffer=16), "resume needs the same shuffle_buffer"),
])
def test_resume_refuses_options_that_change_the_batch_stream(tmp_path, change, message):
    train(build_model(tiny_config()), OBJECTIVE, _windows(), TrainOptions(epochs=None, max_steps=2),
          checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match=message):
        train(build_model(tiny_config()), OBJECTIVE, _windows(), TrainOptions(epochs=None, max_steps=4, **change),
              checkpoint_dir=tmp_path, resume=True)


def test_resume_refuses_changed_data(tmp_path):
    train(build_model(tiny_config()), OBJECTIVE, _windows(40), TrainOptions(epochs=None, max_steps=2),
          checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="training data changed since the interrupted run"):
        train(build_model(tiny_config()), OBJECTIVE, _windows(41), TrainOptions(epochs=None, max_steps=4),
              checkpoint_dir=tmp_path, resume=True)


def test_data_that_changes_during_training_is_refused():
    windows = _windows(24)
    passes = []

    def open_stream():  # the third pass (epoch 2) loses windows
        passes.append(1)
        return windows if len(passes) < 3 else windows[:8]

    with pytest.raises(InputError, match="training data changed while training"):
        train(build_model(tiny_config()), OBJECTIVE, WindowSource(open_stream),
              TrainOptions(epochs=2, batch_size=4, val_fraction=0))


# ---- the held-out split -----------------------------------------------------------------------------
def test_held_out_draw_is_a_fixed_function_of_seed_and_index():
    """Saved models and checkpoints rely on it: the same windows are held out by every version."""
    assert held_out_draw(0, 0) == pytest.approx(0.6524485, abs=1e-7)
    assert held_out_draw(0, 1) == pytest.approx(0.1663964, abs=1e-7)
    assert held_out_draw(7, 0) != held_out_draw(0, 0)
    draws = [held_out_draw(3, i) for i in range(20_000)]
    assert 0 <= min(draws) and max(draws) < 1
    assert sum(d < 0.05 for d in draws) == pytest.approx(1000, abs=100)


def test_held_out_split_is_seeded_disjoint_and_the_same_in_every_pass():
    windows = _tagged(100)
    tr, val, same = split_held_out(windows, 0.1, seed=4)
    assert (len(tr), len(val), same) == (92, 8, False)
    ids = [int(w[0]) - 1 for w in val]
    assert ids == [i for i in range(100) if held_out_draw(4, i) < 0.1]
    assert {int(w[0]) for w in tr}.isdisjoint(int(w[0]) for w in val) and len(tr) + len(val) == 100
    assert [int(w[0]) for w in split_held_out(windows, 0.1, seed=4)[1]] == [int(w[0]) for w in val]
    assert [int(w[0]) for w in split_held_out(windows, 0.1, seed=5)[1]] != [int(w[0]) for w in val]
    split = scan(windows, 0.1, 4)
    assert (split.windows, split.train_windows, split.held_out_windows, split.forced) == (100, 92, 8, None)
    assert [int(w[0]) for w in held_out_windows(windows, split)] == [int(w[0]) for w in val]


def test_tiny_corpora_hold_out_one_window_and_train_on_the_rest():
    assert split_held_out(_windows(1), 0.1, 0)[2] is True
    assert scan(_windows(1), 0.1, 0).held_out_windows == 1  # evaluation uses the one (training) window
    assert split_held_out(_windows(5), 0.0, 0)[2] is True
    # Two windows at 1%: the draws hold out neither, so the lower draw (window 1's) is held out.
    two = scan(_tagged(2), 0.01, 0)
    assert (two.train_windows, two.held_out_windows, two.forced) == (1, 1, 1)
    assert 0.01 < held_out_draw(0, 1) < held_out_draw(0, 0)
    assert [two.evaluates_on(i) for i in range(2)] == [False, True]
    # Three windows at 99%: the draws hold out all three, so the highest draw is trained on.
    three = scan(_tagged(3), 0.99, 0)
    assert (three.train_windows, three.held_out_windows) == (1, 2)
    assert [three.trains_on(i) for i in range(3)] == [i == three.forced for i in range(3)]


def test_split_is_saved_and_restored():
    split = scan(_tagged(30), 0.2, 1)
    assert Split.from_state(json.loads(json.dumps(split.state()))) == split


# ---- streaming: shuffle buffer and evaluation ---------------------------------------------------------
def test_each_epoch_streams_every_training_window_once_in_a_new_seeded_order():
    windows = _tagged(50)
    split = scan(windows, 0.1, 0)
    train_ids = sorted(i + 1 for i in range(50) if split.trains_on(i))

    def order(epoch, seed=0, skip=0, buffer=8):
        dataset = TrainWindows(windows, split, buffer, seed)
        dataset.set_epoch(epoch, skip)
        return [int(w[0]) for w in dataset]

    first, second = order(0), order(1)
    assert sorted(first) == sorted(second) == train_ids
    assert first != second and first != train_ids
    assert order(0) == first and order(0, seed=1) != first
    assert order(1, skip=10) == second[10:]
    assert sorted(order(0, buffer=1000)) == train_ids  # a buffer larger than the data: a full permutation


def test_the_shuffle_buffer_holds_a_bounded_number_of_windows():
    source = Counting(500)
    split = scan(source, 0.05, 0)
    source.pulled = 0
    dataset = TrainWindows(source, split, 16, 0)
    yielded = 0
    for _ in dataset:
        yielded += 1
        trained_pulled = sum(split.trains_on(i) for i in range(source.pulled))
        assert trained_pulled - yielded <= 16
    assert yielded == split.train_windows


def test_the_shuffle_buffer_is_capped_in_bytes():
    small = Split(0.05, 0, 1000, 50, None, max_window_bytes=512 * 8)
    large = Split(0.05, 0, 1000, 50, None, max_window_bytes=512 * 320 * 4)  # 512 frames of 320 audio samples
    assert shuffle_buffer_size(TrainOptions(), small) == 4096
    assert shuffle_buffer_size(TrainOptions(), large) == SHUFFLE_BYTES // (512 * 320 * 4) == 409
    assert shuffle_buffer_size(TrainOptions(shuffle_buffer=100), large) == 100


def test_evaluation_streams_and_stops_after_eval_batches():
    model = build_model(tiny_config(), seed=0)
    source = Counting(100)
    capped = evaluate(model, OBJECTIVE, source, batch_size=4, max_batches=2)
    assert source.pulled == 8
    full = evaluate(model, OBJECTIVE, source, batch_size=4)
    assert source.pulled == 108
    expected = evaluate(model, OBJECTIVE, list(Counting(100))[:8], batch_size=8)
    assert capped == pytest.approx(expected) and 0 <= full["token_accuracy"] <= 1


# ---- options and schedule ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad, name", [(dict(batch_size=0), "batch_size"), (dict(lr=0), "lr"),
                                       (dict(epochs=0), "epochs"), (dict(epochs=None), "max_steps"),
                                       (dict(val_fraction=1.0), "val_fraction"), (dict(max_steps=-1), "max_steps"),
                                       (dict(shuffle_buffer=0), "shuffle_buffer"),
                                       (dict(eval_batches=0), "eval_batches")])
def test_bad_training_options_are_refused_by_parameter_name(bad, name):
    with pytest.raises(InputError, match=name) as info:
        TrainOptions(**bad)
    assert "--" not in str(info.value)


def test_lr_schedule_is_the_papers_linear_decay():
    from seqcompress.train import _Schedule

    sched = _Schedule(TrainOptions(lr=1e-3, lr_end=1e-4, decay_epochs=5), steps_per_epoch=10)
    assert sched(0) == pytest.approx(1e-3)
    assert sched(25) == pytest.approx(5.5e-4)
    assert sched(50) == pytest.approx(1e-4) and sched(500) == pytest.approx(1e-4)


def test_progress_reports_lr_from_the_counted_epoch_length():
    """The schedule needs steps per epoch before the first epoch ends: the counting pass gives it."""
    seen = []
    options = TrainOptions(epochs=2, batch_size=8, val_fraction=0, decay_epochs=1)
    train(build_model(tiny_config()), OBJECTIVE, _windows(40), options,
          on_step=lambda p: seen.append((p.step, p.total_steps, p.lr, round(p.epoch, 4))))
    assert [s[0] for s in seen] == list(range(1, 11)) and {s[1] for s in seen} == {10}
    lrs = [s[2] for s in seen]  # 5 steps per epoch: 1e-3 falls to 1e-4 over steps 0..5
    assert lrs[0] == pytest.approx(1e-3) and lrs[4] == pytest.approx(2.8e-4) and lrs[5:] == pytest.approx([1e-4] * 5)
    assert seen[4][3] == 1.0


def test_weights_and_checkpoints_get_the_umask_mode(tmp_path):
    """safetensors' save_file creates mode-0600 files; weights go through atomic_write_bytes instead."""
    old = os.umask(0o022)
    try:
        model = build_model(tiny_config(), seed=0)
        train(model, OBJECTIVE, _windows(), TrainOptions(epochs=None, max_steps=1), checkpoint_dir=tmp_path / "ckpt")
        model.save(tmp_path / "model")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert set(modes) >= {"model.safetensors", "config.json", "train.safetensors", "state.json"}
    assert modes == dict.fromkeys(modes, 0o644)


# ---- api.fit and held_out_example ------------------------------------------------------------------
SMALL = {"d_model": 32, "heads": 4, "layers": 1, "ffn_dim": 64, "latent_dim": 32}


@pytest.fixture
def toy_registered(monkeypatch):
    from seqcompress.domains import REGISTRY

    monkeypatch.setitem(REGISTRY, "toy", "tests.test_train:ToyTokens")


def test_fit_streams_learns_a_new_domain_and_shows_a_held_out_example(tmp_path, toy_registered):
    from seqcompress.api import fit, held_out_example
    from seqcompress.model import load_model

    windows = [w.clamp(max=40) for w in _windows(40)]
    path = _write(tmp_path / "data.tok", windows)
    domain = ToyTokens()
    summary = fit(domain, [path], tmp_path / "model", seq_len=16, ratio=0.5, model_options=SMALL,
                  options=TrainOptions(epochs=None, max_steps=3, val_fraction=0.1))
    assert domain.settings.vocab == 50  # learn() returned a new domain
    model, meta = load_model(tmp_path / "model")
    assert model.config.vocab_size == 41 and meta["domain"]["vocab"] == 41
    assert summary["steps"] == 3 and summary["train_windows"] + summary["held_out_windows"] == 40
    split = Split.from_state(meta["domain"]["training"]["held_out_split"])
    first = next(i for i in range(40) if split.evaluates_on(i))
    example = held_out_example(tmp_path / "model")
    assert example["original"] == ToyTokens().render(windows[first])
    assert len(example["reconstructed"].split()) == len(windows[first])


def test_fit_resume_reproduces_the_straight_run_from_the_runs_record_alone(tmp_path, toy_registered):
    from seqcompress.api import fit

    path = _write(tmp_path / "data.tok", _windows(40))
    kwargs = dict(seq_len=16, ratio=0.5, model_options=SMALL, options=TrainOptions(epochs=2))
    straight = fit(ToyTokens(), [path], tmp_path / "straight", **kwargs)
    per_epoch = round(straight["steps"] / straight["epochs"])
    assert not (tmp_path / "straight" / "checkpoint").exists()  # a finished run leaves only the model

    def interrupt(progress):  # after the first epoch's checkpoint, before the run ends
        if progress.step == per_epoch + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(ToyTokens(), [path], tmp_path / "resumed", on_step=interrupt, **kwargs)
    assert not (tmp_path / "resumed" / "config.json").exists()
    summary = fit(None, None, tmp_path / "resumed", resume=True)  # domain, data, config and budget from the record
    assert summary["steps"] == straight["steps"] == 2 * per_epoch
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModelFileError, match="a finished run removes its checkpoint"):
        fit(None, None, tmp_path / "resumed", resume=True)


def test_resume_conflicts_name_what_differs_from_the_record(tmp_path, toy_registered):
    from seqcompress.api import fit, resume_conflicts

    path = _write(tmp_path / "data.tok", _windows(40))

    def interrupt(progress):
        if progress.epoch > 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(ToyTokens(), [path], tmp_path / "m", seq_len=16, ratio=0.5, model_options=SMALL,
            options=TrainOptions(epochs=2, lr=2e-3), on_step=interrupt)
    same = {"epochs": 2, "lr": 0.002, "seq_len": 16, "data": [path], "domain": "toy", "d_model": SMALL["d_model"]}
    assert resume_conflicts(tmp_path / "m", same) == []
    conflicts = dict(resume_conflicts(tmp_path / "m", {"epochs": 3, "data": [tmp_path / "other.tok"], "option": ["a=1"]}))
    assert set(conflicts) == {"epochs", "data", "option"}
    assert "recorded 2" in conflicts["epochs"] and "record holds it" in conflicts["option"]


@pytest.mark.parametrize("kwargs, name", [(dict(seq_len=-1), "seq_len"), (dict(ratio=1.5), "ratio"),
                                          (dict(latent_len=99), "latent_len"),
                                          (dict(ratio=0.5, latent_len=4), "latent_len")])
def test_fit_errors_name_parameters_not_flags(tmp_path, kwargs, name):
    from seqcompress.api import fit

    path = _write(tmp_path / "data.tok", _windows(4))
    with pytest.raises(InputError, match=name) as info:
        fit(ToyTokens(), [path], tmp_path / "model", options=TrainOptions(max_steps=1), **kwargs)
    assert "--" not in str(info.value)


def test_fit_refuses_to_replace_a_model_and_names_the_parameters(tmp_path, toy_registered):
    from seqcompress.api import fit

    path = _write(tmp_path / "data.tok", _windows(8))
    options = TrainOptions(epochs=None, max_steps=1)
    fit(ToyTokens(), [path], tmp_path / "model", seq_len=16, model_options=SMALL, options=options)
    with pytest.raises(InputError, match="set force to replace it or resume to continue it"):
        fit(ToyTokens(), [path], tmp_path / "model", seq_len=16, model_options=SMALL, options=options)
