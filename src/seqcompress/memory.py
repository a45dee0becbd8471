"""Memory and recurrence across windows (`--memory M`; Transformer-XL, Dai et al. 2019).

A long file is cut into windows, and a window-local model knows nothing of the window before it: a window
boundary in the middle of a word or a gene is where it loses. With memory, every block of both stacks
attends, besides the keys of its own window, to its own inputs over the last M symbols of the same record
before the window. Those rows are detached: they are keys and values, and no gradient reaches an earlier
window. Queries are the window's own, so the latent length and W_S are unchanged.

Levels. A block reads its keys at one level: input symbols (level 0), or the rows after s reduction stages.
At level s a full window has r_s rows, and memory keeps R_s = ceil(M * r_s / n_max) of them, the last M
symbols' worth, whatever the level.

Links. Each window belongs to a stream and may start a record (`Link`; codecs say it in `Piece.links`):
an audio file's channels are interleaved streams, a FASTA record starts anew. Memory resets at a record
start and never crosses streams.

Full windows only. History is taken from windows of n_max symbols, so memory row positions are the window's
own positions shifted back by n_max per window, and relative position schemes (t5, alibi, rope) see the
true distance. A shorter window ends the chain (codecs cut short windows only at the end of a record).

Layer by layer. The windows of a batch are processed together: at block l, the memory of window t is
gathered from the block-l inputs of the windows before it in the same batch (and from what the stream
carried from the previous call, `Memory`). That is exactly what window-by-window recurrence computes
(tested), with the windows of a batch in parallel; training uses it on runs of consecutive windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from seqcompress.errors import InputError
from seqcompress.lengths import latent_positions, stage_lengths

MAX_STREAMS = 1024  # streams carrying memory at once (an audio file's channels are capped at 1,024)

__all__ = ["Link", "MemoryRows", "Memory", "MemoryBatch", "file_links", "run_links", "held_links", "own_links"]


class Link(NamedTuple):
    """Where a window continues: its stream (an audio channel; 0 for everything else), and whether it starts a
    record (memory resets before it)."""

    stream: int = 0
    start: bool = False


class MemoryRows(NamedTuple):
    """Memory of one block for a batch: states (B, R, D) (block inputs of earlier windows), mask (B, R) True
    where real (missing history is padding on the left), pos (R,) float32 positions relative to the window's
    start, and whether every row is real (known on the host, so no device sync asks)."""

    states: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    all_real: bool = False


def _first_starts(links: Iterable[Link], seen: set[int]) -> list[Link]:
    """The links with each stream's first window (one not in `seen`, which is updated) marked as a start."""
    out = []
    for link in links:
        out.append(Link(link.stream, link.start or link.stream not in seen))
        seen.add(link.stream)
    return out


def file_links(pieces: Iterable) -> Iterator:
    """The pieces of one file with `links` filled in, one Link per window: the piece's own (codecs that know
    records or streams), else stream 0; the first window of every stream in the file starts."""
    seen: set[int] = set()
    for piece in pieces:
        links = list(piece.links) if piece.links is not None else [Link()] * len(piece.windows)
        if len(links) != len(piece.windows):
            raise ValueError(f"a piece has {len(piece.windows)} windows and {len(links)} links")
        yield piece._replace(links=_first_starts(links, seen))


def run_links(links: list[Link]) -> list[Link]:
    """Links of consecutive windows taken out of their file (a training run): the first window of each stream
    in the run starts."""
    return _first_starts(links, set())


def own_links(links: Iterable[Link] | None, count: int) -> list[Link]:
    """The links of `count` in-memory windows: the given ones, or, without them, each window a record of its
    own (a model with memory then sees no memory)."""
    links = list(links) if links is not None else [Link(0, True)] * count
    if len(links) != count:
        raise InputError(f"{len(links)} links for {count} windows")
    return links


def held_links(items: Iterable[tuple[object, Link, bool]]) -> Iterator[tuple[object, Link]]:
    """(window, link) of the kept windows of a stream, from (window, link, kept) (one side of the held-out
    split): a kept window whose predecessor in its stream was not kept starts."""
    kept_last: dict[int, bool] = {}
    for window, link, kept in items:
        if kept:
            yield window, Link(link.stream, link.start or not kept_last.get(link.stream, False))
        kept_last[link.stream] = kept


