"""Byte-level BPE for the text domain (`tokenizer` bpe): trained on the training files, kept as its merges.

Vocabulary. Ids 0..255 are the 256 byte values; every later id is two earlier tokens joined by one merge. The
learned state (`bpe_merges` in the model's config.json, hashed in its fingerprint) is the merges in rank order
as little-endian uint16 pairs (left id, right id), base64: a merge whose result is not a token yet gives it the
next id, one whose result already is one (the trainer makes a few) reuses that id. `Vocabulary` rebuilds and
checks it like any untrusted input (ids that exist, no token over MAX_TOKEN_BYTES, at most MAX_BPE_VOCAB
tokens), and `Vocabulary.spelling` is the id -> bytes table that writers use, never a decode() to str.

Tokens. The text is pre-tokenized by the GPT-2 byte-level split (the `tokenizers` ByteLevel pre-tokenizer and
its regex, no normalisation) and each piece encoded by the merges (`tokenizers` BPE, offline). Input that is
not UTF-8 is still represented byte for byte: text is decoded with surrogate escapes (an invalid byte b becomes
U+DC00 + b), each invalid byte is its own token (its byte id), and the text on each side of it is tokenized
separately (`Vocabulary.encode`).

Streaming. `cut_segments` cuts decoded text only where the pre-tokenizer cuts anyway (`is_cut`): before ASCII
whitespace that follows a non-whitespace character, between two printable ASCII characters of different
classes (letter, digit, punctuation; not after an apostrophe, which may start "'s"), and next to an invalid
byte. Tokenizing the segments one by one gives the tokens of the whole text (tests/test_text_tokenizers.py).
Text with no such cut for a whole block (no space, line break or ASCII class change) is held until one comes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator
from functools import cached_property, lru_cache

import numpy as np

from seqcompress.errors import InputError

MIN_BPE_VOCAB, MAX_BPE_VOCAB = 257, 32768  # tokens; a .sqz header (1 MB) repeats the merges, 4 bytes each
MAX_MERGES = 2 * MAX_BPE_VOCAB  # merges whose result already is a token add none
MAX_TOKEN_BYTES = 128  # the longest token the trainer makes, and a hostile state may claim
_PACKED_CHARS = -(-MAX_MERGES * 4 // 3) * 4  # base64 of MAX_MERGES pairs

_ESCAPES = re.compile("([\udc80-\udcff]+)")  # invalid UTF-8 bytes, as decoding with surrogateescape gives them
_ASCII_SPACE = frozenset(" \t\n\r\x0b\x0c")  # whitespace to the pre-tokenizer's \s in every Unicode version
_MAYBE_SPACE = frozenset("\u180e\u200b\u2060\ufeff")  # not isspace(), but whitespace to some Unicode versions
_ASCII_CLASS = {chr(c): "L" if chr(c).isalpha() else "N" if chr(c).isdigit() else "P" for c in range(0x21, 0x7F)}


def byte_alphabet() -> list[str]:
    """The GPT-2 byte -> unicode table (256 printable characters) of the ByteLevel pre-tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


# ---- the learned state ---------------------------------------------------------------------------------
def pack(pairs: list[tuple[int, int]]) -> str:
    """Merges (left id, right id) in rank order -> the `bpe_merges` text."""
    return base64.b64encode(np.asarray(pairs, dtype="<u2").reshape(-1).tobytes()).decode("ascii")


