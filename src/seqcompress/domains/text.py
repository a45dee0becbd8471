"""Text domain: text files as tokens, token accuracy; the setting `tokenizer` chooses which tokens.

    bert    (the default, and what every model saved before the setting used) BERT uncased WordPiece over the
            vocabulary shipped in the package: documents, lower-cased and normalised. This module.
    bpe     a byte-level BPE that `learn` trains on the training files (at most `bpe_vocab` tokens), saved in
            the model as its merges (`seqcompress.domains.text_bpe`).
    bytes   the file's bytes, 256 tokens.

bpe and bytes read a file as one stream of bytes and decode byte for byte when every token is right, whatever
the bytes (`seqcompress.domains.text_bytes`: codec, writer, objective). The rest of this docstring is bert.

A text file is a sequence of documents separated by blank lines. Each document is tokenized with the BERT
uncased WordPiece vocabulary shipped in the package (no hub download) and followed by [SEP]; the file's token
stream is cut into windows of seq_len tokens, only the last one shorter, so windows span documents.

Pieces: at most WINDOWS_PER_PIECE consecutive windows (fewer when seq_len is large: PIECE_TOKENS tokens), with
the side information {"documents": [n, ...]}: the token count (without its [SEP]) of each document whose [SEP]
lies in the piece, in order. A document spans as many pieces as its tokens do; a piece inside a long document
lists none. The writer takes document boundaries from these counts, never from predicted [SEP]s: it consumes
n + 1 tokens per listed document (the last one, at the [SEP] position, dropped; so are predicted [SEP], [PAD]
and [CLS] inside a document), and the tokens after a piece's last listed document begin the next one. Output:
each document detokenized, joined by a blank line ("\\n\\n"), then a final "\\n".

Memory is bounded by a piece and a block of text, with two exceptions stated where they arise: a document with
no space or line break for more than DOCUMENT_SLICE characters is read whole (`_segments`), and the writer holds
a document until its end when it has no word boundary to cut at (`TextWriter`).
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import re
from collections import deque
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from seqcompress.domain import (Codec, Domain, Objective, Piece, Settings, TokenObjective, Writer, bundled,
                                check_data_paths, option, shorten, split_windows)
from seqcompress.domains.text_bpe import MAX_BPE_VOCAB, MIN_BPE_VOCAB, vocabulary
from seqcompress.domains.text_bpe import train as train_bpe
from seqcompress.domains.text_bytes import BYTES_VOCAB, ExactCodec, ExactObjective, training_texts
from seqcompress.errors import FormatError, InputError

PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 100, 101, 102
VOCAB_SIZE = 30522
TOKENIZER = "bert-base-uncased-wordpiece"

BLOCK_SIZE = 1 << 18  # bytes read at a time
DOCUMENT_SLICE = 1 << 18  # characters of an unfinished document held before tokenizing its start
BATCH_CHARS = 1 << 16  # characters tokenized in one call
WINDOWS_PER_PIECE = 64
PIECE_TOKENS = 1 << 18  # at most this many tokens in a piece, unless one window is longer
WRITER_SLICE = 1 << 16  # tokens of one document the writer holds before detokenizing its start

_DOC_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")  # a blank line and all the whitespace after it
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_OPEN_LINE = re.compile(r"\n[ \t\r\f\v]*\Z")  # a line break that the next text may turn into a blank line
_SEPARATORS = " \n\t\r"  # whitespace that separates words for the tokenizer (\v, \f, \x1c-\x1f, \x85 are dropped)
_LONG_RUN = 4096  # characters of trailing whitespace held before shortening it


def split_documents(text: str) -> list[str]:
    """Documents are separated by one or more blank lines; inner line breaks belong to the document."""
    return [doc.strip() for doc in _DOC_BREAK.split(text) if doc.strip()]


@cache
def tokenizer():
    """The BERT uncased WordPiece tokenizer over the shipped vocabulary (loaded once)."""
    # Imported here: transformers takes about a second to import, which `--help` should not pay.
    from transformers import BertTokenizer

    path = bundled("vocab.txt")
    # transformers 5 silently ignores vocab_file=; vocab= is the argument that works.
    tok = BertTokenizer(vocab=str(path), do_lower_case=True)
    if tok.vocab_size != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer loaded {tok.vocab_size} entries from {path}, expected {VOCAB_SIZE}")
    return tok


def detokenize(ids: list[int]) -> str:
    """Text of token ids, as format 1 wrote each document (lowercased, spaces cleaned up around punctuation)."""
    return tokenizer().decode(ids, clean_up_tokenization_spaces=True)


# ---- settings ------------------------------------------------------------------------------------------
TOKENIZERS = ("bert", "bpe", "bytes")
BPE_VOCAB = 8192  # the default size of a learned bpe vocabulary


@dataclasses.dataclass(frozen=True)
class TextSettings(Settings):
    """The tokenizer (a user option) and what it learned. bert is what models saved before this option used:
    their keys ("tokenizer": "bert-base-uncased-wordpiece", "vocab_size") load as tokenizer bert, and a bert
    model saves exactly those keys again (`state`); bpe adds its size option and learned merges."""

    tokenizer: str = option("bert", "bert (lowercased WordPiece, the vocabulary shipped; the default), bpe (a "
                            "byte-level BPE that fit learns from the training files) or bytes (raw bytes, 256 "
                            "tokens); bpe and bytes decode byte for byte when every token is right")
    bpe_vocab: int = option(BPE_VOCAB, f"tokenizer bpe: the most tokens its vocabulary may hold ({MIN_BPE_VOCAB} to "
                            f"{MAX_BPE_VOCAB})")
    vocab_size: int | None = option(None, "the number of tokens of the tokenizer", learned=True)
    bpe_merges: str | None = option(None, "tokenizer bpe: the learned merges (base64 uint16 id pairs)", learned=True)

    def __post_init__(self) -> None:
        if self.tokenizer == TOKENIZER:  # the spelling of models saved before the option
            object.__setattr__(self, "tokenizer", "bert")
        super().__post_init__()
        if self.vocab_size is None:
            object.__setattr__(self, "vocab_size", self.tokenizer_size())

    def validate(self) -> None:
        if not isinstance(self.tokenizer, str) or self.tokenizer not in TOKENIZERS:
            raise InputError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        vocab = self.bpe_vocab
        if isinstance(vocab, bool) or not isinstance(vocab, int) or not MIN_BPE_VOCAB <= vocab <= MAX_BPE_VOCAB:
            raise InputError(f"bpe_vocab must be a whole number from {MIN_BPE_VOCAB} to {MAX_BPE_VOCAB}, got {vocab!r}")
        if self.tokenizer != "bpe" and vocab != BPE_VOCAB:
            raise InputError(f"bpe_vocab is an option of tokenizer bpe, not {self.tokenizer}; set tokenizer=bpe too")
        if self.tokenizer != "bpe" and self.bpe_merges is not None:
            raise InputError(f"bpe_merges belong to tokenizer bpe, not {self.tokenizer}")
        if self.bpe_merges is not None and not isinstance(self.bpe_merges, str):
            raise InputError(f"bpe_merges must be base64 text, got {type(self.bpe_merges).__name__}")
        size = self.tokenizer_size()  # checks the merges (an InputError naming bpe_merges)
        if self.tokenizer == "bpe" and size is not None and size > vocab:
            raise InputError(f"bpe_merges make {size} tokens, more than bpe_vocab ({vocab})")
        given = self.vocab_size
        if given is not None and (type(given) is not int or given != size):
            if size is None:
                raise InputError("vocab_size is learned with the bpe merges; a state without bpe_merges has none")
            raise InputError(f"vocab_size must be {size} (the size of {self.tokenizer_name}), got {given!r}")

    @property
    def tokenizer_name(self) -> str:
        return {"bert": TOKENIZER, "bpe": "the learned bpe vocabulary", "bytes": "bytes"}[self.tokenizer]

    def tokenizer_size(self) -> int | None:
        """Tokens of the chosen tokenizer; None for bpe before it is learned."""
        if self.tokenizer == "bert":
            return VOCAB_SIZE
        if self.tokenizer == "bytes":
            return BYTES_VOCAB
        return None if self.bpe_merges is None else vocabulary(self.bpe_merges).size

    def state(self) -> dict:
        """bert: exactly the keys of models saved before the tokenizer option (so their config.json, .sqz headers
        and fingerprints stay the same); bytes: the tokenizer and size; bpe: also its option and merges."""
        name = TOKENIZER if self.tokenizer == "bert" else self.tokenizer
        out = {"tokenizer": name, "vocab_size": self.vocab_size}
        if self.tokenizer == "bpe":
            out.update(bpe_vocab=self.bpe_vocab, bpe_merges=self.bpe_merges)
        return out

    def replace(self, **changes: Any) -> "TextSettings":
        if "vocab_size" not in changes and {"tokenizer", "bpe_merges"} & set(changes):
            changes["vocab_size"] = None  # derived again from the new tokenizer
        return dataclasses.replace(self, **changes)


# ---- reading -------------------------------------------------------------------------------------------
def _utf8_blocks(path: Path, kind: str) -> Iterator[str]:
    """The text of a UTF-8 file, a block at a time (a leading BOM dropped), or an InputError naming `kind`
    for binary data or invalid UTF-8 (the messages of `decode_utf8`, with the byte offset in the file)."""
    with path.open("rb") as file:
        if b"\x00" in file.read(65536):
            raise InputError(f"{path} is binary data, not {kind}")
        file.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset, first = 0, True  # offset: file position of the next block
        while True:
            block = file.read(BLOCK_SIZE)
            start = offset - len(decoder.getstate()[0])  # file position of the bytes the decoder sees
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise InputError(f"{path} is not {kind}: invalid UTF-8 at byte {start + exc.start}") from None
            offset += len(block)
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            if text:
                yield text
            if not block:
                return


def _short_run(run: str) -> str:
    """A short whitespace run that splits documents and tokenizes as `run` does before any text: a blank line if
    it holds one; a line break if it ends in one that the next text may complete; else each character it holds,
    once (every whitespace character either separates words or is dropped by the tokenizer)."""
    if _BLANK_LINE.search(run):
        return "\n\n"
    if _OPEN_LINE.search(run):
        return "\n"
    chars = set(run)
    if "\n" in chars:
        chars = (chars - {"\n"}) | {" "}
    return "".join(sorted(chars))


def _segments(path: Path) -> Iterator[tuple[str, bool]]:
    """The file's documents, stripped, as (text, ends_document) segments, exactly as `split_documents` splits the
    whole text. A document longer than DOCUMENT_SLICE characters comes in several segments cut at a space or a
    line break, which the tokenizer turns into the same tokens as the whole; a document without one for that
    long is held until one comes (or it ends)."""
    carry = ""  # the unfinished document (or leading whitespace) and the whitespace after it
    documents = 0
    for text in _utf8_blocks(path, "text"):
        buf = carry + text
        end = len(buf.rstrip())  # buf[:end] ends with a non-whitespace character, so its breaks are final
        last = None
        for last in _DOC_BREAK.finditer(buf, 0, end):
            pass
        start = 0
        if last is not None:
            for document in split_documents(buf[: last.start()]):
                yield document, True
                documents += 1
            start = last.end()
        content, run = buf[start:end], buf[end:]
        if len(content) > DOCUMENT_SLICE:
            cut = max(content.rfind(c) for c in _SEPARATORS)
            if cut > 0:
                if head := content[:cut].strip():
                    yield head, False
                content = content[cut:]
        carry = content + (_short_run(run) if len(run) > _LONG_RUN else run)
    if tail := carry.strip():
        yield tail, True
        documents += 1
    if not documents:
        raise InputError(f"{path} holds no text, only whitespace")


def _tokenized(segments: Iterator[tuple[str, bool]]) -> Iterator[tuple[np.ndarray, int | None]]:
    """Token ids of each segment, tokenized in batches of about BATCH_CHARS characters, with [SEP] and the
    document's token count after the segment that ends a document (None after the others)."""
    backend = tokenizer().backend_tokenizer  # what tokenizer(texts)["input_ids"] calls, without the offsets
    count = 0  # tokens of the current document so far
    for batch in _batches(segments):
        encodings = backend.encode_batch_fast([text for text, _ in batch], add_special_tokens=False)
        for (_, ends), encoding in zip(batch, encodings):
            doc_ids = encoding.ids
            count += len(doc_ids)
            if ends:
                yield np.array([*doc_ids, SEP_ID], dtype=np.int64), count
                count = 0
            else:
                yield np.array(doc_ids, dtype=np.int64), None