class _Carried(NamedTuple):
    valid: dict[int, int]  # level -> real rows (the last ones) in each block's state
    states: dict[int, torch.Tensor]  # block -> (R_level, D)


class Memory:
    """What one stack (encoder or decoder) carries between calls, per stream: the last R rows of every block's
    inputs. `batch(links, lengths)` plans one call; with `carry=False` nothing is kept between calls (a single
    call whose windows' history lies within it)."""

    def __init__(self, span: int, n_max: int, ratios: list[float], carry: bool = True) -> None:
        if span < 1:
            raise InputError(f"memory must be at least 1 symbol, got {span}")
        self.span, self.n_max, self.carry = span, n_max, carry
        self.full_rows = stage_lengths(n_max, ratios)  # r_s: rows of a full window at each level
        self.cumulative = [math.prod(ratios[:s]) for s in range(len(ratios) + 1)]
        self.rows = [math.ceil(span * r / n_max) for r in self.full_rows]  # R_s
        self.streams: dict[int, _Carried] = {}

    def positions(self, level: int, device: torch.device) -> torch.Tensor:
        """(R_s,) positions of memory rows at `level`, in input-index units relative to the window's start."""
        r, rows = self.full_rows[level], self.rows[level]
        own = latent_positions(r, self.cumulative[level], device)  # (r_s,) a full window's own rows
        back = math.ceil(rows / r)
        return torch.cat([own - t * self.n_max for t in range(back, 0, -1)])[-rows:]

    def batch(self, links: list[Link], lengths: list[int]) -> "MemoryBatch":
        return MemoryBatch(self, list(links), list(lengths))

    def state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
        """What is carried, as tensors named `prefix.stream.block` and the real rows per stream and level (a
        training checkpoint keeps it, so a resumed run continues every stream's memory)."""
        tensors = {f"{prefix}.{s}.{block}": t.detach().cpu().contiguous()
                   for s, carried in self.streams.items() for block, t in carried.states.items()}
        return tensors, {str(s): {str(level): v for level, v in carried.valid.items()}
                         for s, carried in self.streams.items()}

    def load_state(self, tensors: dict[str, torch.Tensor], valid: dict, prefix: str,
                   device: torch.device | str = "cpu") -> None:
        streams = {}
        for s, levels in valid.items():
            head = f"{prefix}.{int(s)}."
            states = {int(k[len(head):]): t.to(device) for k, t in tensors.items() if k.startswith(head)}
            streams[int(s)] = _Carried({int(level): int(v) for level, v in levels.items()}, states)
        self.streams = streams