class Vocabulary:
    """A byte-level BPE vocabulary rebuilt from its packed merges, checked: an InputError names what is wrong."""

    def __init__(self, packed: str) -> None:
        if not isinstance(packed, str) or len(packed) > _PACKED_CHARS:
            raise _bad(f"expected base64 text of at most {_PACKED_CHARS:,} characters, got "
                       f"{f'{len(packed):,} characters' if isinstance(packed, str) else type(packed).__name__}")
        try:
            raw = base64.b64decode(packed, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("it is not base64 text") from None
        if len(raw) % 4:
            raise _bad(f"{len(raw):,} bytes is not a whole number of (left, right) pairs of 2 bytes each")
        flat = np.frombuffer(raw, dtype="<u2").astype(np.int64)
        self.pairs = list(zip(flat[0::2].tolist(), flat[1::2].tolist()))
        if len(self.pairs) > MAX_MERGES:
            raise _bad(f"{len(self.pairs):,} merges, more than {MAX_MERGES:,}")
        pieces = [bytes([b]) for b in range(256)]
        ids = {piece: i for i, piece in enumerate(pieces)}
        seen: set[tuple[int, int]] = set()
        for rank, (left, right) in enumerate(self.pairs):
            if left >= len(pieces) or right >= len(pieces):
                raise _bad(f"merge {rank} joins token {max(left, right)}, which does not exist before it")
            if (left, right) in seen:
                raise _bad(f"merge {rank} repeats the pair ({left}, {right})")
            seen.add((left, right))
            joined = pieces[left] + pieces[right]
            if len(joined) > MAX_TOKEN_BYTES:
                raise _bad(f"merge {rank} makes a token of {len(joined)} bytes, more than {MAX_TOKEN_BYTES}")
            if joined not in ids:
                if len(pieces) == MAX_BPE_VOCAB:
                    raise _bad(f"it makes more than {MAX_BPE_VOCAB:,} tokens")
                ids[joined] = len(pieces)
                pieces.append(joined)
        self.spelling: list[bytes] = pieces  # id -> its bytes
        self.size = len(pieces)

    @cached_property
    def tokenizer(self):
        """The `tokenizers` Tokenizer of these merges (ByteLevel pre-tokenizer, BPE, nothing else)."""
        # Imported here: only bpe models need it, and `seqcompress --help` should not pay for it.
        from tokenizers import Tokenizer, models, pre_tokenizers

        alphabet = byte_alphabet()
        spelled = ["".join(alphabet[b] for b in piece) for piece in self.spelling]
        merges = [(spelled[left], spelled[right]) for left, right in self.pairs]
        tokenizer = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(spelled)}, merges=merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        return tokenizer

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of text decoded with surrogate escapes: each invalid byte its own token, the text
        between them tokenized separately."""
        parts = _ESCAPES.split(text)  # text, escapes, text, ...
        texts = [part for part in parts[0::2] if part]
        encoded = iter(self.tokenizer.encode_batch_fast(texts, add_special_tokens=False) if texts else [])
        out = []
        for i, part in enumerate(parts):
            if i % 2:
                out.append(np.array([ord(c) - 0xDC00 for c in part], dtype=np.int64))
            elif part:
                out.append(np.array(next(encoded).ids, dtype=np.int64))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _bad(problem: str) -> InputError:
    return InputError(f"bpe_merges is malformed: {problem}")


@lru_cache(maxsize=4)
def vocabulary(packed: str) -> Vocabulary:
    """The checked vocabulary of `packed` (built once per process for each model's merges)."""
    return Vocabulary(packed)


# ---- training --------------------------------------------------------------------------------------------
def train(texts: Iterable[str], vocab_size: int) -> str:
    """Learn merges from `texts` (decoded with surrogate escapes, each cut where `is_cut` allows) until the
    vocabulary holds `vocab_size` tokens or no pair occurs twice; returns the packed merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  max_token_length=MAX_TOKEN_BYTES)
    tokenizer.train_from_iterator((part for text in texts for part in _ESCAPES.split(text)[0::2] if part), trainer)
    return pack(_pairs_of(tokenizer.to_str()))


def _pairs_of(saved: str) -> list[tuple[int, int]]:
    """The trained tokenizer's merges as (left id, right id) of our numbering (see the module docstring)."""
    merges = json.loads(saved)["model"]["merges"]
    ids = {ch: b for b, ch in enumerate(byte_alphabet())}
    size = 256
    pairs = []
    for merge in merges:
        left, right = merge if isinstance(merge, list) else merge.split(" ")  # tokenizers < 0.20 wrote "a b"
        pairs.append((ids[left], ids[right]))
        if left + right not in ids:
            ids[left + right] = size
            size += 1
    return pairs


# ---- cutting a stream where the pre-tokenizer cuts ---------------------------------------------------------
def is_cut(before: str, after: str) -> bool:
    """Whether the pre-tokenizer always ends a piece between the characters `before` and `after`."""
    if "\udc80" <= before <= "\udcff" or "\udc80" <= after <= "\udcff":
        return True  # an invalid byte: the text on each side is tokenized separately anyway
    if after in _ASCII_SPACE:
        return not before.isspace() and before not in _MAYBE_SPACE
    kind_before, kind_after = _ASCII_CLASS.get(before), _ASCII_CLASS.get(after)
    return kind_before is not None and kind_after is not None and kind_before != kind_after and before != "'"


def last_cut(text: str, start: int = 1) -> int:
    """The last i in [max(start, 1), len(text)) with is_cut(text[i - 1], text[i]), or 0 when there is none."""
    for i in range(len(text) - 1, max(start, 1) - 1, -1):
        if is_cut(text[i - 1], text[i]):
            return i
    return 0


def cut_segments(blocks: Iterable[str]) -> Iterator[str]:
    """Decoded text blocks -> segments that tokenize one by one as the whole text does: each block up to its last
    cut, the rest carried into the next block (the whole block when it has no cut)."""
    carry = ""
    for block in blocks:
        text = carry + block
        cut = last_cut(text, len(carry))  # the carry holds no cut: it followed the last one
        if cut:
            yield text[:cut]
        carry = text[cut:]
    if carry:
        yield carry
