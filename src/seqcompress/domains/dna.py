"""DNA domain: FASTA/FASTQ files (plain or gzip) <-> nucleotide tokens, base accuracy.

A file holds many records; each record's sequence becomes its own token stream, cut into windows of
seq_len tokens (the last window of every record shorter; a window never spans two records). Everything
that is not the predicted base letters is JSON side information, so the writer rebuilds the file byte
for byte up to the bases the model gets wrong:

- the exact header lines (id and description), the line layout of every record (the length of each
  sequence line, run-length encoded), the line ending (LF or CRLF) and the final newline;
- soft-masking: lower-case runs, run-length encoded (the model sees case-folded bases);
- the exact letter of every rare IUPAC code (R Y S W K M B D H V U), which the model sees as one
  "other" token;
- FASTQ: the '+' lines and quality strings, unless `qualities` is "drop", in which case the writer
  produces FASTA.

Tokens (k = 1; the default is k = 3, below): PAD=0 (never read), A=1, C=2, G=3, T=4, N=5, OTHER=6. With k > 1, a record
is cut into non-overlapping k-base chunks: a chunk of k plain A/C/G/T bases is one of 4^k k-mer tokens
(ids 2 .. 4^k + 1), anything else (an N, a rare IUPAC code, or the record's last chunk when shorter than
k) is MIXED=1 and its exact bases are side information.

Streaming: the file is read line by line (long lines in blocks) and turned into pieces of at most
`DnaCodec.max_piece_windows` windows and about `max_piece_bytes` bytes. A piece's side information is a
list of record fragments in file order; a record longer than a piece is cut at a window boundary into
several fragments, and a line may continue from one fragment into the next. docs/dna.md describes the
layout and every edge case.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from seqcompress.domain import (Codec, Domain, Piece, Settings, SideCheck, TokenObjective, Writer, bundled,
                                check_data_paths, option, shorten, split_windows)
from seqcompress.format import run_length
from seqcompress.errors import FormatError, InputError
from seqcompress.memory import Link

# ---- alphabet and tokens ------------------------------------------------------------------------
PAD_ID = 0
OTHER_ID = 6  # k = 1: any rare IUPAC code; the letter itself is side information
MIXED_ID = 1  # k > 1: a chunk that is not k plain A/C/G/T bases; its bases are side information
KMER_OFFSET = 2  # k > 1: k-mer index i (base-4 digits A=0 C=1 G=2 T=3) is token i + 2
MAX_K = 6
RARE_IUPAC = "RYSWKMBDHVU"  # IUPAC nucleotide codes other than A C G T N (U: uracil)
REFERENCES = {"2-bit packing of A/C/G/T": 2.0}
DROPPED_NOTE = "the input was FASTQ encoded with qualities=drop: the output is FASTA, without quality strings"

# Internal base code of every byte: A=0 C=1 G=2 T=3 N=4, rare IUPAC=5, anything else invalid.
_N, _RARE, _INVALID = 4, 5, 255
_CODE = np.full(256, _INVALID, dtype=np.uint8)
for _code, _letters in enumerate(["A", "C", "G", "T", "N", RARE_IUPAC]):
    for _letter in _letters:
        _CODE[ord(_letter)] = _CODE[ord(_letter.lower())] = _code
_UPPER = np.uint8(0xDF)  # clears the ASCII case bit: valid bytes are all letters
_LOWER = np.uint8(0x20)
_BASE_BYTES = bytes(i for i in range(256) if _CODE[i] != _INVALID)  # bytes.translate deletes these: the rest is invalid
_QUALITY_BYTES = bytes(range(33, 127))  # '!'..'~'

_COMPRESSED_MAGIC = {  # formats people try that are not unpacked here: say so instead of "not FASTA"
    b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip",
}
_FRAGMENT_BYTES = 16  # what a fragment costs a piece beyond its bases, qualities and title
MAX_TITLE_BYTES = 1 << 20  # a header or '+' line is held whole while it is read: longer ones are refused
# Blank lines in one record, at most: they hold no bases, so nothing else bounds what their line layout
# (run-length encoded in the side information) expands to.
MAX_BLANK_LINES = 1 << 20
_SIDE = SideCheck("dna")


def vocab_size(k: int) -> int:
    return 7 if k == 1 else KMER_OFFSET + 4**k


class Tokens:
    """The tokenization for one k: bases <-> token ids, and the letters and A/C/G/T codes of every token."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.vocab_size = vocab_size(k)
        # Letters each token writes (V, k); side information overrides OTHER/MIXED positions.
        # PAD, OTHER and MIXED write N: only a misprediction leaves one there.
        letters = np.full((self.vocab_size, k), ord("N"), dtype=np.uint8)
        codes = np.full((self.vocab_size, k), -1, dtype=np.int64)  # base code per token position, -1: none
        if k == 1:
            letters[1:6, 0] = np.frombuffer(b"ACGTN", dtype=np.uint8)
            codes[1:5, 0] = np.arange(4)
        else:
            index = np.arange(4**k)
            digits = (index[:, None] // 4 ** np.arange(k - 1, -1, -1)[None, :]) % 4  # (4^k, k), first base first
            letters[KMER_OFFSET:] = np.frombuffer(b"ACGT", dtype=np.uint8)[digits]
            codes[KMER_OFFSET:] = digits
        self.letters = letters
        self.codes = codes

    @property
    def side_id(self) -> int:
        """The token whose bases always come from side information: OTHER (k = 1) or MIXED (k > 1)."""
        return OTHER_ID if self.k == 1 else MIXED_ID

    def count(self, length: int) -> int:
        """Tokens of `length` bases."""
        return -(-length // self.k)

    def tokenize(self, bases: bytes) -> tuple[np.ndarray, list[list]]:
        """Bases (L bytes, any case, validated) -> tokens (ceil(L / k),) int64 and the exact runs:
        [first base, repeat, unit] for every base (k = 1) or chunk (k > 1) the tokens do not spell out."""
        raw = np.frombuffer(bases, dtype=np.uint8)
        codes = _CODE[raw].astype(np.int64)  # (L,)
        upper = raw & _UPPER
        k = self.k
        if k == 1:
            return codes + 1, exact_runs(upper[:, None], codes == _RARE, 1)
        full = len(raw) // k
        chunks = codes[: full * k].reshape(full, k)  # (L // k, k)
        pure = (chunks < 4).all(axis=1)
        # (L // k,) k-mer index, first base most significant; N/IUPAC codes clipped (their chunks are MIXED anyway)
        index = chunks.clip(max=3) @ (4 ** np.arange(k - 1, -1, -1))
        tokens = np.where(pure, index + KMER_OFFSET, MIXED_ID)
        runs = exact_runs(upper[: full * k].reshape(full, k), ~pure, k)
        if len(raw) > full * k:  # the record's last, shorter chunk: always MIXED, bases kept exactly
            tokens = np.append(tokens, MIXED_ID)
            runs.append([full * k, 1, upper[full * k :].tobytes().decode("ascii")])
        return tokens, runs

    def spell(self, tokens: np.ndarray, length: int, runs: list[list]) -> np.ndarray:
        """Tokens (T,) -> upper-case bases (length,) uint8, with the exact runs written over them."""
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise FormatError(f"dna tokens must lie in [0, {self.vocab_size})")
        out = self.letters[tokens].reshape(-1).copy()  # (T * k,) >= length
        done = 0  # runs come in order and do not overlap, so writing them costs at most the record's length
        for start, repeat, unit in _SIDE.array(runs, "a fragment's exact runs"):
            end = start + repeat * len(unit)
            if not done <= start <= end <= len(out):
                raise FormatError("dna side information: an IUPAC run lies outside its record")
            out[start:end] = np.frombuffer((unit * repeat).encode("ascii"), dtype=np.uint8)
            done = end
        return out[:length]


# ---- run-length helpers ---------------------------------------------------------------------------
def case_runs(bases: np.ndarray) -> list[int]:
    """Alternating run lengths of upper- and lower-case letters, starting with an upper-case run
    (0 when the bases start lower-case): "ACgtA" -> [2, 2, 1]. Empty when there is no lower case."""
    lower = (bases & _LOWER) != 0  # (L,) bool
    if not lower.any():
        return []
    change = np.flatnonzero(lower[1:] != lower[:-1]) + 1
    bounds = np.concatenate(([0], change, [len(bases)]))
    runs = np.diff(bounds).tolist()
    return ([0] if lower[0] else []) + runs


def exact_runs(units: np.ndarray, marked: np.ndarray, k: int) -> list[list]:
    """Runs of identical marked units as [first base, repeat, unit string]: units (U, k) upper-case
    bytes, marked (U,) bool. Units are single bases (k = 1) or k-base chunks (k > 1)."""
    if not marked.any():
        return []
    key = np.where(marked[:, None], units, 0)  # (U, k): unmarked units become 0 and break no run
    starts = np.concatenate(([0], np.flatnonzero((key[1:] != key[:-1]).any(axis=1)) + 1))
    ends = np.concatenate((starts[1:], [len(units)]))
    return [[int(s) * k, int(e - s), units[s].tobytes().decode("ascii")]
            for s, e in zip(starts, ends) if marked[s]]


def check_lines(runs: object, length: int) -> list[list[int]]:
    """Run-length encoded line lengths [[width, count], ...] of `length` bases, checked before they are laid
    out: whole numbers, none negative, adding up to `length`, and at most MAX_BLANK_LINES empty lines."""
    blank = 0
    for run in _SIDE.array(runs, "a fragment's line lengths"):
        if not isinstance(run, list) or len(run) != 2:
            raise _SIDE.error("line lengths must be [width, count] pairs")
        width, count = _SIDE.integer(run[0], "a line width"), _SIDE.integer(run[1], "a line count")
        blank += 0 if width else count
    if blank > MAX_BLANK_LINES:
        raise _SIDE.error(f"line lengths claim {blank:,} blank lines; a record holds at most {MAX_BLANK_LINES:,}")
    if sum(w * n for w, n in runs) != length:
        raise FormatError("dna side information: a fragment's line lengths do not add up to its length")
    return runs  # type: ignore[return-value]


def layout_lines(data: np.ndarray, runs: list[list[int]], newline: bytes, open_end: bool = False) -> bytes:
    """Bytes (L,) cut into lines of the run-length encoded lengths, each followed by `newline`, except the
    last when `open_end` (the line continues in the next fragment)."""
    check_lines(runs, len(data))
    if len(runs) == 1 and runs[0][1] == 1 and not open_end:  # one line: a read, a short record
        return data.tobytes() + newline
    out, pos = [], 0
    nl = np.frombuffer(newline, dtype=np.uint8)
    for width, count in runs:
        block = data[pos : pos + width * count].reshape(count, width)  # (lines, width)
        out.append(np.concatenate([block, np.broadcast_to(nl, (count, len(nl)))], axis=1).tobytes())
        pos += width * count
    text = b"".join(out)
    if open_end:
        if not runs:
            raise FormatError("dna side information: an open fragment has no lines")
        text = text[: len(text) - len(newline)]
    return text


def apply_case(bases: np.ndarray, runs: list[int]) -> None:
    """Lower-case, in place, the odd runs of the alternating upper/lower run lengths."""
    if not runs:
        return
    if sum(runs) != len(bases) or min(runs) < 0:
        raise FormatError("dna side information: a fragment's case runs do not add up to its length")
    lower = np.repeat(np.arange(len(runs)) % 2 == 1, runs)  # (L,) bool
    bases[lower] |= _LOWER


def _split_case(runs: list[int], cuts: list[int]) -> list[list[int]]:
    """A record's alternating case runs split into fragments ending at the base positions `cuts`: each
    fragment's runs in `case_runs` form. One pass over runs and cuts (a run long enough visits each fragment
    it spans once), so a format-1 side with many runs and many fragments costs their sum, not product."""
    out: list[list[int]] = [[] for _ in cuts]
    f = pos = 0
    for i, n in enumerate(runs):
        end = pos + n
        while f < len(cuts):
            a, b = max(pos, cuts[f - 1] if f else 0), min(end, cuts[f])
            if b > a:
                if not out[f] and i % 2:
                    out[f].append(0)
                out[f].append(b - a)
            if end < cuts[f]:
                break
            f += 1
            if end == cuts[f - 1]:
                break
        pos = end
    return [part if len(part) > 1 else [] for part in out]


def _split_exact(runs: list[list], cuts: list[int]) -> list[list[list]]:
    """A record's exact runs (in order, apart) split into fragments ending at the base positions `cuts` (each a
    multiple of k): each fragment's runs, positions relative to its start. One pass, as `_split_case`."""
    out: list[list[list]] = [[] for _ in cuts]
    f = 0
    for first, repeat, unit in runs:
        end = first + repeat * len(unit)
        while f < len(cuts) and cuts[f] <= first:
            f += 1
        for g in range(f, len(cuts)):
            lo = cuts[g - 1] if g else 0
            a, b = max(first, lo), min(end, cuts[g])
            if b > a:
                out[g].append([a - lo, (b - a) // len(unit), unit])
            if end <= cuts[g]:
                break
    return out


def _split_lines(runs: list[list[int]], cuts: list[int]) -> list[tuple[list[int], bool]]:
    """A record's line lengths split into fragments ending at the base positions `cuts` (the last one is
    the record's length): per fragment, its line lengths and whether its last line continues. A line
    moves to the next fragment only when it has bases beyond the cut, as `iter_windows` does."""
    out: list[tuple[list[int], bool]] = [([], False) for _ in cuts]
    f = pos = 0
    for width, count in runs:
        for _ in range(count):
            left, segment = width, 0
            while left:
                room = cuts[f] - pos
                if room == 0:
                    if segment:
                        out[f][0].append(segment)
                        out[f] = (out[f][0], True)
                    f, segment = f + 1, 0
                    continue
                take = min(room, left)
                segment, left, pos = segment + take, left - take, pos + take
            out[f][0].append(segment)
    return out


# ---- reading ------------------------------------------------------------------------------------
def _name(title: str) -> str:
    """A record's id (the first word of its title) for messages."""
    return repr(title.split()[0]) if title.split() else "(no id)"


def _why_invalid(char: str) -> str:
    if char.isdigit():
        return "numbered sequence lines (GenBank style) are not FASTA"
    if char in "-.":
        return "alignment gaps are not supported, remove them first"
    if char == "*":
        return "'*' is a stop codon or terminator, not a nucleotide"
    if char in " \t\v\f":
        return "spaces or tabs inside sequence lines are not allowed"
    if char.isalpha() and char.isascii():
        return "only A C G T N and R Y S W K M B D H V U are read (is this a protein sequence?)"
    return "only A C G T N and R Y S W K M B D H V U are read"


def _utf8_missing(data: bytes) -> int:
    """How many bytes the UTF-8 character at the end of `data` still lacks (0 if complete or not UTF-8)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the character starts here
            size = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return max(size - back, 0)
    return 0


class _Lines:
    """The lines of a decompressed stream as blocks of at most `block` bytes, line breaks checked and removed.

    Iterating yields (data, done): part of a line without its line break, and whether the line ends
    there. A last line without a line break ends with (b"", True). While a block is handled, `number` is
    its 1-based line and `offset` its byte offset; `newline` is the file's line ending and `final_newline`
    whether the last line has one."""

    def __init__(self, path: Path, stream: BinaryIO, block: int) -> None:
        self.path, self.stream, self.block = path, stream, block
        self.newline: str | None = None
        self.final_newline = True
        self.number, self.offset = 1, 0

    def __iter__(self) -> Iterator[tuple[bytes, bool]]:
        read, limit = self.stream.readline, self.block
        offset, in_line = 0, False
        while True:
            data = read(limit)
            if not data:
                if in_line:  # the last line has no line break
                    self.final_newline = False
                    yield b"", True
                return
            self.offset = offset
            if data[-1:] == b"\r":  # a CR at the end of a block: a CRLF cut by the block size, or a lone CR
                more = read(1)
                data += more
                if more != b"\n":
                    self._lone_cr()
            elif data[-1] >= 0x80:
                data += read(_utf8_missing(data))  # a character cut by the block size: read the rest of it
            offset += len(data)
            done = data[-1:] == b"\n"
            if done:
                crlf = data[-2:-1] == b"\r"
                data = data[:-2] if crlf else data[:-1]
                newline = "\r\n" if crlf else "\n"
                if self.newline is None:
                    self.newline = newline
                elif newline != self.newline:
                    raise InputError(f"{self.path} mixes Windows (CRLF) and Unix (LF) line endings; "
                                     f"convert it to one style first")
            if 13 in data:  # a CR inside the line (an int test: `b"\r" in` is slower)
                self._lone_cr()
            yield data, done
            if done:
                self.number += 1
            in_line = not done

    def _lone_cr(self) -> None:
        raise InputError(f"{self.path} has a carriage return that does not end a line (old Mac line endings?); "
                         f"convert it to LF")


class _PieceBuilder:
    """Record fragments collected into pieces of at most `max_windows` windows and about `max_bytes` bytes.

    The reader calls, in file order: `start_record(title)`, `add_bases(data, done)` per block of a sequence
    line, then for FASTQ `end_sequence()`, `set_plus(plus)` and `add_quality(data, done)`, and at the end
    `finish(final_newline)`. Finished pieces collect in `ready`. A fragment that fills a piece by itself is
    cut at a window boundary (sequence) or anywhere (qualities) and continues in a new fragment."""

    def __init__(self, tokens: Tokens, seq_len: int, max_windows: int, max_bytes: int,
                 file_info: Callable[[], dict]) -> None:
        self.tokens, self.seq_len = tokens, seq_len
        self.unit = seq_len * tokens.k  # bases per full window
        self.max_windows, self.max_bytes = max(max_windows, 1), max_bytes
        self.file_info: Callable[[], dict] | None = file_info  # goes into the first piece
        self.ready: list[Piece] = []
        self.frags: list[dict] = []  # finished fragments of the piece being filled
        self.windows: list[torch.Tensor] = []
        self.links: list[Link] = []  # one per window: a record's first window starts (memory resets there)
        self.size = 0
        self.frag: dict | None = None  # the fragment being filled
        self.frag_windows: list[torch.Tensor] = []
        self.frag_size = 0  # its title, finished bases and qualities, in bytes
        self.cap = 0  # bases the fragment may hold, as last computed; 0: compute again
        self.in_sequence = False
        self.bases = bytearray()
        self.lines: list[int] = []
        self.line = 0  # bases of the current line inside this fragment
        self.quality = bytearray()
        self.quality_lines: list[int] = []
        self.quality_line = 0

    def take(self) -> list[Piece]:
        ready, self.ready = self.ready, []
        return ready

    # ---- sequence ----
    def start_record(self, title: str) -> None:
        self.end_record()
        self.frag, self.frag_windows = {"title": title}, []
        self.frag_size = len(title) + _FRAGMENT_BYTES
        self.cap = 0
        self.in_sequence = True

    def add_bases(self, data: bytes, done: bool) -> None:
        if len(self.bases) + len(data) <= self.cap:  # the usual case: the line fits
            self.bases += data
            if done:
                self.lines.append(self.line + len(data))
                self.line = 0
            else:
                self.line += len(data)
            return
        pos = 0
        while pos < len(data):
            room = self._base_room()
            if room <= 0:
                self._cut(sequence=True)
                continue
            part = data[pos : pos + room]
            self.bases += part
            self.line += len(part)
            pos += len(part)
        if done:
            self.lines.append(self.line)
            self.line = 0

    def _base_room(self) -> int:
        """Bases the fragment may still take: whole windows within what the piece has left; a fragment
        alone in its piece always gets one window."""
        allowed = min(self.max_windows - len(self.windows), (self.max_bytes - self.size - self.frag_size) // self.unit)
        if not self.frags:
            allowed = max(allowed, 1)
        self.cap = allowed * self.unit  # until the piece or the fragment changes
        return self.cap - len(self.bases)

    def end_sequence(self) -> None:
        if self.in_sequence:
            self._finish_sequence(open_end=False)

    def _finish_sequence(self, open_end: bool) -> None:
        assert self.frag is not None
        bases = bytes(self.bases)
        tokens, exact = self.tokens.tokenize(bases)
        lower = case_runs(np.frombuffer(bases, dtype=np.uint8))
        frag = self.frag
        frag["length"] = len(bases)
        frag["lines"] = run_length(self.lines)
        if open_end:
            frag["open"] = 1
        if lower:
            frag["lower"] = lower
        if exact:
            frag["exact"] = exact
        self.frag_windows = split_windows(torch.from_numpy(tokens), self.seq_len) if len(tokens) else []
        self.frag_size += len(bases)
        self.bases, self.lines, self.line = bytearray(), [], 0
        self.in_sequence = False

    # ---- FASTQ ----
    def set_plus(self, plus: int | str) -> None:
        assert self.frag is not None
        self.frag["plus"] = plus
        self.frag_size += len(plus) if isinstance(plus, str) else 1

    def add_quality(self, data: bytes, done: bool) -> None:
        pos = 0
        while pos < len(data):
            room = self.max_bytes - self.size - self.frag_size
            if not self.frags and not self.quality:
                room = max(room, 1)  # progress for a fragment alone in its piece
            if room <= 0:
                self._cut(sequence=False)
                continue
            part = data[pos : pos + room]
            self.quality += part
            self.quality_line += len(part)
            self.frag_size += len(part)
            pos += len(part)
        if done:
            self.quality_lines.append(self.quality_line)
            self.quality_line = 0

    def _finish_quality(self, open_end: bool) -> None:
        assert self.frag is not None
        if self.quality or self.quality_lines:
            self.frag["quality"] = self.quality.decode("ascii")
            self.frag["quality_lines"] = run_length(self.quality_lines)
            if open_end:
                self.frag["quality_open"] = 1
        self.quality, self.quality_lines, self.quality_line = bytearray(), [], 0

    # ---- fragments and pieces ----
    def _cut(self, sequence: bool) -> None:
        """The fragment has no room left: send the piece's earlier fragments, or, when it is alone, cut it
        here and continue the record in a new fragment."""
        if self.frags:
            self._emit()
            return
        if sequence:
            open_end = self.line > 0
            if open_end:
                self.lines.append(self.line)
            self._finish_sequence(open_end)
        else:
            open_end = self.quality_line > 0
            if open_end:
                self.quality_lines.append(self.quality_line)
            self._finish_quality(open_end)
        self._commit()
        self._emit()
        self.frag, self.frag_windows, self.frag_size, self.cap = {}, [], _FRAGMENT_BYTES, 0
        self.in_sequence = sequence

    def end_record(self) -> None:
        if self.frag is None:
            return
        self.end_sequence()
        self._finish_quality(open_end=False)
        self._commit()

    def _commit(self) -> None:
        assert self.frag is not None
        if self.frags and (len(self.windows) + len(self.frag_windows) > self.max_windows
                           or self.size + self.frag_size > self.max_bytes):
            self._emit()  # a fragment that ended without filling its piece may still not fit next to the others
        self.frags.append(self.frag)
        self.windows += self.frag_windows
        self.links += [Link(0, j == 0 and "title" in self.frag) for j in range(len(self.frag_windows))]
        self.size += self.frag_size
        self.frag, self.frag_windows, self.frag_size, self.cap = None, [], 0, 0

    def _emit(self, **extra: object) -> None:
        side: dict = {}
        if self.file_info is not None:
            side["file"] = self.file_info()
            self.file_info = None
        side["records"] = self.frags
        side.update(extra)
        self.ready.append(Piece(self.windows, side, self.links))
        self.frags, self.windows, self.links, self.size, self.cap = [], [], [], 0, 0

    def finish(self, final_newline: bool) -> None:
        self.end_record()
        self._emit(final_newline=final_newline)


class _Reader:
    """One pass over a FASTA or FASTQ file: validation, records and pieces (see `DnaCodec.iter_windows`)."""

    def __init__(self, codec: "DnaCodec", path: Path, seq_len: int) -> None:
        self.codec, self.path, self.seq_len = codec, path, seq_len

    def pieces(self) -> Iterator[Piece]:
        path = self.path
        with path.open("rb") as handle:
            magic = handle.read(6)
        packed = magic[:2] == b"\x1f\x8b"
        for prefix, kind in _COMPRESSED_MAGIC.items():
            if magic.startswith(prefix):
                raise InputError(f"{path} is {kind}-compressed; only plain or gzip FASTA/FASTQ is read, "
                                 f"so decompress it first")
        try:
            with (gzip.open(path, "rb") if packed else path.open("rb")) as stream:
                if b"\x00" in stream.read(65536):
                    raise InputError(f"{path} is binary data, not FASTA or FASTQ")
                stream.seek(0)
                yield from self._parse(stream)
        except (OSError, EOFError, zlib.error) as exc:
            if not packed:
                raise
            raise InputError(f"{path} is damaged gzip data ({exc})") from None

    def _decode(self, raw: bytes, offset: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path} is not FASTA or FASTQ: invalid UTF-8 at byte {offset + exc.start}") from None

    def _fastq_error(self, reason: str) -> InputError:
        return InputError(f"{self.path} is not valid FASTQ: {reason}")

    def _parse(self, stream: BinaryIO) -> Iterator[Piece]:
        path, codec = self.path, self.codec
        lines = _Lines(path, stream, max(codec.block_size, 2))
        keep_quality = codec.settings.qualities == "keep"
        fmt = ""

        def file_info() -> dict:
            info = {"format": fmt, "k": codec.tokens.k, "newline": lines.newline or "\n"}
            if fmt == "fastq" and not keep_quality:
                info["qualities"] = "drop"
            return info

        build = _PieceBuilder(codec.tokens, self.seq_len, codec.max_piece_windows, codec.max_piece_bytes, file_info)
        blocks = iter(lines)
        kind = ""  # of the line being read: "title", "plus", "sequence", "quality"; "" between lines
        text = bytearray()  # a header or '+' line being read
        text_offset = 0
        title, records, total = "", 0, 0
        blank = 0  # blank lines of the record (bounded: see MAX_BLANK_LINES)
        state = ""  # FASTQ: "sequence" or "quality", the part of the record being read
        seq_n = q_n = 0  # FASTQ: bases and quality characters of the record
        q_started = False
        for data, done in blocks:
            if not kind and done and not data and fmt:  # a blank line, inside a record's sequence or quality
                blank += 1
                if blank > MAX_BLANK_LINES:
                    raise InputError(f"{path}, line {lines.number}: record {_name(title)} has more than "
                                     f"{MAX_BLANK_LINES:,} blank lines")
            if not kind:  # a line starts
                mark = data[:1]
                if not fmt:
                    if mark not in (b">", b"@"):
                        self._refuse_first_line(data, blocks, done)
                    fmt = "fasta" if mark == b">" else "fastq"
                    kind = "title"
                elif fmt == "fasta":
                    kind = "title" if mark == b">" else "sequence"
                elif state == "sequence":
                    kind = "plus" if mark == b"+" else "sequence"
                elif mark == b"@" and q_n >= seq_n:  # Biopython's rule: '@' opens a record once the quality is complete
                    if q_n != seq_n:
                        raise self._fastq_error(f"Lengths of sequence and quality values differs for "
                                                f"{title.rstrip()} ({seq_n} and {q_n})")
                    kind = "title"
                else:
                    kind = "quality"
                text_offset = lines.offset + 1
            if kind == "sequence":
                if data.translate(None, _BASE_BYTES):
                    self._refuse_bases(data, title, lines)
                build.add_bases(data, done)
                seq_n += len(data)
            elif kind == "quality":
                if data.translate(None, _QUALITY_BYTES):
                    raise InputError(f"{path}, line {lines.number}: the quality of record {_name(title)} has "
                                     f"characters outside '!'..'~' or spaces")
                q_started = True
                q_n += len(data)
                if keep_quality:
                    build.add_quality(data, done)
            else:
                text += data
                if len(text) > MAX_TITLE_BYTES:
                    raise InputError(f"{path}, line {lines.number}: a {'header' if kind == 'title' else '+'} line "
                                     f"longer than {MAX_TITLE_BYTES:,} bytes; is this FASTA or FASTQ?")
                if done:
                    line = self._decode(bytes(text[1:]), text_offset)
                    text.clear()
                    if kind == "title":
                        title, records, blank = line, records + 1, 0
                        total += seq_n
                        build.start_record(title)
                        state, seq_n, q_n, q_started = "sequence", 0, 0, False
                    else:
                        second = line.rstrip()
                        if second and second != title.rstrip():
                            raise self._fastq_error("Sequence and quality captions differ")
                        build.end_sequence()
                        if keep_quality:
                            # 0: a bare '+', 1: '+' and the title again, else the text after '+' as it is
                            build.set_plus(0 if line == "" else 1 if line == title else line)
                        state = "quality"
            if done:
                kind = ""
            if build.ready:
                yield from build.take()
        if not fmt:  # a gzip file holding nothing
            raise InputError(f"{path} holds no FASTA or FASTQ, only whitespace")
        if fmt == "fastq":
            if state == "sequence":
                raise self._fastq_error("End of file without quality information" if seq_n else "Unexpected end of file")
            if not q_started:
                raise self._fastq_error("Unexpected end of file")
            if q_n != seq_n:
                raise self._fastq_error(f"Lengths of sequence and quality values differs for {title.rstrip()} "
                                        f"({seq_n} and {q_n})")
        total += seq_n
        if total == 0:
            raise InputError(f"{path}: its {records} record(s) hold no bases")
        build.finish(lines.final_newline)
        yield from build.take()

    def _refuse_first_line(self, data: bytes, blocks: Iterator[tuple[bytes, bool]], done: bool) -> None:
        head = bytearray(data)
        while not done and len(head) < 80:  # the first line may come in several blocks
            more, done = next(blocks)
            head += more
        first = head.decode("utf-8", errors="replace")
        if not first.strip() and not any(more.strip() for more, _ in blocks):
            raise InputError(f"{self.path} holds no FASTA or FASTQ, only whitespace")
        raise InputError(f"{self.path} is not FASTA or FASTQ: its first line should start with '>' or '@', "
                         f"not {first[:20]!r}")

    def _refuse_bases(self, data: bytes, title: str, lines: _Lines) -> None:
        """An InputError naming the first character of `data` that is not an IUPAC code, and its line."""
        pos = data.find(data.translate(None, _BASE_BYTES)[:1])
        char = ""
        for size in range(1, 5):  # a non-ASCII character takes 2 to 4 bytes
            try:
                char = data[pos : pos + size].decode("utf-8")[0]
                break
            except UnicodeDecodeError:
                continue
        if not char:
            raise InputError(f"{self.path} is not FASTA or FASTQ: invalid UTF-8 at byte {lines.offset + pos}")
        raise InputError(f"{self.path}, line {lines.number}: {char!r} in record {_name(title)} is not an IUPAC "
                         f"nucleotide code; {_why_invalid(char)}")


# ---- writing ------------------------------------------------------------------------------------
class DnaWriter(Writer):
    """Writes a FASTA or FASTQ file fragment by fragment, holding only the current record's title and counts.

    The newline after the last line written is held back until more follows, so a file without a final
    newline comes back without one."""

    def __init__(self, tokens: Tokens, file: BinaryIO, name: str, header: dict) -> None:
        self.tokens = tokens
        self.gzip = gzip.GzipFile(filename="", mode="wb", fileobj=file, compresslevel=9, mtime=0) \
            if name.endswith(".gz") else None
        self.out: BinaryIO = self.gzip if self.gzip is not None else file  # type: ignore[assignment]
        settings = header.get("settings") or {}
        self.drop_requested = isinstance(settings, dict) and settings.get("qualities") == "drop"
        self.info: dict | None = None
        self.fastq = self.dropped = False
        self.newline = b"\n"
        self.pending = b""  # the newline held back
        self.final_newline = True
        self.title: str | None = None  # the current record's
        self.bases = self.quality = 0  # the current record's counts, for the FASTQ check
        self.plus = False

    def write(self, windows: list[torch.Tensor], side: dict) -> None:
        with _SIDE.guard():
            data = self._piece(windows, side)
        if not data:
            return
        if data.endswith(self.newline):
            self.out.write(self.pending + data[: len(data) - len(self.newline)])
            self.pending = self.newline
        else:
            self.out.write(self.pending + data)
            self.pending = b""

    def _start(self, info: dict) -> None:
        k = _SIDE.integer(_SIDE.get(info, "k"), "k", 1, MAX_K)
        if k != self.tokens.k:
            raise FormatError(f"the latents hold k={k} tokens but this dna domain uses k={self.tokens.k}")
        if info["newline"] not in ("\n", "\r\n"):
            raise FormatError("dna side information: the line ending must be LF or CRLF")
        if info["format"] not in ("fasta", "fastq"):
            raise FormatError(f"dna side information: unknown format {info['format']!r}")
        self.info = info
        self.newline = info["newline"].encode("ascii")
        self.dropped = info["format"] == "fastq" and (info.get("qualities") == "drop" or self.drop_requested)
        self.fastq = info["format"] == "fastq" and not self.dropped

    def _piece(self, windows: list[torch.Tensor], side: dict) -> bytes:
        if self.info is None:
            self._start(_SIDE.get(side, "file"))
        nl = self.newline
        tokens = torch.cat([w.reshape(-1) for w in windows]).cpu().numpy().astype(np.int64) if windows \
            else np.zeros(0, dtype=np.int64)
        frags = _SIDE.array(_SIDE.get(side, "records"), "records")
        # Every length is checked against the decoded tokens before any fragment is spelled or laid out.
        lengths = [_fragment_length(frag) for frag in frags]
        if sum(self.tokens.count(n) for n in lengths) != len(tokens):
            raise FormatError(f"dna side information describes {sum(lengths)} bases "
                              f"but {len(tokens)} tokens were decoded")
        out, start = [], 0
        for frag, length in zip(frags, lengths):
            if "title" in frag:
                self._end_record()
                self.title = frag["title"]
                out.append((b"@" if self.fastq else b">") + self.title.encode("utf-8") + nl)
            elif self.title is None:
                raise FormatError("dna side information: a record continues before any record starts")
            if length or frag.get("lines"):
                if self.plus:
                    raise FormatError("dna side information: bases follow a record's '+' line")
                count = self.tokens.count(length)
                bases = self.tokens.spell(tokens[start : start + count], length, frag.get("exact", []))
                start += count
                apply_case(bases, frag.get("lower", []))
                out.append(layout_lines(bases, frag.get("lines", []), nl, bool(frag.get("open"))))
                self.bases += length
            if self.fastq and "plus" in frag:
                plus = frag["plus"]
                out.append(b"+" + ("" if plus == 0 else self.title if plus == 1 else plus).encode("utf-8") + nl)
                self.plus = True
            if self.fastq and "quality" in frag:
                if not self.plus:
                    raise FormatError("dna side information: qualities come before a record's '+' line")
                text = frag["quality"]
                if not isinstance(text, str) or not text.isascii() or text.encode().translate(None, _QUALITY_BYTES):
                    raise _SIDE.error("a quality string must be text of the characters '!'..'~'")
                if self.quality + len(text) > self.bases:
                    raise FormatError("dna side information: the qualities do not match the record lengths")
                quality = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
                out.append(layout_lines(quality, frag["quality_lines"], nl, bool(frag.get("quality_open"))))
                self.quality += len(quality)
        if "final_newline" in side:
            self.final_newline = bool(side["final_newline"])
        return b"".join(out)

    def _end_record(self) -> None:
        if self.fastq and self.title is not None and (not self.plus or self.quality != self.bases):
            raise FormatError("dna side information: the qualities do not match the record lengths")
        self.bases = self.quality = 0
        self.plus = False

    def close(self) -> dict:
        self._end_record()
        if self.final_newline:
            self.out.write(self.pending)
        if self.gzip is not None:
            self.gzip.close()  # flushes the gzip trailer; the caller's file stays open
        return {"note": DROPPED_NOTE} if self.dropped else {}


def _fragment_length(frag: object) -> int:
    if not isinstance(frag, dict):
        raise _SIDE.error(f"a record fragment must be a JSON object, got {type(frag).__name__}")
    return _SIDE.integer(frag.get("length", 0), "a fragment's length")


# ---- settings, codec, objective, domain -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DnaSettings(Settings):
    k: int = option(3, f"k-mer size: bases per token, 1 to {MAX_K} (vocabulary 7 for k = 1, 4^k + 2 above); "
                    "3 measured best at equal floats per base (docs/dna.md)")
    qualities: str = option("keep", "FASTQ quality strings: keep, or drop (the decoded file is then FASTA)",
                            encode=True)

    def validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise InputError(f"k (the k-mer size) must be an integer from 1 to {MAX_K}, got {self.k!r}")
        if self.qualities not in ("keep", "drop"):
            raise InputError(f"qualities must be 'keep' or 'drop', got {self.qualities!r}")


class DnaCodec(Codec):
    """FASTA/FASTQ files <-> windows of nucleotide tokens, streamed (see the module docstring)."""

    suffix = ".fasta"
    max_piece_windows = 64  # a piece holds at most this many windows ...
    max_piece_bytes = 1 << 20  # ... and about this many bytes of bases, qualities and titles (at least one window)
    block_size = 1 << 20  # longer lines are read in blocks of this many bytes

    settings: DnaSettings

    def __init__(self, settings: DnaSettings) -> None:
        super().__init__(settings)
        self.tokens = Tokens(settings.k)

    def iter_windows(self, path: Path, seq_len: int) -> Iterator[Piece]:
        """Windows (at most seq_len tokens) of each record, and fragments of side information, as the file is
        read. Piece side: {"file": {...}} (first piece only), {"records": [fragment, ...]},
        {"final_newline": bool} (last piece only); docs/dna.md lists the fragment fields."""
        path = Path(path)
        check_data_paths([path])
        if seq_len < 1:
            raise InputError(f"seq_len must be at least 1, got {seq_len}")
        return _Reader(self, path, seq_len).pieces()

    def open_writer(self, file: BinaryIO, name: str, header: dict) -> Writer:
        return DnaWriter(self.tokens, file, name, header)

    def references(self, path: Path, symbols: int) -> dict[str, float]:
        return dict(REFERENCES)

    def legacy_pieces(self, side: dict, lengths: list[int]) -> Iterator[tuple[int, dict]]:
        """Format 1 kept per-record lists (titles, lengths, lines, lower, exact, plus, quality_lines) and
        every quality string in one base64 zlib block: each record becomes a fragment (cut at window
        boundaries into several when it has more than `max_piece_windows` windows)."""
        with _SIDE.guard():
            yield from self._legacy_pieces(side, lengths)

    def _legacy_pieces(self, side: dict, lengths: list[int]) -> Iterator[tuple[int, dict]]:
        k = _SIDE.integer(_SIDE.get(side, "k"), "k", 1, MAX_K)
        fastq = side["format"] == "fastq"
        info = {"format": side.get("source_format", side["format"]), "k": k, "newline": side["newline"]}
        if side.get("qualities_dropped"):
            info["qualities"] = "drop"
        records = [_SIDE.integer(n, "a record length") for n in _SIDE.array(_SIDE.get(side, "lengths"), "lengths")]
        if sum(-(-n // k) for n in records) != sum(lengths):  # checked before the qualities are inflated
            raise FormatError("format-1 dna side information does not match the window lengths")
        # The quality block holds one character per base: it inflates to exactly that many bytes, no further.
        qualities = _SIDE.inflate(side["qualities"], "the quality block", size=sum(records)) if fastq else b""
        piece: dict = {"file": info, "records": []}
        count = size = w = q = 0
        for r, length in enumerate(records):
            # the record's windows: they add up to its tokens exactly, as no window spans two records
            need, windows = -(-length // k), []
            while need > 0 and w < len(lengths):
                windows.append(int(lengths[w]))
                need, w = need - windows[-1], w + 1
            if need:
                raise FormatError("format-1 dna side information does not match the window lengths")
            groups = [windows[i : i + self.max_piece_windows] for i in range(0, len(windows), self.max_piece_windows)]
            lines, lower, exact = check_lines(side["lines"][r], length), side["lower"][r], side["exact"][r]
            if len(groups) > 1:  # a long record: cut at window boundaries like iter_windows
                cuts = [min(tokens * k, length) for tokens in np.cumsum([sum(g) for g in groups]).tolist()]
                parts = [(run_length(segments), open_end, case, exact_part)
                         for (segments, open_end), case, exact_part in zip(_split_lines(lines, cuts),
                                                                           _split_case(lower, cuts),
                                                                           _split_exact(exact, cuts))]
            else:
                cuts, parts = [length], [(lines, False, lower, exact)]
            start = 0
            for i, (end, (frag_lines, open_end, frag_lower, frag_exact)) in enumerate(zip(cuts, parts)):
                frag: dict = {"title": side["titles"][r]} if i == 0 else {}
                frag.update(length=end - start, lines=frag_lines)
                if open_end:
                    frag["open"] = 1
                if frag_lower:
                    frag["lower"] = frag_lower
                if frag_exact:
                    frag["exact"] = frag_exact
                if fastq and i == len(cuts) - 1:
                    frag.update(plus=side["plus"][r], quality=qualities[q : q + length].decode("ascii"),
                                quality_lines=side["quality_lines"][r])
                    q += length
                n = len(groups[i]) if groups else 0
                frag_size = _FRAGMENT_BYTES + (end - start) * (2 if fastq else 1) + len(frag.get("title", ""))
                if piece["records"] and (count + n > self.max_piece_windows or size + frag_size > self.max_piece_bytes):
                    yield count, piece
                    piece, count, size = {"records": []}, 0, 0
                piece["records"].append(frag)
                count, size, start = count + n, size + frag_size, end
        if w != len(lengths) or q != len(qualities):
            raise FormatError("format-1 dna side information does not match the window lengths or qualities")
        piece["final_newline"] = bool(side["final_newline"])
        yield count, piece


class DnaObjective(TokenObjective):
    """Cross-entropy over tokens; the headline metric counts bases the written file gets right."""

    metric_name = "base_accuracy"

    def __init__(self, k: int) -> None:
        super().__init__(never=PAD_ID)
        self.tokens = Tokens(k)
        self.codes = torch.from_numpy(self.tokens.codes)  # (V, k) base code per token position, -1: none

    def scored(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Sums over real positions of the predicted tokens (B, N). A base counts as correct when the written
        file gets it right: rare IUPAC codes (k = 1) and MIXED chunks (k > 1) are restored from side
        information whatever the model predicts there."""
        k = self.tokens.k
        token_ok = (pred == target) & mask
        codes = self.codes.to(target.device)
        true_codes, pred_codes = codes[target], codes[pred]  # (B, N, k), -1 where a token spells no A/C/G/T
        acgt = (true_codes >= 0) & mask[..., None]  # (B, N, k)
        acgt_ok = acgt & (true_codes == pred_codes)
        side_exact = (target == self.tokens.side_id) & mask  # (B, N)
        if k == 1:
            base_ok = token_ok | side_exact  # N is a token: right only when predicted
        else:
            base_ok = acgt_ok.sum(-1) + side_exact * k  # bases right per token, (B, N)
        return {
            "correct_bases": float(base_ok.sum()),
            "bases": float(mask.sum()) * k,
            "correct_acgt": float(acgt_ok.sum()),
            "acgt": float(acgt.sum()),
            "correct_tokens": float(token_ok.sum()),
            "tokens": float(mask.sum()),
        }

    def values(self, totals: dict[str, float]) -> dict[str, float]:
        return {
            "base_accuracy": totals["correct_bases"] / max(totals["bases"], 1.0),
            "acgt_accuracy": totals["correct_acgt"] / max(totals["acgt"], 1.0),
            "token_accuracy": totals["correct_tokens"] / max(totals["tokens"], 1.0),
        }


class DnaDomain(Domain):
    name = "dna"
    settings_class = DnaSettings
    default_seq_len = 512
    # Held-out species, 5 minutes: 3-mers at ratio 1/2 reach 0.941 when the rate falls over 5 epochs and 0.987
    # over 50 (docs/dna.md, "Settings"): on DNA the model keeps learning fast at 1e-3 long after the paper's decay.
    default_decay_epochs = 50.0

    settings: DnaSettings

    def make_codec(self) -> DnaCodec:
        return DnaCodec(self.settings)

    def make_objective(self) -> DnaObjective:
        return DnaObjective(self.settings.k)

    def model_fields(self) -> dict:
        return {"vocab_size": vocab_size(self.settings.k)}

    def default_data(self) -> list[Path]:
        """Four slices of S. cerevisiae chromosome I (230 kbp, gzip FASTA)."""
        return [bundled("yeast_sample.fa.gz")]

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """The window's bases; '?' where the letter lives in side information (OTHER, MIXED) or for PAD."""
        tokens = self.codec.tokens
        ids = window.long().clamp(0, tokens.vocab_size - 1).cpu().numpy()
        letters = tokens.letters[ids].copy()  # (N, k)
        letters[(ids == tokens.side_id) | (ids == PAD_ID)] = ord("?")
        return shorten(letters.tobytes().decode("ascii"), limit)
