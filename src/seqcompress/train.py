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

import contextlib
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
from safetensors.torch import load as safetensors_load, load_file, save as safetensors_bytes
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset

from seqcompress import distributed, faults
from seqcompress.atomic import atomic_directory
from seqcompress.attention import length_mask
from seqcompress.compress import collate
from seqcompress.defaults import PAPER_DECAY_EPOCHS
from seqcompress.distributed import World
from seqcompress.domain import Domain, Objective, real_positions
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


def training_windows(source: Iterable[torch.Tensor], split: Split) -> Iterator[torch.Tensor]:
    """The windows of a stream that training draws its batches from, in stream order."""
    return (w for i, w in enumerate(source) if split.trains_on(i))


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


@dataclass
class Part:
    """One forward and backward of a step: padded windows (B, N, ...), lengths (B,), links (models with memory)
    and the weight of its loss (what the objective averages over, `Objective.loss_weight`). A placeholder
    (weight 0) is one window of a single symbol, for a rank whose share of a batch is empty: every rank must
    join every gradient all-reduce, with a gradient for every parameter (a window of length 0 would skip some)."""

    x: torch.Tensor
    lengths: torch.Tensor
    links: list[Link] | None
    weight: float
    placeholder: bool = False


@dataclass
class Share:
    """This rank's share of a global batch, as `grad_accum` parts, with the whole batch's symbols and loss
    weight."""

    parts: list[Part]
    symbols: int
    weight: float
    tokens: torch.Tensor | None = None  # a sampled softmax: the sorted token ids of the whole batch


