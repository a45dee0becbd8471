"""What every domain adapter provides: files -> sequences -> files, its loss and its metric.

The core trains and runs the model on lists of sequences, each a tensor of shape (L,) of
token ids or (L, F) of vectors with L <= n_max. A domain owns everything specific to its
data: parsing files, cutting them into windows, turning windows back into files, the loss
the model is trained with and the metric users read. Domains register themselves in
`seqcompress.domains`; the core never imports one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch

from seqcompress.errors import InputError


# A classical codec for the probe: (train_windows, test_windows, floats per test window) -> reconstructions.
Baseline = Callable[[list[torch.Tensor], list[torch.Tensor], list[int]], list[torch.Tensor]]


class Domain(ABC):
    """Base class of a domain adapter. Subclasses set `name`, `metric_name` and implement the methods."""

    name: str = ""
    metric_name: str = ""  # the headline metric, e.g. "token_accuracy"
    higher_is_better: bool = True
    default_seq_len: int = 512

    # ---- state saved with a model ---------------------------------------------------------
    def state(self) -> dict:
        """JSON-serialisable settings saved in the model's config.json (e.g. tokenizer, normalisation)."""
        return {"name": self.name}

    @classmethod
    def from_state(cls, state: dict) -> "Domain":
        return cls()

    def learn(self, paths: list[Path]) -> None:
        """Learn data-dependent settings (e.g. normalisation) from the training files before training.

        Called once by `fit` (not on --resume: the state is restored instead); whatever is learned must
        appear in `state()` so a loaded model sees the same settings. Default: nothing to learn.
        """

    @abstractmethod
    def model_fields(self) -> dict:
        """ModelConfig fields this domain fixes: {"vocab_size": V} or {"feature_dim": F}."""

    # ---- data -----------------------------------------------------------------------------
    @abstractmethod
    def default_data(self) -> list[Path]:
        """The small sample bundled in the package, used when no data file is given."""

    output_suffix: str = ""  # the file suffix `decode` suggests, e.g. ".txt"

    @abstractmethod
    def read(self, path: Path, seq_len: int) -> tuple[list[torch.Tensor], dict]:
        """One file -> its windows of at most seq_len symbols (the last one of a sequence shorter) and the
        JSON side information that `write` needs to rebuild the file's shape (kept in the .sqz header)."""

    @abstractmethod
    def write(self, path: Path, windows: list[torch.Tensor], side: dict) -> None:
        """Reconstructed windows (in the form `prediction` gives) + side information -> a file, written atomically."""

    def size_references(self) -> dict[str, float]:
        """Bits per symbol of simple reference encodings, shown next to the .sqz size (e.g. 2 bits per base)."""
        return {}

    def decode_note(self, side: dict) -> str | None:
        """Something a user must know about a decoded file (e.g. "qualities were dropped"), or None."""
        return None

    def load_windows(self, paths: list[Path], seq_len: int) -> list[torch.Tensor]:
        """The windows of every file, in order (for training and evaluation)."""
        windows: list[torch.Tensor] = []
        for path in check_data_paths(paths):
            windows += self.read(path, seq_len)[0]
        return windows

    # ---- training and evaluation ------------------------------------------------------------
    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean reconstruction loss over real positions: output (B, N, ...), target (B, N, ...), mask (B, N)."""

    @abstractmethod
    def metric_totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Additive totals (sums and counts) over real positions; summed across batches."""

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """Model output (B, N, ...) -> reconstructed windows in input form: token ids (B, N) or vectors."""
        return output

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """A short human-readable view of one window (its start), for demos and reports."""
        text = " ".join(f"{float(v):.3g}" for v in window.flatten()[:32])
        return text[:limit]

    @abstractmethod
    def metric_values(self, totals: dict[str, float]) -> dict[str, float]:
        """Metrics from summed totals; must contain `metric_name`."""

    # ---- reduction probe --------------------------------------------------------------------
    def classical_baselines(self) -> dict[str, Baseline]:
        """Classical codecs the probe ranks next to the model at the same storage budget (e.g. truncated DCT).

        name -> fn(train_windows, test_windows, floats) -> one reconstruction per test window, shaped like the
        model's output for that window (so `metric_totals` scores it); floats[i] is the number of latent
        floats the model stores for test_windows[i], the baseline's budget for that window. Domains without
        a classical codec at equal floats return {} (text and DNA tokens, for example)."""
        return {}


def check_data_paths(paths: list[Path]) -> list[Path]:
    """Refuse a missing path, a directory or an empty file with a clear InputError."""
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.is_dir():
            raise InputError(f"{path} is a directory; give the data files inside it")
        if path.stat().st_size == 0:
            raise InputError(f"{path} is empty")
    return paths


def split_windows(sequence: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """Cut a sequence (L, ...) into consecutive windows of seq_len; the last one keeps the remainder."""
    if seq_len < 1:
        raise InputError(f"seq-len must be at least 1, got {seq_len}")
    return [sequence[i : i + seq_len] for i in range(0, len(sequence), seq_len)]


def decode_utf8(path: Path, data: bytes, kind: str) -> str:
    """The UTF-8 text of a file's bytes (a leading BOM dropped), or an InputError naming `kind` ("text",
    "FASTA or FASTQ") for binary data, invalid UTF-8 or nothing but whitespace."""
    if b"\x00" in data[:65536]:
        raise InputError(f"{path} is binary data, not {kind}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not {kind}: invalid UTF-8 at byte {exc.start}") from None
    if not text.strip():
        raise InputError(f"{path} holds no {kind}, only whitespace")
    return text