class MemoryBatch:
    """The memory plan of one call: for every window, which rows of history it sees, at every level.

    `read(block, level, x)` gives a block its MemoryRows, or None when no window of the batch has history
    (x: the block's inputs for the batch, (B, P, D)); `close()` keeps each stream's last R rows for the next
    call (streams the batch did not touch keep theirs; a stream with no history is dropped)."""

    def __init__(self, memory: Memory, links: list[Link], lengths: list[int]) -> None:
        if len(links) != len(lengths):
            raise InputError(f"{len(links)} links for {len(lengths)} windows")
        self.memory, self.links, self.lengths = memory, links, lengths
        first: dict[int, bool] = {}
        for link in links:
            first.setdefault(link.stream, link.start)
        # The carried streams this batch continues (pool order): those whose first window here is no start.
        continued = [s for s, start in first.items() if not start and s in memory.streams]
        self.slots = {s: i for i, s in enumerate(continued)}
        self._plans: dict[int, tuple[list, dict]] = {}
        self._index: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (level, P) -> index, mask
        self._pools: dict[int, tuple[int, torch.Tensor, int]] = {}  # block -> (level, pool, P), kept to carry

    def _plan(self, level: int) -> tuple[list, dict]:
        """Per window, its history as segments (source, index, first row, rows), oldest first, at most R rows;
        and per stream of the batch, the history after it. Source "c": a carried stream slot; "b": a window."""
        if level in self._plans:
            return self._plans[level]
        mem = self.memory
        rows, full = mem.rows[level], mem.full_rows[level]
        history: dict[int, list] = {}
        for stream, slot in self.slots.items():
            v = mem.streams[stream].valid.get(level, 0)
            history[stream] = [("c", slot, rows - v, v)] if v else []
        per_window = []
        for b, (link, length) in enumerate(zip(self.links, self.lengths)):
            seen = [] if link.start else history.get(link.stream, [])
            per_window.append(seen)
            history[link.stream] = _trim(seen + [("b", b, 0, full)], rows) if length == mem.n_max else []
        self._plans[level] = (per_window, history)
        return self._plans[level]

    def read(self, block: int, level: int, x: torch.Tensor) -> MemoryRows | None:
        mem = self.memory
        rows = mem.rows[level]
        b, p, d = x.shape
        per_window, _ = self._plan(level)
        if not mem.carry and not any(per_window):  # no window has history and nothing is kept: no pool to build
            return None
        carried = [mem.streams[s].states[block] for s in self.slots]
        pool = torch.cat([*(c.to(x.dtype) for c in carried), x.detach().reshape(b * p, d), x.new_zeros(1, d)])
        if mem.carry:
            self._pools[block] = (level, pool, p)
        if (level, p) not in self._index:  # the same for every block reading this level
            self._index[level, p] = _gather_index(per_window, rows, len(carried) * rows, p, pool.shape[0] - 1)
        index, mask = self._index[level, p]
        if not bool(mask.any()):  # no window has history: nothing to attend to
            return None
        # Positions stay float32 (as the layout's), whatever the dtype of the states under autocast.
        return MemoryRows(pool[index.to(x.device)], mask.to(x.device), mem.positions(level, x.device),
                          bool(mask.all()))

    def close(self) -> None:
        """Keep, per stream, the last R rows of every block's inputs (and how many of them are real)."""
        mem = self.memory
        if not mem.carry or not self._pools:
            return
        updated: dict[int, _Carried] = {}
        for block, (level, pool, p) in self._pools.items():
            rows = mem.rows[level]
            _, after = self._plan(level)
            names = sorted(after)
            index, mask = _gather_index([after[s] for s in names], rows, len(self.slots) * rows, p, pool.shape[0] - 1)
            states = pool[index.to(pool.device)]  # (S, R, D)
            for i, s in enumerate(names):
                carried = updated.setdefault(s, _Carried({}, {}))
                carried.valid[level] = int(mask[i].sum())
                carried.states[block] = states[i].detach()
        streams = dict(mem.streams)
        for s, carried in updated.items():
            if any(carried.valid.values()):
                streams[s] = carried
            else:
                streams.pop(s, None)
        if len(streams) > MAX_STREAMS:
            raise InputError(f"more than {MAX_STREAMS:,} interleaved streams carry memory at once")
        mem.streams = streams


def _trim(segments: list, rows: int) -> list:
    """The last `rows` rows of a list of segments (source, index, first, count)."""
    out, need = [], rows
    for source, index, first, count in reversed(segments):
        if need <= 0:
            break
        take = min(count, need)
        out.append((source, index, first + count - take, take))
        need -= take
    return out[::-1]


def _gather_index(histories: list[list], rows: int, batch_base: int, p: int, zero: int):
    """(len(histories), rows) indices into the pool [carried slots x rows, batch windows x p, zero row] and the
    mask of real rows; histories shorter than `rows` are padded on the left with the zero row."""
    index = torch.full((len(histories), rows), zero, dtype=torch.long)
    mask = torch.zeros(len(histories), rows, dtype=torch.bool)
    for i, segments in enumerate(histories):
        parts = [torch.arange(first, first + count) + (slot * rows if source == "c" else batch_base + slot * p)
                 for source, slot, first, count in segments]
        if parts:
            flat = torch.cat(parts)
            index[i, rows - len(flat):] = flat
            mask[i, rows - len(flat):] = True
    return index, mask