class ShareOf:
    """collate_fn: a global batch of windows (or (window, link) pairs) -> this rank's Share.

    Item i belongs to shard i mod (ranks x grad_accum), or, with memory, to the shard of its lane (lane mod
    (ranks x grad_accum)), so a lane stays on one rank and its memory with it; rank r takes shards r,
    r + ranks, ... as its parts. Every rank sees the global batch, so it knows the whole batch's loss weight,
    which weights its parts: the gradients DDP averages are then one process's over the whole batch."""

    def __init__(self, world: World, accum: int, linked: bool, objective: Objective, sampled: bool = False,
                 noise: TokenNoise | None = None) -> None:
        self.world, self.accum, self.linked, self.objective = world, accum, linked, objective
        self.sampled = sampled  # name the whole batch's tokens: every part's candidates (`candidates`)
        self.noise = noise  # token noise (`TokenNoise`), drawn for the step the loop names in `step`
        self.step = 0

    def _shard(self, index: int, item) -> int:
        return shard_of(item[1].stream // MAX_STREAMS if self.linked else index, self.world, self.accum)

    def __call__(self, items: list) -> Share:
        windows = [item[0] for item in items] if self.linked else items
        if self.noise is not None:  # on the global batch, so every rank draws the same and knows all the tokens
            windows = self.noise(windows, self.step)
        weights = [self.objective.loss_weight(w[None], torch.ones(1, len(w), dtype=torch.bool)) for w in windows]
        parts = []
        for a in range(self.accum):
            shard = a * self.world.size + self.world.rank
            mine = [i for i, item in enumerate(items) if self._shard(i, item) == shard]
            if not mine:
                if self.world.parallel:  # one process simply has fewer parts in a short last batch
                    parts.append(placeholder(windows[0]))
                continue
            x, lengths = collate([windows[i] for i in mine])
            links = [items[i][1] for i in mine] if self.linked else None
            parts.append(Part(x, lengths, links, sum(weights[i] for i in mine)))
        tokens = torch.unique(torch.cat(windows)) if self.sampled else None
        return Share(parts, sum(len(w) for w in windows), sum(weights), tokens)


@dataclass
class TokenNoise:
    """Replace each training token, with probability `rate`, by a token drawn uniformly from the vocabulary.

    An autoencoder's target is its input, so a noised window is as true a training example as any: it shows
    the model every token of the vocabulary, also the ones the corpus never does. Without it, a token absent
    from the training windows has an embedding training only ever pushed away (as a negative), and no model
    rebuilds it; on a small corpus those tokens cap the held-out accuracy (`scripts/text_seen_tokens.py`).
    The draw depends on (seed, step) only, so every rank, and a resumed run, draws the same."""

    rate: float
    vocab: int
    seed: int
    never: int | None = None  # the objective's padding id, never a real token: never drawn

    def __call__(self, windows: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(_splitmix64(((self.seed << 32) ^ step) + _NOISE_STREAM)
                                                  & (2**63 - 1))
        choices = self.vocab - (self.never is not None)
        noised = []
        for window in windows:
            hit = torch.rand(window.shape, generator=generator) < self.rate
            drawn = torch.randint(choices, window.shape, generator=generator, dtype=window.dtype)
            if self.never is not None:
                drawn += drawn >= self.never  # skip the padding id
            noised.append(torch.where(hit, drawn, window))
        return noised


_NOISE_STREAM = 0x6E6F697365  # keeps the noise draw apart from the candidates' draw of the same (seed, step)


def candidates(tokens: torch.Tensor, drawn: int, vocab: int, seed: int, step: int) -> torch.Tensor:
    """The tokens a sampled softmax scores at one step: the batch's own (every target, and the tokens the
    batch makes most likely to be confused) and `drawn` more drawn uniformly from the vocabulary, so that every
    token is pushed down now and then; sorted, without repeats. The draw depends on (seed, step) only: every
    rank and every part of a step, and a resumed run, draw the same."""
    generator = torch.Generator().manual_seed(_splitmix64((seed << 32) ^ step) & (2**63 - 1))
    return torch.unique(torch.cat([tokens, torch.randint(vocab, (drawn,), generator=generator)]))


def shard_of(key: int, world: World, accum: int) -> int:
    """The shard of a batch item (its index, or its lane with memory); shard s is part s // ranks of rank
    s mod ranks."""
    return key % (world.size * accum)


def placeholder(like: torch.Tensor) -> Part:
    """A window of one symbol shaped as `like`, with weight 0 (see Part)."""
    return Part(like[:1].clone()[None], torch.ones(1, dtype=torch.long), None, 0.0, placeholder=True)


def share_of(items: Iterable, world: World, linked: bool = False) -> Iterator:
    """This rank's items of a stream (held-out windows): every ranks-th window, or, with memory, whole chains
    (a chain runs from a window that starts its stream to the next start), so memory carries within a rank."""
    if not world.parallel:
        yield from items
        return
    chain: dict[int, int] = {}
    chains = 0
    for index, item in enumerate(items):
        if linked:
            link = item[1]
            if link.start or link.stream not in chain:
                chain[link.stream], chains = chains, chains + 1
            index = chain[link.stream]
        if index % world.size == world.rank:
            yield item


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
    world: World | None = None,
) -> dict[str, float]:
    """The objective's metrics and mean loss per symbol over `windows` (streamed), in eval mode. With `linked`
    (a model with memory), `windows` are (window, link) pairs in stream order and memory carries across batches.
    `max_batches` caps the windows at that many batches. In a parallel `world` each rank scores its share
    (`share_of`) and the totals are summed over ranks, so every rank returns the metrics of all the windows."""
    device, world = torch.device(device), world or World()
    was_training = model.training
    model.eval()
    totals = objective.accumulator()
    loss_sum, count = 0.0, 0
    memory = (model.memory(), model.memory()) if linked else None
    if max_batches is not None:
        windows = itertools.islice(windows, max_batches * batch_size)
    first: list = []  # the stream's first window: the shape of a placeholder, for a rank whose share is empty
    stream = (first.append(item) or item if not first else item for item in windows)
    for batch in batches(share_of(stream, world, linked), batch_size, linked):
        x, lengths = batch[0].to(device), batch[1]  # lengths stay on the host, where the model reads them
        with autocast_for(device):
            out, _, _ = model(x, lengths, batch[2] if linked else None, memory)
        mask = length_mask(lengths.to(device), x.shape[1])  # (B, N)
        weight = objective.loss_weight(x, mask)  # what the batch's mean loss is over: the mean of the whole
        loss_sum += float(objective.loss(out, x, mask)) * weight
        count += weight
        totals.add(out.float(), x, mask)
    if world.parallel:
        if not totals.sums and first:  # the same totals' names on every rank, as zero sums
            empty = placeholder(first[0][0] if linked else first[0])
            x, lengths = empty.x.to(device), empty.lengths.to(device)
            with autocast_for(device):
                out, _, _ = model(x, lengths)
            totals.add(out.float(), x, torch.zeros_like(length_mask(lengths, x.shape[1])))
        totals.sums = distributed.sum_dict(totals.sums)
        loss_sum, count = distributed.sum_values([loss_sum, count])
    model.train(was_training)
    values = totals.values()
    values["loss"] = loss_sum / count if count > 0 else 0.0
    return values


class _Schedule:
    """Linear warm-up, then linear decay lr -> lr_end over `decay_steps`, then constant."""

    def __init__(self, opts: TrainOptions, steps_per_epoch: int) -> None:
        decay = PAPER_DECAY_EPOCHS if opts.decay_epochs is None else opts.decay_epochs  # `fit` gives the domain's
        self.opts, self.decay_steps = opts, max(1, round(decay * steps_per_epoch))

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
    world, device = distributed.start(pick_device(opts.device))
    if opts.sampled_softmax and (not model.config.vocab_size or model.head is not None):
        raise InputError("a sampled softmax (sampled_softmax) is for token domains (text, DNA); this model "
                         "outputs vectors")
    if opts.token_noise and (not model.config.vocab_size or model.head is not None):
        raise InputError("token noise (token_noise) is for token domains (text, DNA); this model outputs vectors")
    if opts.batch_size < world.size * opts.grad_accum:
        raise InputError(f"batch_size ({opts.batch_size}) must be at least the number of processes ({world.size}) "
                         f"times grad_accum ({opts.grad_accum})")
    model.to(device).train()
    if world.rank:  # dropout: a stream of its own per rank (rank 0 draws what one process would)
        torch.manual_seed(opts.seed + world.rank)
    # No device_ids: DDP would move every tensor argument to the GPU, the window lengths too, which the model
    # reads on the host (the loop moves the windows itself).
    net = DistributedDataParallel(model) if world.parallel else model
    if opts.compile:  # the training forward only; evaluation, checkpoints and saving use the module itself
        net = torch.compile(net)
    run = opts.run_windows if model.config.memory else 0  # memory: runs of consecutive windows, dealt to lanes
    memory = (model.memory(), model.memory()) if run else None  # carried from step to step, per lane
    split = scan(source, opts.val_fraction, opts.seed, block=run or 1)
    steps_per_epoch = math.ceil(split.train_windows / opts.batch_size)
    limits = [s for s in (opts.max_steps, opts.epochs and math.ceil(opts.epochs * steps_per_epoch)) if s]
    total_steps = min(limits) if limits else None
    schedule = _Schedule(opts, steps_per_epoch)
    fused = device.type == "cuda"  # one kernel for the whole update on a GPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, fused=fused)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())

    step, epoch, done, elapsed_before, history = 0, 0, 0, 0.0, []
    ckpt = Path(checkpoint_dir) / CHECKPOINT_DIR if checkpoint_dir else None
    if resume:
        if ckpt is None or not (ckpt / STATE_FILE).is_file():
            raise ModelFileError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
        step, epoch, done, elapsed_before, history = _load_checkpoint(ckpt, model, optimizer, opts, split, device,
                                                                      memory, world)

    dataset = TrainWindows(source, split, shuffle_buffer_size(opts, split), opts.seed, run, opts.batch_size)
    # A DataLoader draws a base seed at every iter(); its own generator keeps that draw off the global one,
    # whose sequence (dropout) a resumed run must continue exactly.
    noise = (TokenNoise(opts.token_noise, model.config.vocab_size, opts.seed, getattr(objective, "never", None))
             if opts.token_noise else None)
    # The loader reads no batch ahead (no workers), so the collate function builds each batch when the loop
    # asks for it and can be told the step it is for (the token noise's draw).
    collate_share = ShareOf(world, opts.grad_accum, bool(run), objective, opts.sampled_softmax > 0, noise)
    loader = DataLoader(dataset, batch_size=opts.batch_size, generator=torch.Generator(), collate_fn=collate_share)
    stream = _epoch_batches(loader, dataset, steps_per_epoch, epoch, done)
    held_out = lambda: _held_out(source, split, run)  # noqa: E731
    evaluating = dict(batch_size=opts.batch_size * 4, device=device, linked=bool(run), world=world)

    start, symbols_done, last_loss, checkpoint_error = time.perf_counter(), 0, float("nan"), None
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # a bad loss between reports, read at the end
    while total_steps is None or step < total_steps:
        elapsed = elapsed_before + time.perf_counter() - start
        # A time budget is rank 0's clock, broadcast (in a parallel job, at the report cadence).
        checks = opts.max_minutes is not None and (not world.parallel or step % opts.log_every == 0)
        if checks and distributed.rank0_says(elapsed >= opts.max_minutes * 60):
            break
        collate_share.step = step
        epoch, done, share = next(stream)
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        end_of_epoch = done == steps_per_epoch
        evaluates = end_of_epoch or bool(opts.eval_every and (step + 1) % opts.eval_every == 0)
        # A report reads the step's loss and totals off the device: the only host synchronisation of a step.
        report = evaluates or (step + 1) % opts.log_every == 0 or step + 1 == total_steps
        chosen = (candidates(share.tokens, opts.sampled_softmax, model.config.vocab_size, opts.seed, step)
                  if share.tokens is not None else None)
        loss_sum, totals = _step(net, model, objective, share, memory, scaler, device, world, report, chosen)
        nonfinite |= ~torch.isfinite(loss_sum)
        if report:
            keys = sorted(totals)
            loss_value, *values = distributed.sum_values([float(loss_sum), *(totals[k] for k in keys)])
            totals = dict(zip(keys, values))  # the whole batch's (every rank stops together on a bad loss)
            last_loss = loss_value / share.weight if share.weight > 0 else 0.0
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"loss became {last_loss} at step {step}; lower lr or check the data")
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        model.after_step()
        step += 1
        faults.point(f"train:step{step}:rank{world.rank}")
        symbols_done += share.symbols
        run_s = time.perf_counter() - start
        progress = Progress(
            step, total_steps, step / steps_per_epoch, last_loss,
            objective.values(totals)[objective.metric_name] if report else math.nan,
            lr, symbols_done / max(run_s, 1e-9), elapsed_before + run_s,
        )
        if on_step and report:
            on_step(progress)
        if end_of_epoch:
            epoch, done = epoch + 1, 0
        if evaluates:
            progress.held_out = evaluate(model, objective, held_out(), max_batches=opts.eval_batches, **evaluating)
            model.train()
            history.append({"step": step, "epoch": round(progress.epoch, 4), "elapsed_s": round(progress.elapsed_s, 1),
                            "train_loss": last_loss, **progress.held_out})
            if on_eval:
                on_eval(progress)
            if ckpt is not None and end_of_epoch:
                checkpoint_error = _try_checkpoint(ckpt, model, optimizer, opts, split, step, epoch, done,
                                                   progress.elapsed_s, history, record, memory, world)
    stream.close()
    if distributed.sum_values([float(nonfinite)])[0]:  # never evaluate or save weights a bad step has reached
        raise FloatingPointError(f"the loss became NaN or infinite between reports (--log-every {opts.log_every}, "
                                 f"last report at step {step}); lower lr or check the data")

    loop_s = time.perf_counter() - start
    seconds = elapsed_before + loop_s
    held_out_values = evaluate(model, objective, held_out(), **evaluating)
    if not history or history[-1]["step"] != step:
        history.append({"step": step, "epoch": round(step / steps_per_epoch, 4), "elapsed_s": round(seconds, 1),
                        "train_loss": last_loss, **held_out_values})
        if on_eval and step:  # the run's final figure, where no evaluation fell on its last step
            on_eval(Progress(step, total_steps, step / steps_per_epoch, last_loss, math.nan, schedule(step - 1),
                             symbols_done / max(loop_s, 1e-9), seconds, held_out_values))
    if ckpt is not None:
        checkpoint_error = _try_checkpoint(ckpt, model, optimizer, opts, split, step, epoch, done, seconds, history,
                                           record, memory, world)
    model.eval()
    return TrainResult(
        steps=step, epochs=step / steps_per_epoch, seconds=seconds, train_windows=split.train_windows,
        held_out_windows=split.held_out_windows, held_out_is_train=split.held_out_is_train, final_loss=last_loss,
        held_out=held_out_values, symbols_per_s=symbols_done / max(loop_s, 1e-9),
        history=history, split=split, checkpoint_error=checkpoint_error,
    )


