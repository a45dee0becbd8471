"""Training: AdamW on reconstruction loss, the paper's LR schedule, held-out evaluation, checkpoints.

The loop knows nothing of files or terminals: it takes a `WindowSource` (the windows of some files,
streamed as they are read, or a list already in memory), an `Objective` (loss and metric) and options,
and reports progress through callbacks. The CLI draws the progress bar.

Streaming: nothing holds the corpus. A first pass (`scan`) counts the windows and decides the held-out
split, window by window, from a seeded hash of each window's index in the stream; every epoch then
streams the training windows again through a seeded shuffle buffer (`TrainWindows`), and every evaluation
streams the held-out ones. Memory is bounded by the buffer, not by the data.

Schedule (Biermann et al.): LR falls linearly from `lr` to `lr_end` over the first `decay_epochs`
epochs, then stays at `lr_end`. Reproducible: the model, the split and the order of every epoch derive
from `seed`; a checkpoint records the stream position (epoch, batches consumed) and the random state, so
a resumed run replays the stream to that point and continues bit for bit as if never interrupted.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as safetensors_bytes
from torch.utils.data import DataLoader, IterableDataset

from seqcompress import faults
from seqcompress.atomic import atomic_directory
from seqcompress.attention import length_mask
from seqcompress.compress import collate
from seqcompress.domain import Domain, Objective
from seqcompress.errors import InputError, ModelFileError, SeqCompressError
from seqcompress.memory import MAX_STREAMS, Link, held_links, own_links, run_links
from seqcompress.model import SequenceAutoencoder
from seqcompress.options import TrainOptions

CHECKPOINT_DIR = "checkpoint"
log = logging.getLogger("seqcompress")
SHUFFLE_BYTES = 256 * 2**20  # the shuffle buffer never holds more window data than this
_MASK64 = 2**64 - 1


@dataclass
class Progress:
    """What the loop reports after each step (and, with `held_out` filled in, after an evaluation)."""

    step: int
    total_steps: int | None
    epoch: float
    loss: float
    batch_metric: float
    lr: float
    symbols_per_s: float
    elapsed_s: float
    held_out: dict[str, float] | None = None


# ---- where windows come from ----------------------------------------------------------------------
class WindowSource:
    """Windows (L,) or (L, F) in a fixed order that can be streamed again and again: once to count them,
    then once per epoch and per evaluation.

    `WindowSource.files(domain, paths, seq_len)` reads the files anew on every pass (`Domain.windows`), so
    nothing holds the corpus; `WindowSource.of(windows)` serves a list already in memory (the probe, tests).
    `train` also takes a plain list and wraps it with `of`."""

    def __init__(self, open_stream: Callable[[], Iterable[torch.Tensor]],
                 open_linked: Callable[[], Iterable[tuple[torch.Tensor, Link]]] | None = None) -> None:
        self._open, self._open_linked = open_stream, open_linked

    @classmethod
    def files(cls, domain: Domain, paths: Sequence[str | os.PathLike], seq_len: int) -> "WindowSource":
        paths = [Path(p) for p in paths]
        return cls(lambda: domain.windows(paths, seq_len), lambda: domain.linked_windows(paths, seq_len))

    @classmethod
    def of(cls, windows: Iterable[torch.Tensor], links: Iterable[Link] | None = None) -> "WindowSource":
        """Windows in memory; without `links` each window is a record of its own (no memory between them)."""
        windows = list(windows)
        links = own_links(links, len(windows))
        return cls(lambda: windows, lambda: zip(windows, links))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._open())

    def linked(self) -> Iterator[tuple[torch.Tensor, Link]]:
        """The same windows, each with its Link (stream and record start), for models with memory."""
        if self._open_linked is None:
            return ((w, Link(0, True)) for w in self._open())
        return iter(self._open_linked())


# ---- the held-out split, decided window by window ------------------------------------------------
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def held_out_draw(seed: int, index: int) -> float:
    """A seeded hash of a window's index in the stream, uniform in [0, 1): the window is held out when it
    falls below the held-out fraction. The same in every epoch, every run and every Python."""
    return _splitmix64((_splitmix64(seed & _MASK64) + index) & _MASK64) / 2.0**64


@dataclass(frozen=True)
class Split:
    """Which windows of a stream are held out, and how many there are (from `scan`'s counting pass).

    Window i is held out when `held_out_draw(seed, i) < fraction`, except `forced`: when the draws hold out
    no window (or every window), the one with the lowest (highest) draw changes side, so both sides have
    one. With fraction 0 or a single window nothing is held out and evaluation uses the training windows
    (`held_out_is_train`)."""

    fraction: float
    seed: int
    windows: int
    held_out_windows: int  # = windows when held_out_is_train
    forced: int | None = None
    max_window_bytes: int = 0
    block: int = 1  # windows drawn together (runs of consecutive windows, for models with memory)

    @property
    def held_out_is_train(self) -> bool:
        return self.fraction == 0 or self.windows < 2

    @property
    def train_windows(self) -> int:
        return self.windows if self.held_out_is_train else self.windows - self.held_out_windows

    def _drawn(self, index: int) -> bool:
        return (held_out_draw(self.seed, index // self.block) < self.fraction) != (index == self.forced)

    def trains_on(self, index: int) -> bool:
        return self.held_out_is_train or not self._drawn(index)

    def evaluates_on(self, index: int) -> bool:
        return self.held_out_is_train or self._drawn(index)

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "Split":
        return cls(**state)


def scan(source: Iterable[torch.Tensor], fraction: float, seed: int, block: int = 1) -> Split:
    """One streaming pass: count the windows and settle the held-out split (see `Split`); `block` consecutive
    windows share one draw."""
    count = held = largest = 0
    low, high = (2.0, 0), (-1.0, 0)  # (draw, index) of the lowest and the highest draw
    for index, window in enumerate(source):
        count += 1
        largest = max(largest, window.numel() * window.element_size())
        if fraction == 0:
            continue
        draw = held_out_draw(seed, index // block)
        held += draw < fraction
        low, high = min(low, (draw, index)), max(high, (draw, index))
    if count == 0:
        raise InputError("no data: the input produced no sequences")
    forced = None
    if fraction == 0 or count < 2:
        held = count
    elif held == 0:
        forced, held = low[1], 1
    elif held == count:
        forced, held = high[1], count - 1
    return Split(fraction, seed, count, held, forced, largest, block)


def held_out_windows(source: Iterable[torch.Tensor], split: Split) -> Iterator[torch.Tensor]:
    """The held-out windows of a stream, in stream order (every window when held_out_is_train)."""
    return (w for i, w in enumerate(source) if split.evaluates_on(i))


def held_out_linked(source: WindowSource, split: Split) -> Iterator[tuple[torch.Tensor, Link]]:
    """The held-out windows with their links: a window whose predecessor is not held out starts a record."""
    return _side(source, split.evaluates_on)


def _side(source: WindowSource, keep: Callable[[int], bool]) -> Iterator[tuple[torch.Tensor, Link]]:
    return held_links((w, link, keep(i)) for i, (w, link) in enumerate(source.linked()))


def split_held_out(windows: list[torch.Tensor], fraction: float, seed: int) -> tuple[list, list, bool]:
    """A list split by the streaming rule: (train, held_out, held_out_is_train)."""
    split = scan(windows, fraction, seed)
    train_w = [w for i, w in enumerate(windows) if split.trains_on(i)]
    return train_w, list(held_out_windows(windows, split)), split.held_out_is_train


# ---- the training stream -------------------------------------------------------------------------
def shuffled(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """Items in a random order, holding at most `size` of them: each arriving item takes the place of a
    random one in the buffer, which is yielded; the rest leave in random order at the end."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


class TrainWindows(IterableDataset):
    """The training windows of one epoch, streamed in a seeded shuffled order that changes each epoch.

    `set_epoch(epoch, skip)` chooses the epoch and how many of its windows to pass over (a resumed run
    replays the epoch's order to where it stopped). For a DataLoader with num_workers=0.

    With `run` (models with memory), the unit of shuffling is a run of `run` consecutive training windows,
    kept in order, and each window comes with its Link. Runs are dealt to `lanes` lanes (the batch size),
    a group of `lanes` runs at a time, one window of each lane after another: a batch holds one window of
    each lane, the lane's next window comes in the next batch, and memory carries from step to step within
    a lane (Transformer-XL's B streams; `lanes` x MAX_STREAMS + the window's own stream names it)."""

    def __init__(self, source: Iterable[torch.Tensor], split: Split, buffer: int, seed: int, run: int = 0,
                 lanes: int = 1) -> None:
        self.source, self.split, self.buffer, self.seed, self.run, self.lanes = source, split, buffer, seed, run, lanes
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A string seed is hashed (SHA-512) by random.Random: stable across Python versions and platforms.
        rng = random.Random(f"seqcompress shuffle {self.seed} {self.epoch}")
        if self.run:
            items = _side(self.source, self.split.trains_on)
            runs = iter(lambda: list(itertools.islice(items, self.run)), [])
            lanes = _lanes(shuffled(runs, max(1, self.buffer // self.run), rng), self.lanes)
            return itertools.islice(lanes, self.skip, None)
        windows = (w for i, w in enumerate(self.source) if self.split.trains_on(i))
        return itertools.islice(shuffled(windows, self.buffer, rng), self.skip, None)


def _lanes(runs: Iterable[list], lanes: int) -> Iterator[tuple[torch.Tensor, Link]]:
    """Runs of (window, link) dealt to lanes, `lanes` runs at a time, interleaved window by window; each run's
    first window of each stream starts. A shorter run (the epoch's last) lets later windows of the other
    lanes move up into its batch, where the batch's own history serves them."""
    while group := list(itertools.islice(runs, lanes)):
        dealt = [list(zip([w for w, _ in run], run_links([link for _, link in run]))) for run in group]
        for t in range(max(map(len, dealt))):
            for lane, run in enumerate(dealt):
                if t < len(run):
                    window, link = run[t]
                    yield window, Link(lane * MAX_STREAMS + link.stream, link.start)


def shuffle_buffer_size(opts: TrainOptions, split: Split) -> int:
    """Windows in the shuffle buffer: opts.shuffle_buffer, fewer when large windows would pass SHUFFLE_BYTES."""
    return max(1, min(opts.shuffle_buffer, SHUFFLE_BYTES // max(split.max_window_bytes, 1)))


def collate_linked(items: list[tuple[torch.Tensor, Link]]) -> tuple[torch.Tensor, torch.Tensor, list[Link]]:
    """(window, link) pairs -> padded windows, lengths and the links (`collate` for models with memory)."""
    x, lengths = collate([w for w, _ in items])
    return x, lengths, [link for _, link in items]


def batches(windows: Iterable, batch_size: int, linked: bool = False) -> Iterator[tuple]:
    """Consecutive windows collated batch_size at a time, as they arrive (the last batch may be smaller); with
    `linked`, (window, link) pairs collated with their links."""
    stream = iter(windows)
    while chunk := list(itertools.islice(stream, batch_size)):
        yield collate_linked(chunk) if linked else collate(chunk)


def autocast_for(device: torch.device):
    """bf16 (or fp16) autocast on CUDA, nothing on CPU (fp32 is fastest there)."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


@dataclass
class TrainResult:
    steps: int
    epochs: float
    seconds: float
    train_windows: int
    held_out_windows: int
    held_out_is_train: bool
    final_loss: float
    held_out: dict[str, float]
    symbols_per_s: float
    history: list[dict] = field(default_factory=list)
    split: Split | None = None  # which windows were held out (saved with the model for `held_out_example`)
    checkpoint_error: str | None = None  # why the last checkpoint could not be written, if it could not


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


@torch.no_grad()
def evaluate(
    model: SequenceAutoencoder,
    objective: Objective,
    windows: Iterable[torch.Tensor],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    linked: bool = False,
) -> dict[str, float]:
    """The objective's metrics and mean loss per symbol over `windows` (streamed), in eval mode. With `linked`
    (a model with memory), `windows` are (window, link) pairs in stream order and memory carries across batches."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    totals = objective.accumulator()
    loss_sum, count = 0.0, 0
    memory = (model.memory(), model.memory()) if linked else None
    for batch in itertools.islice(batches(windows, batch_size, linked), max_batches):
        x, lengths = batch[0].to(device), batch[1].to(device)
        with autocast_for(device):
            out, _, _ = model(x, lengths, batch[2] if linked else None, memory)
        mask = length_mask(lengths, x.shape[1])  # (B, N)
        symbols = int(mask.sum())
        loss_sum += float(objective.loss(out, x, mask)) * symbols
        count += symbols
        totals.add(out.float(), x, mask)
    model.train(was_training)
    values = totals.values()
    values["loss"] = loss_sum / max(count, 1)
    return values


class _Schedule:
    """Linear warm-up, then linear decay lr -> lr_end over `decay_steps`, then constant."""

    def __init__(self, opts: TrainOptions, steps_per_epoch: int) -> None:
        self.opts, self.decay_steps = opts, max(1, round(opts.decay_epochs * steps_per_epoch))

    def __call__(self, step: int) -> float:
        o = self.opts
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        t = min(1.0, (step - o.warmup_steps) / self.decay_steps)
        return o.lr + (o.lr_end - o.lr) * t


def _epoch_batches(loader: DataLoader, dataset: TrainWindows, steps_per_epoch: int, epoch: int, done: int):
    """(epoch, batches consumed in it, batch) from stream position (epoch, done) on, epoch after epoch."""
    while True:
        dataset.set_epoch(epoch, skip=done * loader.batch_size)
        for batch in loader:
            done += 1
            yield epoch, done, batch
        if done != steps_per_epoch:
            raise InputError(f"the training data changed while training: epoch {epoch} gave {done} batches, "
                             f"the counting pass {steps_per_epoch}")
        epoch, done = epoch + 1, 0


def train(
    model: SequenceAutoencoder,
    objective: Objective,
    source: WindowSource | Sequence[torch.Tensor],
    opts: TrainOptions,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_step: Callable[[Progress], None] | None = None,
    on_eval: Callable[[Progress], None] | None = None,
    record: dict | None = None,
) -> TrainResult:
    """Train `model` in place on the windows of `source` (a held-out share is split off) and return the summary.

    `source` is a WindowSource (e.g. `WindowSource.files(domain, paths, seq_len)`, streamed) or a list of
    windows. With `checkpoint_dir`, a checkpoint is written at the end of each epoch and of the run; `resume`
    continues from it (same seed, batch_size, val_fraction, shuffle_buffer and data). `record` (what a resume needs
    to rebuild the run: domain, model config, data) is saved in every checkpoint. A checkpoint that cannot be
    written (a full disk) is reported on the "seqcompress" logger and in `TrainResult.checkpoint_error`; training
    goes on, so the model itself can still be saved."""
    if not isinstance(source, WindowSource):
        source = WindowSource.of(source)
    device = pick_device(opts.device)
    model.to(device).train()
    run = opts.run_windows if model.config.memory else 0  # memory: runs of consecutive windows, dealt to lanes
    memory = (model.memory(), model.memory()) if run else None  # carried from step to step, per lane
    split = scan(source, opts.val_fraction, opts.seed, block=run or 1)
    steps_per_epoch = math.ceil(split.train_windows / opts.batch_size)
    limits = [s for s in (opts.max_steps, opts.epochs and math.ceil(opts.epochs * steps_per_epoch)) if s]
    total_steps = min(limits) if limits else None
    schedule = _Schedule(opts, steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())

    step, epoch, done, elapsed_before, history = 0, 0, 0, 0.0, []
    ckpt = Path(checkpoint_dir) / CHECKPOINT_DIR if checkpoint_dir else None
    if resume:
        if ckpt is None or not (ckpt / STATE_FILE).is_file():
            raise ModelFileError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
        step, epoch, done, elapsed_before, history = _load_checkpoint(ckpt, model, optimizer, opts, split, device,
                                                                      memory)

    dataset = TrainWindows(source, split, shuffle_buffer_size(opts, split), opts.seed, run, opts.batch_size)
    # A DataLoader draws a base seed at every iter(); its own generator keeps that draw off the global one,
    # whose sequence (dropout) a resumed run must continue exactly.
    loader = DataLoader(dataset, batch_size=opts.batch_size, collate_fn=collate_linked if run else collate,
                        generator=torch.Generator())
    stream = _epoch_batches(loader, dataset, steps_per_epoch, epoch, done)

    start, symbols_done, last_loss, checkpoint_error = time.perf_counter(), 0, float("nan"), None
    while total_steps is None or step < total_steps:
        elapsed = elapsed_before + time.perf_counter() - start
        if opts.max_minutes is not None and elapsed >= opts.max_minutes * 60:
            break
        epoch, done, batch = next(stream)
        x, lengths, links = batch[0], batch[1], (batch[2] if run else None)
        x, lengths = x.to(device), lengths.to(device)
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mask = length_mask(lengths, x.shape[1])  # (B, N)
        with autocast_for(device):
            out, _, _ = model(x, lengths, links, memory)
            loss = objective.loss(out, x, mask)
            aux = model.aux_loss()  # what a kernel adds (routing's commitment or balance); None for most
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss if aux is None else loss + aux).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        model.after_step()
        step += 1
        symbols_done += int(lengths.sum())
        last_loss = float(loss.detach())
        run_s = time.perf_counter() - start
        with torch.no_grad():
            batch_metric = objective.values(objective.totals(out.detach().float(), x, mask))[objective.metric_name]
        progress = Progress(
            step, total_steps, step / steps_per_epoch, last_loss, batch_metric, lr,
            symbols_done / max(run_s, 1e-9), elapsed_before + run_s,
        )
        if on_step:
            on_step(progress)
        end_of_epoch = done == steps_per_epoch
        if end_of_epoch:
            epoch, done = epoch + 1, 0
        if end_of_epoch or (opts.eval_every and step % opts.eval_every == 0):
            progress.held_out = evaluate(model, objective, _held_out(source, split, run), opts.batch_size * 4,
                                         device, opts.eval_batches, linked=bool(run))
            model.train()
            history.append({"step": step, "epoch": round(progress.epoch, 4), "elapsed_s": round(progress.elapsed_s, 1),
                            "train_loss": last_loss, **progress.held_out})
            if on_eval:
                on_eval(progress)
            if ckpt is not None and end_of_epoch:
                checkpoint_error = _try_checkpoint(ckpt, model, optimizer, opts, split, step, epoch, done,
                                                   progress.elapsed_s, history, record, memory)
    stream.close()

    loop_s = time.perf_counter() - start
    seconds = elapsed_before + loop_s
    held_out_values = evaluate(model, objective, _held_out(source, split, run), opts.batch_size * 4, device,
                               linked=bool(run))
    if not history or history[-1]["step"] != step:
        history.append({"step": step, "epoch": round(step / steps_per_epoch, 4), "elapsed_s": round(seconds, 1),
                        "train_loss": last_loss, **held_out_values})
    if ckpt is not None:
        checkpoint_error = _try_checkpoint(ckpt, model, optimizer, opts, split, step, epoch, done, seconds, history,
                                           record, memory)
    model.eval()
    return TrainResult(
        steps=step, epochs=step / steps_per_epoch, seconds=seconds, train_windows=split.train_windows,
        held_out_windows=split.held_out_windows, held_out_is_train=split.held_out_is_train, final_loss=last_loss,
        held_out=held_out_values, symbols_per_s=symbols_done / max(loop_s, 1e-9),
        history=history, split=split, checkpoint_error=checkpoint_error,
    )


def _held_out(source: WindowSource, split: Split, run: int) -> Iterator:
    """The held-out windows, with their links for a model with memory."""
    return held_out_linked(source, split) if run else held_out_windows(source, split)


# ---- checkpoints: weights, optimizer and random state in safetensors, counters in JSON -------------
# Options that fix the batch stream.
_RESUME_MATCH = ("seed", "batch_size", "val_fraction", "shuffle_buffer", "run_windows")


RUN_FILE, STATE_FILE, TENSORS_FILE = "run.json", "state.json", "train.safetensors"  # one checkpoint


def _try_checkpoint(ckpt: Path, *args) -> str | None:
    """Write a checkpoint; on a failure to write (disk full, read-only), say so and return why."""
    try:
        _save_checkpoint(ckpt, *args)
    except (OSError, SeqCompressError) as exc:
        why = str(exc) if isinstance(exc, SeqCompressError) else f"{exc.strerror or exc}"
        log.warning("no checkpoint written (%s); training goes on, but it cannot be resumed from here", why)
        return why
    return None


def _save_checkpoint(ckpt: Path, model, optimizer, opts: TrainOptions, split: Split, step: int, epoch: int,
                     done: int, elapsed: float, history, record: dict | None, memory=None) -> None:
    """The checkpoint folder is replaced as a whole (seqcompress.atomic): a kill leaves the previous checkpoint
    or this one, never weights of one step with the counters of another."""
    state = optimizer.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    # Dropout draws from the global generators: a resumed run continues their sequence.
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    meta = {"step": step, "epoch": epoch, "batches": done, "elapsed_s": elapsed, "options": asdict(opts),
            "split": split.state(), "history": history, "param_groups": state["param_groups"]}
    if memory is not None:  # what each lane's memory carries into the next step
        meta["memory"] = {}
        for name, stack in zip(("encoder", "decoder"), memory):
            carried, meta["memory"][name] = stack.state(f"memory.{name}")
            tensors.update(carried)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(ckpt) as stage:
        (stage / TENSORS_FILE).write_bytes(safetensors_bytes(tensors))
        faults.point("checkpoint:tensors-written")
        (stage / STATE_FILE).write_text(json.dumps(meta, indent=2))
        if record is not None:
            (stage / RUN_FILE).write_text(json.dumps(record, indent=2))
        faults.point("checkpoint:state-written")
    faults.point("checkpoint:saved")


def read_checkpoint_record(ckpt: Path) -> tuple[dict, dict]:
    """(run record, training state) of a checkpoint folder, or ModelFileError."""
    try:
        record = json.loads((ckpt / RUN_FILE).read_text(encoding="utf-8"))
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"nothing to resume in {ckpt.parent}: no checkpoint of an unfinished run (a finished "
                             "run removes its checkpoint)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"cannot read the checkpoint in {ckpt}: {' '.join(str(exc).split())}") from None
    if not (isinstance(record, dict) and isinstance(record.get("model"), dict) and isinstance(record.get("data"), list)
            and isinstance(record.get("domain"), dict) and isinstance(state, dict)
            and isinstance(state.get("options"), dict)):
        raise ModelFileError(f"the checkpoint in {ckpt} is incomplete: it does not record its run")
    return record, state


def _load_checkpoint(ckpt: Path, model, optimizer, opts: TrainOptions, split: Split, device, memory=None):
    """Restore model, optimizer and random state; returns (step, epoch, batches consumed, elapsed_s, history)."""
    try:
        meta = json.loads((ckpt / STATE_FILE).read_text())
        tensors = load_file(str(ckpt / TENSORS_FILE))
    except (OSError, ValueError, SafetensorError, RecursionError) as exc:
        raise ModelFileError(f"cannot read the checkpoint in {ckpt}: {' '.join(str(exc).split())}") from None
    try:
        return _restore(meta, tensors, model, optimizer, opts, split, device, memory)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise ModelFileError(f"the checkpoint in {ckpt} does not fit this run: {' '.join(str(exc).split())}") from None


def _restore(meta: dict, tensors: dict, model, optimizer, opts: TrainOptions, split: Split, device, memory=None):
    for key in _RESUME_MATCH:
        saved = meta["options"].get(key, getattr(TrainOptions, key))
        if saved != getattr(opts, key):
            raise InputError(f"resume needs the same {key} as the interrupted run ({saved}), got {getattr(opts, key)}")
    if "split" in meta and Split.from_state(meta["split"]) != split:
        saved = Split.from_state(meta["split"])
        raise InputError(f"the training data changed since the interrupted run: it had {saved.windows} windows "
                         f"({saved.held_out_windows} held out), the data now gives {split.windows} "
                         f"({split.held_out_windows} held out)")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            optim_state.setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
    optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if memory is not None:
        for name, stack in zip(("encoder", "decoder"), memory):
            stack.load_state(tensors, meta["memory"][name], f"memory.{name}", device)
    step = int(meta["step"])
    steps_per_epoch = math.ceil(split.train_windows / opts.batch_size)
    epoch, done = (int(meta["epoch"]), int(meta["batches"])) if "epoch" in meta else divmod(step, steps_per_epoch)
    return step, epoch, done, float(meta["elapsed_s"]), list(meta["history"])