def _batches(segments: Iterator[tuple[str, bool]]) -> Iterator[list[tuple[str, bool]]]:
    batch, size = [], 0
    for segment in segments:
        batch.append(segment)
        size += len(segment[0])
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _groups(lengths: list[int]) -> Iterator[tuple[int, int]]:
    """(window count, token count) of consecutive pieces of windows of these lengths: at most WINDOWS_PER_PIECE
    windows and PIECE_TOKENS tokens (at least one window)."""
    first = 0
    while first < len(lengths):
        n, tokens = 0, 0
        while (first + n < len(lengths) and n < WINDOWS_PER_PIECE
               and (n == 0 or tokens + lengths[first + n] <= PIECE_TOKENS)):
            tokens += lengths[first + n]
            n += 1
        yield n, tokens
        first += n


def _piece_windows(seq_len: int) -> int:
    return max(1, min(WINDOWS_PER_PIECE, PIECE_TOKENS // seq_len))


class TextCodec(Codec):
    suffix = ".txt"

    def iter_windows(self, path: Path, seq_len: int) -> Iterator[Piece]:
        """Windows (L,) int64 of the file's token stream. Reads BLOCK_SIZE bytes at a time and holds the
        unfinished document's text, one batch of tokens and one piece."""
        if seq_len < 1:
            raise InputError(f"seq_len must be at least 1, got {seq_len}")
        check_data_paths([path])
        size = _piece_windows(seq_len) * seq_len
        parts: list[np.ndarray] = []
        held = 0  # tokens in parts
        ends: deque[tuple[int, int]] = deque()  # (position in parts just after a document's [SEP], its count)
        for ids, count in _tokenized(_segments(path)):
            parts.append(ids)
            held += len(ids)
            if count is not None:
                ends.append((held, count))
            if held >= size:
                stream = np.concatenate(parts)
                cut = len(stream) - len(stream) % size
                for at in range(0, cut, size):
                    yield self._piece(stream[at : at + size], ends, at + size, seq_len)
                parts, held = ([stream[cut:].copy()] if cut < len(stream) else []), len(stream) - cut
                ends = deque((end - cut, count) for end, count in ends)
        if held:
            yield self._piece(np.concatenate(parts), ends, held, seq_len)

    @staticmethod
    def _piece(ids: np.ndarray, ends: deque, upto: int, seq_len: int) -> Piece:
        documents = []
        while ends and ends[0][0] <= upto:
            documents.append(ends.popleft()[1])
        return Piece(split_windows(torch.from_numpy(ids.copy()), seq_len), {"documents": documents})

    def open_writer(self, file: BinaryIO, name: str, header: dict) -> Writer:
        return TextWriter(file)

    def legacy_pieces(self, side: dict, lengths: list[int]) -> Iterator[tuple[int, dict]]:
        """Format 1 kept {"documents": [count of every document]} for the whole file: cut the windows into pieces
        as `iter_windows` does and give each piece the documents whose [SEP] falls in it (the last piece takes
        any left over, so that a mismatch reaches the writer as a FormatError)."""
        counts = _document_counts(side)
        if not lengths:
            yield 0, {"documents": counts}
            return
        ends = list(itertools.accumulate(c + 1 for c in counts))  # position just after each document's [SEP]
        done, position, windows = 0, 0, 0
        for n, tokens in _groups(lengths):
            start, position, windows = done, position + tokens, windows + n
            while done < len(counts) and (ends[done] <= position or windows == len(lengths)):
                done += 1
            yield n, {"documents": counts[start:done]}


def _document_counts(side: dict) -> list[int]:
    counts = side.get("documents") if isinstance(side, dict) else None
    if not isinstance(counts, list) or not all(type(c) is int and c >= 0 for c in counts):
        raise FormatError("text side information must list the token count of each document")
    return counts


# ---- writing -------------------------------------------------------------------------------------------
@cache
def _cut_tables() -> tuple[np.ndarray, np.ndarray]:
    """(V,) bool each: whether a token ends a word with a letter or digit, whether one starts a word with one.

    Detokenizing is the WordPiece decoder (token i > 0 becomes " " + token, or the token without "##", each
    cleaned up alone, so a token starting with a letter or digit is unchanged) and then `clean_up_tokenization`
    over the whole text, whose patterns each begin with a space: " .", " ?", " !", " ,", " ' ", " n't", " 'm",
    " 's", " 've", " 're". Between a token ending in a letter or digit and a token that starts a word with one
    (and is not "n" alone, which " ' t" can turn into "n't"), the space matches none of them and no replacement
    (each only deletes spaces) can put other characters next to it, so decode(a + b) == decode(a) + " " +
    decode(b). tests/test_text.py checks this on token soup built from the patterns."""
    tokens = tokenizer().convert_ids_to_tokens(list(range(VOCAB_SIZE)))
    ends = np.array([t.removeprefix("##")[-1:].isalnum() for t in tokens])
    starts = np.array([not t.startswith("##") and t[:1].isalnum() and (t[:1] != "n" or t[1:2].isalnum())
                       for t in tokens])
    return ends, starts


def _last_cut(ids: np.ndarray) -> int:
    """The last k (0 < k < len(ids)) with decode(ids) == decode(ids[:k]) + " " + decode(ids[k:]), or 0."""
    ends, starts = _cut_tables()
    left, right = ids[:-1], ids[1:]
    known = (left >= 0) & (left < VOCAB_SIZE) & (right >= 0) & (right < VOCAB_SIZE)
    ok = known & ends[np.clip(left, 0, VOCAB_SIZE - 1)] & starts[np.clip(right, 0, VOCAB_SIZE - 1)]
    found = np.flatnonzero(ok)
    return int(found[-1]) + 1 if len(found) else 0


class TextWriter(Writer):
    """Writes each document as soon as its last token arrives. A document longer than WRITER_SLICE tokens is
    detokenized in slices cut between two words (see `_cut_tables`: the same bytes as the whole); one without
    such a cut (say, a long run of punctuation) is held until it ends."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.documents = 0  # documents written
        self.count = 0  # tokens of the current document received, [SEP] position excluded
        self.held: list[np.ndarray] = []  # its tokens not yet written, [SEP], [PAD] and [CLS] dropped
        self.searched = 0  # parts of `held` known to hold no cut
        self.begun = False  # whether its start is written

    def write(self, windows: list[torch.Tensor], side: dict) -> None:
        counts = _document_counts(side)
        ids = (torch.cat([w.reshape(-1) for w in windows]).to("cpu", torch.int64).numpy() if windows
               else np.zeros(0, dtype=np.int64))
        at = 0
        for count in counts:
            rest = count - self.count
            if rest < 0 or at + rest >= len(ids):  # the document's [SEP] position must be in this piece
                raise FormatError("text side information does not match the number of decoded tokens")
            self._hold(ids[at : at + rest])
            held = np.concatenate(self.held) if self.held else ids[:0]
            self.held, self.searched = [], 0
            self._emit(held, last=True)
            at += rest + 1
        self._hold(ids[at:])
        self.count += len(ids) - at
        if sum(len(part) for part in self.held) > WRITER_SLICE:
            self._emit_start()

    def close(self) -> dict:
        if self.count:
            raise FormatError("text side information does not match the number of decoded tokens")
        self.file.write(b"\n")
        return {}

    def _hold(self, ids: np.ndarray) -> None:
        kept = ids[(ids != SEP_ID) & (ids != PAD_ID) & (ids != CLS_ID)]
        if len(kept):
            self.held.append(kept)

    def _emit_start(self) -> None:
        """Write the held tokens up to the last cut between words, searching only parts not searched before."""
        before = self.held[self.searched - 1][-1:] if self.searched else self.held[0][:0]
        new = np.concatenate([before, *self.held[self.searched :]])
        cut = _last_cut(new)
        if not cut:
            self.searched = len(self.held)
            return
        held = np.concatenate(self.held)
        cut += len(held) - len(new)
        self.held, self.searched = [held[cut:].copy()], 1  # no cut after the last one
        self._emit(held[:cut], last=False)

    def _emit(self, ids: np.ndarray, last: bool) -> None:
        prefix = " " if self.begun else ("\n\n" if self.documents else "")
        self.file.write((prefix + detokenize(ids.tolist())).encode("utf-8"))
        if last:
            self.documents, self.count, self.begun = self.documents + 1, 0, False
        else:
            self.begun = True


# ---- the domain ----------------------------------------------------------------------------------------
class TextDomain(Domain):
    name = "text"
    settings_class = TextSettings
    default_seq_len = 512

    settings: TextSettings

    def make_codec(self) -> Codec:
        return TextCodec(self.settings) if self.settings.tokenizer == "bert" else ExactCodec(self.settings)

    def make_objective(self) -> Objective:
        return TokenObjective(never=None) if self.settings.tokenizer == "bert" else ExactObjective()

    def model_fields(self) -> dict:
        if self.settings.vocab_size is None:
            raise InputError("the bpe tokenizer is learned from the training files: call learn(paths) (fit does) "
                             "or load a trained model")
        return {"vocab_size": self.settings.vocab_size}

    def default_data(self) -> list[Path]:
        return [bundled("wiki_sample.txt")]

    def learn(self, paths: list[Path], share: float = 1.0) -> "TextDomain":
        """tokenizer bpe: a vocabulary of at most bpe_vocab tokens trained on the first round(B * share) of each
        training file's B bytes. The probe's chronological cut falls at a share of the learned tokens instead; a
        vocabulary packs the text it learned from more tightly than text it did not see, so that cut usually lies
        at or after this one, and the held-out tail holds nothing learned from. bert and bytes learn nothing."""
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise InputError(f"share must be in (0, 1], got {share!r}")
        if self.settings.tokenizer != "bpe":
            return self
        paths = check_data_paths([Path(p) for p in paths])
        if not paths:
            raise InputError("no data files to learn from")
        merges = train_bpe(training_texts(paths, float(share)), self.settings.bpe_vocab)
        return type(self)(self.settings.replace(bpe_merges=merges))

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """bert: the window's documents (split at [SEP], [PAD] dropped), detokenized and joined by " | "; bpe and
        bytes: the window's bytes as text."""
        if isinstance(self.codec, ExactCodec):
            return self.codec.render(window, limit)
        docs: list[list[int]] = []
        current: list[int] = []
        for token in window.tolist():
            if token == SEP_ID:
                docs.append(current)
                current = []
            elif token != PAD_ID:
                current.append(token)
        if current:
            docs.append(current)
        return shorten(" | ".join(detokenize(doc) for doc in docs), limit)