def _step(net: torch.nn.Module, model: SequenceAutoencoder, objective: Objective, share: Share, memory,
          scaler: torch.amp.GradScaler, device: torch.device, world: World,
          report: bool = True, chosen: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward and backward of this rank's parts of one batch; returns the loss summed over the parts (each
    part's mean times its weight; a tensor on the device: nothing waits for it) and, to `report`, their totals.
    With `chosen` (a sampled softmax's candidates), the loss and totals are over those tokens only.
    Each part's mean loss is weighted by its share of the whole batch's loss weight (times the ranks, which
    DDP's average divides out), so the gradients are one process's over the whole batch; DDP all-reduces them
    once, in the backward of the last part."""
    loss_sum, totals = torch.zeros((), dtype=torch.float64, device=device), objective.accumulator()
    ddp = getattr(net, "_orig_mod", net)  # under torch.compile, the DistributedDataParallel module it wraps
    chosen = chosen.to(device, non_blocking=True) if chosen is not None else None
    for i, part in enumerate(share.parts):
        x, lengths = part.x.to(device, non_blocking=True), part.lengths  # lengths stay on the host (see forward)
        mask = length_mask(lengths.to(device, non_blocking=True), x.shape[1])  # (B, N)
        last = i == len(share.parts) - 1
        share_of_batch = part.weight * world.size / share.weight if share.weight > 0 else 0.0
        with ddp.no_sync() if not last and isinstance(ddp, DistributedDataParallel) else contextlib.nullcontext(), \
                model.statistics(not part.placeholder):
            with autocast_for(device):
                out, _, _ = net(x, lengths, part.links, memory if part.links is not None else None,
                                hidden=chosen is not None)
                if chosen is None:
                    loss = objective.loss(out, x, mask)
                else:
                    positions = real_positions(lengths, x.shape[1]).to(device, non_blocking=True)
                    loss, sampled = objective.sampled_loss(out, model.embed.weight, x, positions, chosen)
                aux = model.aux_loss()  # what a kernel adds (routing's commitment or balance); None for most
            term = loss * share_of_batch
            if aux is not None:
                term = term + aux * share_of_batch
            scaler.scale(term).backward()
        loss_sum += loss.detach().double() * part.weight
        if report and chosen is not None:  # a placeholder's as zeros: the same names on every rank
            totals.add_sums(objective.scored(sampled, x, mask if not part.placeholder else torch.zeros_like(mask)))
        elif report:
            with torch.no_grad():
                totals.add(out.detach().float(), x, mask if not part.placeholder else torch.zeros_like(mask))
    return loss_sum, totals.sums


def _held_out(source: WindowSource, split: Split, run: int) -> Iterator:
    """The held-out windows, with their links for a model with memory."""
    return held_out_linked(source, split) if run else held_out_windows(source, split)


# ---- checkpoints: weights, optimizer and random state in safetensors, counters in JSON -------------
# Options that fix the batch stream.
_RESUME_MATCH = ("seed", "batch_size", "val_fraction", "shuffle_buffer", "run_windows", "token_noise")


RUN_FILE, STATE_FILE, TENSORS_FILE = "run.json", "state.json", "train.safetensors"  # one checkpoint


def _try_checkpoint(ckpt: Path, *args) -> str | None:
    """Write a checkpoint; on a failure to write (disk full, read-only), say so and return why. Every rank calls
    it (the random and memory state of each is gathered); rank 0 writes."""
    try:
        _save_checkpoint(ckpt, *args)
    except (OSError, SeqCompressError) as exc:
        why = str(exc) if isinstance(exc, SeqCompressError) else f"{exc.strerror or exc}"
        if distributed.current().main:
            log.warning("no checkpoint written (%s); training goes on, but it cannot be resumed from here", why)
        return why
    return None


def _rank_state(memory) -> tuple[dict[str, torch.Tensor], dict]:
    """What one process carries besides the weights: its random state (dropout draws from the global
    generators: a resumed run continues their sequence) and, with memory, each of its lanes' memory."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    meta: dict = {}
    if memory is not None:  # what each lane's memory carries into the next step
        meta["memory"] = {}
        for name, stack in zip(("encoder", "decoder"), memory):
            carried, meta["memory"][name] = stack.state(f"memory.{name}")
            tensors.update(carried)
    return tensors, meta


def _gathered_state(memory, world: World) -> tuple[dict[str, torch.Tensor], dict]:
    """Every rank's `_rank_state` on rank 0 (safetensors and JSON bytes, never pickles): rank r's random state as
    `rank{r}.rng...` (rank 0's unprefixed), the memory of all lanes merged (each lane lives on one rank)."""
    tensors, meta = _rank_state(memory)
    if not world.parallel:
        return tensors, meta
    pieces = distributed.gather_bytes(safetensors_bytes(tensors) + b"\n" + json.dumps(meta).encode())
    if pieces is None:
        return {}, {}
    merged, merged_meta = {}, {"memory": {"encoder": {}, "decoder": {}}} if memory is not None else {}
    for rank, piece in enumerate(pieces):
        blob, text = piece.rsplit(b"\n", 1)  # the JSON has no newline
        for key, value in safetensors_load(blob).items():
            merged[key if rank == 0 or not key.startswith("rng.") else f"rank{rank}.{key}"] = value
        for name, streams in json.loads(text).get("memory", {}).items():
            merged_meta["memory"][name].update(streams)
    return merged, merged_meta


def _save_checkpoint(ckpt: Path, model, optimizer, opts: TrainOptions, split: Split, step: int, epoch: int,
                     done: int, elapsed: float, history, record: dict | None, memory=None,
                     world: World | None = None) -> None:
    """The checkpoint folder is replaced as a whole (seqcompress.atomic): a kill leaves the previous checkpoint
    or this one, never weights of one step with the counters of another."""
    world = world or World()
    extra, extra_meta = _gathered_state(memory, world)  # a collective: every rank takes part
    if not world.main:
        return
    state = optimizer.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors.update(extra)
    meta = {"step": step, "epoch": epoch, "batches": done, "elapsed_s": elapsed, "options": asdict(opts),
            "split": split.state(), "history": history, "param_groups": state["param_groups"], **extra_meta}
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


def _load_checkpoint(ckpt: Path, model, optimizer, opts: TrainOptions, split: Split, device, memory=None,
                     world: World | None = None):
    """Restore model, optimizer and random state; returns (step, epoch, batches consumed, elapsed_s, history)."""
    try:
        meta = json.loads((ckpt / STATE_FILE).read_text())
        tensors = load_file(str(ckpt / TENSORS_FILE))
    except (OSError, ValueError, SafetensorError, RecursionError) as exc:
        raise ModelFileError(f"cannot read the checkpoint in {ckpt}: {' '.join(str(exc).split())}") from None
    try:
        return _restore(meta, tensors, model, optimizer, opts, split, device, memory, world or World())
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise ModelFileError(f"the checkpoint in {ckpt} does not fit this run: {' '.join(str(exc).split())}") from None


def _restore(meta: dict, tensors: dict, model, optimizer, opts: TrainOptions, split: Split, device, memory=None,
             world: World = World()):
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
    for group in optimizer.param_groups:  # fused as this device allows, whichever device saved the checkpoint
        group["fused"] = torch.device(device).type == "cuda"
    rng = f"rank{world.rank}.rng" if world.rank else "rng"  # each rank's own random state (saved by as many)
    if f"{rng}.cpu" in tensors:
        torch.set_rng_state(tensors[f"{rng}.cpu"])
    cuda_states = [tensors[f"{rng}.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"{rng}.cuda.{i}" in tensors]
    if cuda_states and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if memory is not None:
        for name, stack in zip(("encoder", "decoder"), memory):
            stack.load_state(tensors, meta["memory"][name], f"memory.{name}", device)
            # this rank's lanes only: a lane's memory lives where ShareOf deals the lane
            stack.streams = {s: c for s, c in stack.streams.items()
                             if shard_of(s // MAX_STREAMS, world, opts.grad_accum) % world.size == world.rank}
    step = int(meta["step"])
    steps_per_epoch = math.ceil(split.train_windows / opts.batch_size)
    epoch, done = (int(meta["epoch"]), int(meta["batches"])) if "epoch" in meta else divmod(step, steps_per_epoch)
    return step, epoch, done, float(meta["elapsed_s"]), list(meta["history"])
