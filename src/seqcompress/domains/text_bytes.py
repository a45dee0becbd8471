"""Byte-exact text (`tokenizer` bytes or bpe): a file is one stream of bytes, and every token spells bytes.

Tokens. bytes: each byte is a token (ids 0..255, vocabulary 256). bpe: the byte-level BPE learned by `fit`
(`seqcompress.domains.text_bpe`). Either way the file is taken as it is: no documents, no stripping, no
normalisation; line ends (CRLF too), a BOM, blank-line runs, a missing final newline and any non-ASCII text are
tokens like the rest. Input need not be UTF-8: both tokenizers represent any bytes (bpe gives each invalid byte
a token of its own), so a binary file round-trips too; only the model decides how well.

Windows and pieces. The token stream is cut into windows of seq_len tokens, only the last one shorter; at most
WINDOWS_PER_PIECE consecutive windows (fewer when seq_len is large: PIECE_TOKENS tokens) make a piece, whose
side information is {"crc32": the CRC-32 of the bytes its tokens spell}: four bytes per piece, which let a
decode say whether its output is the input byte for byte.

Writing. The writer concatenates the bytes of the predicted ids (an id -> bytes table, never a decode to str,
so a window or piece boundary inside a multi-byte character, and wrong predictions, still give definite bytes).
An id outside the vocabulary writes nothing and is counted; the report's note says whether every piece matched
its CRC-32. A decode whose tokens are all right reproduces the input file byte for byte.

Memory is bounded by a piece and a block of BLOCK_SIZE bytes, except that bpe holds text with no place where
its pre-tokenizer cuts (`text_bpe.cut_segments`) until one comes.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from seqcompress.domain import Codec, Piece, SideCheck, TokenObjective, Writer, check_data_paths, shorten, split_windows
from seqcompress.domains.text_bpe import cut_segments, vocabulary
from seqcompress.errors import InputError

if TYPE_CHECKING:
    from seqcompress.domains.text import TextSettings

BLOCK_SIZE = 1 << 18  # bytes read at a time
TRAIN_BLOCK = 1 << 16  # bytes read at a time for training: the trainer buffers 256 texts
WINDOWS_PER_PIECE = 64
PIECE_TOKENS = 1 << 18  # at most this many tokens in a piece, unless one window is longer
BYTES_VOCAB = 256

_SIDE = SideCheck("text")


# ---- reading -------------------------------------------------------------------------------------------
def byte_blocks(path: Path, block: int, limit: int | None = None) -> Iterator[bytes]:
    """The file's bytes (its first `limit` only, when given), `block` bytes at a time."""
    left = limit
    with path.open("rb") as file:
        while left is None or left > 0:
            data = file.read(block if left is None else min(block, left))
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data


def decoded_blocks(blocks: Iterable[bytes]) -> Iterator[str]:
    """Bytes -> text, decoded as UTF-8 with surrogate escapes (an invalid byte b becomes U+DC00 + b); a character
    cut by a block boundary is completed by the next block (at the end: its bytes become escapes)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    for data in blocks:
        if text := decoder.decode(data):
            yield text
    if text := decoder.decode(b"", final=True):
        yield text


def training_texts(paths: list[Path], share: float) -> Iterator[str]:
    """What the BPE trainer reads: the first round(B * share) of each file's B bytes, decoded and cut where the
    pre-tokenizer cuts (share 1: every byte)."""
    for path in paths:
        size = path.stat().st_size
        limit = None if share >= 1 else round(size * share)
        yield from cut_segments(decoded_blocks(byte_blocks(path, TRAIN_BLOCK, limit)))


# ---- ids <-> bytes -------------------------------------------------------------------------------------
class Spelling:
    """The bytes of token ids, looked up for many ids at once."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.size = len(pieces)
        self.lengths = np.array([len(p) for p in pieces], dtype=np.int64)  # (V,)
        self.starts = np.cumsum(self.lengths) - self.lengths  # (V,) where each token's bytes begin in `flat`
        self.flat = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        self.single = bool((self.lengths == 1).all())

    def join(self, ids: np.ndarray) -> bytes:
        """The concatenated bytes of ids (L,), each in [0, size)."""
        if self.single or not len(ids):
            return self.flat[ids].tobytes()
        lengths = self.lengths[ids]
        ends = np.cumsum(lengths)
        index = np.arange(int(ends[-1])) - np.repeat(ends - lengths - self.starts[ids], lengths)
        return self.flat[index].tobytes()


