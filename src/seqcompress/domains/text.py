"""Text domain: UTF-8 text files, BERT uncased WordPiece tokens, token accuracy.

A text file is a sequence of documents separated by blank lines. Each document is tokenized
with the BERT uncased WordPiece vocabulary shipped in the package (no hub download) and
followed by [SEP]; a file's token stream is cut into windows of seq_len tokens, the last
window of a file shorter. Decoding splits the stream at [SEP] and detokenizes each document.
"""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqcompress.domain import Domain, check_data_paths, decode_utf8, split_windows
from seqcompress.atomic import atomic_write_text
from seqcompress.errors import FormatError, InputError

PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 100, 101, 102
VOCAB_SIZE = 30522
_DOC_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def vocab_path() -> Path:
    return Path(str(resources.files("seqcompress") / "data" / "vocab.txt"))


def sample_path() -> Path:
    return Path(str(resources.files("seqcompress") / "data" / "wiki_sample.txt"))


def split_documents(text: str) -> list[str]:
    """Documents are separated by one or more blank lines; inner line breaks belong to the document."""
    return [doc.strip() for doc in _DOC_BREAK.split(text) if doc.strip()]


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (a leading BOM dropped), or an InputError for binary or undecodable content."""
    return decode_utf8(path, path.read_bytes(), "text").removeprefix("\ufeff")


class TextDomain(Domain):
    name = "text"
    metric_name = "token_accuracy"
    default_seq_len = 512
    output_suffix = ".txt"

    def model_fields(self) -> dict:
        return {"vocab_size": VOCAB_SIZE}

    def state(self) -> dict:
        return {"name": self.name, "tokenizer": "bert-base-uncased-wordpiece", "vocab_size": VOCAB_SIZE}

    @cached_property
    def tokenizer(self):
        # Imported here: transformers takes about a second to import, which `--help` should not pay.
        from transformers import BertTokenizer

        # transformers 5 silently ignores vocab_file=; vocab= is the argument that works.
        tok = BertTokenizer(vocab=str(vocab_path()), do_lower_case=True)
        if tok.vocab_size != VOCAB_SIZE:
            raise RuntimeError(f"tokenizer loaded {tok.vocab_size} entries from {vocab_path()}, expected {VOCAB_SIZE}")
        return tok

    # ---- tokens <-> text ------------------------------------------------------------------
    def encode_documents(self, documents: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Token ids (T,) of the documents, each followed by [SEP], and each document's token count."""
        pieces, counts = [], []
        for start in range(0, len(documents), 2048):  # in batches, into compact arrays: bounded memory
            for doc_ids in self.tokenizer(documents[start : start + 2048], add_special_tokens=False)["input_ids"]:
                pieces.append(np.array([*doc_ids, SEP_ID], dtype=np.int64))
                counts.append(len(doc_ids))
        return torch.from_numpy(np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)), counts

    def decode_documents(self, ids: list[int]) -> list[str]:
        """Split a token stream at [SEP] and turn each document back into text."""
        docs, current = [], []
        for token in ids:
            if token == SEP_ID:
                docs.append(current)
                current = []
            elif token != PAD_ID:
                current.append(token)
        if current:
            docs.append(current)
        return [self.tokenizer.decode(doc, clean_up_tokenization_spaces=True) for doc in docs]

    # ---- Domain interface -----------------------------------------------------------------
    def default_data(self) -> list[Path]:
        return [sample_path()]

    def read(self, path: Path, seq_len: int) -> tuple[list[torch.Tensor], dict]:
        """Windows of the file's token stream; side information: each document's token count."""
        check_data_paths([path])
        documents = split_documents(read_text(path))
        ids, doc_tokens = self.encode_documents(documents)
        # Windows are views of one tensor; the side information keeps document boundaries exactly.
        return split_windows(ids, seq_len), {"documents": doc_tokens}

    def write(self, path: Path, windows: list[torch.Tensor], side: dict) -> None:
        """Text from reconstructed token ids. Document boundaries come from the side information, not from
        predicted [SEP] tokens, so they survive any reconstruction error."""
        ids = torch.cat(windows).tolist() if windows else []
        counts = side.get("documents")
        if not isinstance(counts, list) or sum(c + 1 for c in counts) != len(ids):
            raise FormatError("text side information does not match the number of decoded tokens")
        docs, start = [], 0
        for count in counts:
            doc = [t for t in ids[start : start + count] if t not in (SEP_ID, PAD_ID, CLS_ID)]
            docs.append(self.tokenizer.decode(doc, clean_up_tokenization_spaces=True))
            start += count + 1
        atomic_write_text(path, "\n\n".join(docs) + "\n")

    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # output (B, N, V) logits, target (B, N) ids, mask (B, N): cross-entropy over real tokens only.
        target = target.masked_fill(~mask, -100)  # (B, N), -100 = ignored
        return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1), ignore_index=-100)

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=-1)  # (B, N, V) logits -> (B, N) ids

    def metric_totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        correct = (self.prediction(output) == target) & mask  # (B, N)
        return {"correct": float(correct.sum()), "tokens": float(mask.sum())}

    def metric_values(self, totals: dict[str, float]) -> dict[str, float]:
        return {self.metric_name: totals["correct"] / max(totals["tokens"], 1.0)}

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        text = " | ".join(self.decode_documents([int(t) for t in window]))
        return text if len(text) <= limit else text[: limit - 3] + "..."