# ---- the codec -----------------------------------------------------------------------------------------
class ExactCodec(Codec):
    """Files <-> windows of the tokenizer bytes or bpe of the text domain's settings."""

    suffix = ".txt"
    settings: TextSettings

    def __init__(self, settings: TextSettings) -> None:
        super().__init__(settings)
        if settings.tokenizer == "bpe" and settings.bpe_merges is None:
            raise InputError("the bpe tokenizer is learned from the training files: call learn(paths) (fit does) "
                             "or load a trained model")

    @cached_property
    def spelling(self) -> Spelling:
        if self.settings.tokenizer == "bytes":
            return Spelling([bytes([b]) for b in range(BYTES_VOCAB)])
        return Spelling(vocabulary(self.settings.bpe_merges).spelling)

    def tokens(self, path: Path) -> Iterator[np.ndarray]:
        """The file's token ids (int64), a block at a time."""
        if self.settings.tokenizer == "bytes":
            for data in byte_blocks(path, BLOCK_SIZE):
                yield np.frombuffer(data, dtype=np.uint8).astype(np.int64)
            return
        vocab = vocabulary(self.settings.bpe_merges)
        for segment in cut_segments(decoded_blocks(byte_blocks(path, BLOCK_SIZE))):
            yield vocab.encode(segment)

    def iter_windows(self, path: Path, seq_len: int) -> Iterator[Piece]:
        """Windows (L,) int64 of the file's token stream, in pieces; reads BLOCK_SIZE bytes at a time."""
        if seq_len < 1:
            raise InputError(f"seq_len must be at least 1, got {seq_len}")
        check_data_paths([path])
        size = max(1, min(WINDOWS_PER_PIECE, PIECE_TOKENS // seq_len)) * seq_len  # tokens of a full piece
        held: list[np.ndarray] = []
        count = 0  # tokens in held
        for ids in self.tokens(path):
            held.append(ids)
            count += len(ids)
            if count >= size:
                stream = np.concatenate(held)
                cut = len(stream) - len(stream) % size
                for at in range(0, cut, size):
                    yield self._piece(stream[at : at + size], seq_len)
                held, count = [stream[cut:].copy()], len(stream) - cut
        if count:
            yield self._piece(np.concatenate(held), seq_len)

    def _piece(self, ids: np.ndarray, seq_len: int) -> Piece:
        side = {"crc32": zlib.crc32(self.spelling.join(ids))}
        return Piece(split_windows(torch.from_numpy(ids.copy()), seq_len), side)

    def open_writer(self, file: BinaryIO, name: str, header: dict) -> Writer:
        return ExactWriter(file, self.spelling)

    def render(self, window: torch.Tensor, limit: int) -> str:
        """The window's bytes as text (invalid UTF-8 as U+FFFD, line ends and tabs escaped), shortened."""
        ids = window.reshape(-1).to("cpu", torch.int64).numpy()
        data = self.spelling.join(ids[(ids >= 0) & (ids < self.spelling.size)])
        text = data.decode("utf-8", errors="replace")
        return shorten(text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t"), limit)


# ---- writing -------------------------------------------------------------------------------------------
class ExactWriter(Writer):
    """Writes the bytes of each piece's ids as it arrives; ids outside the vocabulary write nothing."""

    def __init__(self, file: BinaryIO, spelling: Spelling) -> None:
        self.file = file
        self.spelling = spelling
        self.pieces = 0
        self.differ = 0  # pieces whose bytes do not match their CRC-32
        self.invalid = 0  # ids outside the vocabulary, skipped

    def write(self, windows: list[torch.Tensor], side: dict) -> None:
        expected = _SIDE.integer(_SIDE.get(side, "crc32"), "a piece's CRC-32", 0, 0xFFFFFFFF)
        ids = (torch.cat([w.reshape(-1) for w in windows]).to("cpu", torch.int64).numpy() if windows
               else np.zeros(0, dtype=np.int64))
        known = (ids >= 0) & (ids < self.spelling.size)
        self.invalid += int(len(ids) - known.sum())
        data = self.spelling.join(ids[known])
        self.file.write(data)
        self.pieces += 1
        self.differ += zlib.crc32(data) != expected

    def close(self) -> dict:
        note = ("byte-exact: every piece matches the input's CRC-32" if not self.differ else
                f"not byte-exact: {self.differ} of {self.pieces} pieces differ from the input (CRC-32)")
        if self.invalid:
            note += f"; {self.invalid:,} predicted ids outside the vocabulary of {self.spelling.size:,} were skipped"
        return {"note": note}


# ---- the objective -------------------------------------------------------------------------------------
class ExactObjective(TokenObjective):
    """Cross-entropy and token accuracy, and which windows decode byte for byte (every token right):
    `exact_windows` is their share, `byte_exact` 1 when all are (the decoded files equal the inputs), else 0."""

    def __init__(self) -> None:
        super().__init__(never=None)  # padding is masked; every id is a real token

    def totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        return self.scored(self.prediction(output), target, mask)

    def scored(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Totals of predicted ids (B, N): token counts and windows (rows with a real token) all right."""
        correct = (prediction == target) & mask  # (B, N)
        real = mask.any(dim=1)  # (B,) windows, not padding rows
        exact = (correct == mask).all(dim=1) & real
        return {"correct_tokens": float(correct.sum()), "tokens": float(mask.sum()),
                "exact_windows": float(exact.sum()), "windows": float(real.sum())}

    def values(self, totals: dict[str, float]) -> dict[str, float]:
        windows, exact = totals.get("windows", 0.0), totals.get("exact_windows", 0.0)
        return {"token_accuracy": totals["correct_tokens"] / max(totals["tokens"], 1.0),
                "exact_windows": exact / max(windows, 1.0),
                "byte_exact": float(windows > 0 and exact == windows)}
