"""The domain contract: Settings, a streaming Codec and an Objective, bundled as a Domain.

The core trains and runs the model on windows: tensors (L,) of token ids or (L, F) of vectors with
L <= n_max. A domain owns everything specific to its data, in three parts with narrow jobs:

    Settings    a dataclass of the domain's options (k-mer size, patch, sample rate, ...) and of what `fit`
                learned (normalisation, level). Validated in one place (`validate`), saved in the model's
                config.json, parsed from `-D key=value` on every CLI command (`Settings.parse`).
    Codec       files <-> windows, streamed. `iter_windows(path, seq_len)` yields `Piece`s as it reads: a few
                windows and the JSON side information that rebuilds exactly those windows' bytes (record
                names, line layout, qualities, ...). `open_writer(file, name, header)` returns a `Writer`
                whose `write(windows, side)` turns pieces back into bytes as they arrive and whose `close()`
                returns the report. Memory is bounded by a piece, never by a file.
    Objective   the training loss, the prediction kept from model output, and the metric as additive
                totals (`Totals` sums them across batches, processes and files).

`Domain` ties the three to a name in `seqcompress.domains` (one file and one registration per domain);
the core and the CLI never import a domain. Classical codecs for the probe live probe-side
(`seqcompress.baselines`), not here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import typing
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from seqcompress.classical import principal_axes
from seqcompress.defaults import PAPER_DECAY_EPOCHS
from seqcompress.errors import FormatError, InputError
from seqcompress.memory import Link, file_links


# ---- settings ------------------------------------------------------------------------------------------
def option(default: Any, help: str, *, learned: bool = False, encode: bool = False) -> Any:
    """A Settings field: its default, its one-line help (shown by `seqcompress COMMAND --help-domain`), whether
    `fit` learns it from data (`learned`: not a user option) and whether `encode` may change it without
    changing the model (`encode`, e.g. dropping FASTQ qualities)."""
    meta = {"help": help, "learned": learned, "encode": encode}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of a domain's settings. Subclasses are frozen dataclasses whose fields use `option(...)` and
    override `validate` (raise InputError naming the parameter); `replace` returns a validated copy."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse invalid values with an InputError that names the parameter (not a CLI flag)."""

    def state(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls, *, user: bool = True) -> list[str]:
        """Field names; with `user`, only those a user sets (not learned ones)."""
        return [f.name for f in dataclasses.fields(cls) if not (user and f.metadata.get("learned"))]

    @classmethod
    def encode_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("encode")]

    @classmethod
    def help(cls) -> list[tuple[str, str, str]]:
        """(name, default, help) of each user option, for `--help` texts."""
        out = []
        for f in dataclasses.fields(cls):
            if f.metadata.get("learned"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append((f.name, json.dumps(default), f.metadata.get("help", "")))
        return out

    @classmethod
    def from_state(cls, state: dict) -> "Settings":
        """Settings saved in a model (keys that are not fields, like "name" or a description, are skipped)."""
        if not isinstance(state, dict):
            raise InputError("domain settings must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in state.items() if k in known}
        try:
            return cls(**values)
        except TypeError as exc:  # a wrong type that validate() did not catch
            raise InputError(f"invalid domain settings: {exc}") from None

    @classmethod
    def parse(cls, items: dict[str, str], *, allowed: list[str] | None = None) -> dict[str, Any]:
        """User text values ({"k": "3", "columns": "a,b"}) -> typed values, refusing unknown names.

        Values are read as JSON when they parse (3, 0.5, true, null, ["a", "b"]), else as text; a list field
        also takes comma-separated text."""
        allowed = cls.names() if allowed is None else allowed
        hints = typing.get_type_hints(cls)
        out: dict[str, Any] = {}
        for key, text in items.items():
            if key not in allowed:
                raise InputError(f"unknown domain option {key!r}; this domain takes: {', '.join(allowed) or 'none'}")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            if "list" in str(hints.get(key, "")) and isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if "float" in str(hints.get(key, "")) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            out[key] = value
        return out


# ---- codec ---------------------------------------------------------------------------------------------
class Piece(NamedTuple):
    """Some consecutive windows of a file and the JSON side information that rebuilds exactly their bytes.

    A piece may hold no windows (a record with no bases, the end of a file): its side information still
    reaches the writer in order. `links` says, per window, which stream it continues and whether it starts a
    record (`seqcompress.memory.Link`), for models with memory; None: every window continues the one before
    (the file's first window starts)."""

    windows: list[torch.Tensor]
    side: dict
    links: list[Link] | None = None


class Writer(ABC):
    """Turns pieces back into a file as they arrive (the windows in the form `Objective.prediction` gives)."""

    @abstractmethod
    def write(self, windows: list[torch.Tensor], side: dict) -> None:
        """Write the bytes of one piece."""

    def close(self) -> dict:
        """Finish the file; returns the report (e.g. {"note": "qualities were dropped"})."""
        return {}


class Codec(ABC):
    """Files <-> windows for one domain, streamed. Built from the domain's settings; holds no file state."""

    suffix: ClassVar[str] = ""  # the file suffix `decode` suggests, e.g. ".txt"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def iter_windows(self, path: Path, seq_len: int) -> Iterator[Piece]:
        """The windows (at most seq_len symbols each) and side information of one file, as it is read."""

    @abstractmethod
    def open_writer(self, file: BinaryIO, name: str, header: dict) -> Writer:
        """A writer of the file `name` into the open binary `file` (seekable; moved into place by the caller)."""

    def references(self, path: Path, symbols: int) -> dict[str, float]:
        """Bits per symbol of simple reference encodings of `path`, shown next to the .sqz size."""
        return {}

    def legacy_pieces(self, side: dict, lengths: list[int]) -> Iterator[tuple[int, dict]]:
        """A format-1 .sqz kept one side-information block for the whole file: turn it into (window count,
        side) pieces this codec's writer understands. Default: one piece holding every window."""
        yield len(lengths), side


# ---- objective -----------------------------------------------------------------------------------------
class Objective(ABC):
    """The loss the model trains with and the metric users read, as additive totals."""

    metric_name: ClassVar[str] = ""  # the headline metric, e.g. "token_accuracy"
    higher_is_better: ClassVar[bool] = True

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean reconstruction loss over real positions: output (B, N, ...), target (B, N, ...), mask (B, N)."""

    @abstractmethod
    def totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Additive totals (sums and counts) over real positions."""

    @abstractmethod
    def values(self, totals: dict[str, float]) -> dict[str, float]:
        """Metrics from summed totals; must contain `metric_name`."""

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """Model output (B, N, ...) -> reconstructed windows in input form: token ids (B, N) or vectors."""
        return output

    def loss_weight(self, target: torch.Tensor, mask: torch.Tensor) -> float:
        """What `loss` averages over in this batch (its denominator): the real positions, unless the loss counts
        something else (observed values). Training weights each part of a batch by it, so that a batch split
        over processes or accumulation steps gives the gradient of the whole batch."""
        return float(mask.sum())

    def accumulator(self) -> "Totals":
        return Totals(self)

    def sampled_loss(self, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, positions: torch.Tensor,
                     candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A token domain's loss over `candidates` instead of the whole vocabulary (see `TokenObjective`)."""
        raise InputError(f"a sampled softmax needs token outputs; {type(self).__name__} has none")

    def scored(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Totals of a prediction already made (token ids (B, N)), as `totals` gives them for model output."""
        raise InputError(f"{type(self).__name__} scores model output only")


def real_positions(lengths: torch.Tensor, padded: int) -> torch.Tensor:
    """(T,) the indices, in a (B, padded) batch flattened, of each sample's first lengths[b] positions."""
    return torch.cat([torch.arange(n) + b * padded for b, n in enumerate(lengths.tolist())]) if len(lengths) \
        else torch.zeros(0, dtype=torch.long)


class Totals:
    """Sums an objective's totals over batches; `values()` gives the metrics."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.sums: dict[str, float] = {}

    def add(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        self.add_sums(self.objective.totals(output, target, mask))

    def add_sums(self, sums: dict[str, float]) -> None:
        for key, value in sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def values(self) -> dict[str, float]:
        return self.objective.values(self.sums)


class TokenObjective(Objective):
    """Cross-entropy over real tokens and token accuracy: the objective of token domains (text, DNA).

    `never` is a token id that is never a real token (padding): it is never predicted."""

    metric_name = "token_accuracy"

    def __init__(self, never: int | None = None) -> None:
        self.never = never

    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # output (B, N, V) logits, target (B, N) ids, mask (B, N): -100 marks padding, which is ignored.
        target = target.masked_fill(~mask, -100)
        return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1), ignore_index=-100)

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        if self.never is None:
            return output.argmax(dim=-1)  # (B, N, V) logits -> (B, N) ids
        logits = output.clone()
        logits[..., self.never] = float("-inf")
        return logits.argmax(dim=-1)

    def totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        return self.scored(self.prediction(output), target, mask)

    def scored(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        correct = (prediction == target) & mask  # (B, N)
        return {"correct_tokens": float(correct.sum()), "tokens": float(mask.sum())}

    def values(self, totals: dict[str, float]) -> dict[str, float]:
        return {"token_accuracy": totals["correct_tokens"] / max(totals["tokens"], 1.0)}

    def sampled_loss(self, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, positions: torch.Tensor,
                     candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over a few candidate tokens instead of the whole vocabulary: training's cheap head.

        hidden (B, N, D) final states, weight (V, D) the output embedding, target (B, N), positions (T,) the
        real positions as indices into the B x N flattened (`real_positions`: made on the host, so that no GPU
        waits for a boolean mask), candidates (C,) sorted token ids holding every target (training gives the batch's own tokens and some
        drawn from the whole vocabulary, `seqcompress.train.candidates`). Only the real positions' logits over
        the candidates are computed: T x C instead of B x N x V. Returns the mean loss over real tokens (the
        denominator of `loss`) and the prediction among the candidates (B, N), for `scored` (the target at
        padding; its accuracy is an upper bound of the full vocabulary's, which evaluation measures)."""
        flat = target.reshape(-1)
        h, t = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions), flat.index_select(0, positions)
        logits = h @ weight[candidates].T  # (T, C)
        loss = F.cross_entropy(logits.float(), torch.searchsorted(candidates, t))
        with torch.no_grad():
            never = (candidates == self.never) if self.never is not None else None
            chosen = logits.masked_fill(never, float("-inf")) if never is not None else logits
            prediction = flat.index_copy(0, positions, candidates[chosen.argmax(dim=-1)]).view_as(target)
        return loss, prediction


# ---- the domain ----------------------------------------------------------------------------------------
class Domain(ABC):
    """A named bundle of Settings, Codec and Objective. Subclasses set `name`, `settings_class`,
    `default_seq_len` and implement the four abstract methods; a domain object never changes after it is
    built (`learn` returns a new one). `default_decay_epochs` is the learning-rate schedule `fit` uses when
    none is given: the paper's 5 epochs of decay unless a domain measured a better one."""

    name: ClassVar[str] = ""
    settings_class: ClassVar[type[Settings]] = Settings
    default_seq_len: ClassVar[int] = 512
    default_decay_epochs: ClassVar[float] = PAPER_DECAY_EPOCHS

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_class()

    @classmethod
    def from_state(cls, state: dict) -> "Domain":
        return cls(cls.settings_class.from_state(state))

    def state(self) -> dict:
        """What the model's config.json keeps: the name and every setting."""
        return {"name": self.name, **self.settings.state()}

    def with_settings(self, **changes: Any) -> "Domain":
        return type(self)(self.settings.replace(**changes))

    @cached_property
    def codec(self) -> Codec:
        return self.make_codec()

    @cached_property
    def objective(self) -> Objective:
        return self.make_objective()

    @property
    def metric_name(self) -> str:
        return self.objective.metric_name

    @abstractmethod
    def make_codec(self) -> Codec: ...

    @abstractmethod
    def make_objective(self) -> Objective: ...

    @abstractmethod
    def model_fields(self) -> dict:
        """ModelConfig fields this domain fixes: {"vocab_size": V} or {"feature_dim": F}."""

    def feature_basis(self) -> torch.Tensor | None:
        """Vector domains: the orthonormal basis (F x F, rows most important first) in which a model started
        as the truncated DCT (`--resize-init dct`) carries each symbol's F features, so that the latent_dim
        features it keeps are the most important ones. None: the features as they are, in their order."""
        return None

    def signal_features(self) -> int | None:
        """How many leading features of a symbol are its signal: the part a "pca" start turns onto its principal
        axes (`start_basis`); the features after it (a time series' observed mask and RevIN statistics) stay
        as they are. None: every feature."""
        return None

    def basis_samples(self, window: torch.Tensor) -> Iterator:
        """The rows a "pca" start's principal axes are fitted on, from one training window, in blocks (each
        k x signal_features; NaN marks a value not observed). Default: each symbol's signal features."""
        yield window[:, : self.signal_features()].numpy()

    def start_basis(self, resize_init: str, training: Callable[[], Iterable[torch.Tensor]]) -> torch.Tensor | None:
        """The feature basis a fresh model of `resize_init` starts in (`SequenceAutoencoder.start_as_dct`):
        "pca", the principal axes of the signal features (`signal_features`) of the training windows'
        symbols, sampled as `basis_samples` says (`training()` iterates the windows, read once and only for
        "pca"), so that the latent_dim features a model keeps are those the data varies most along, wherever
        they lie (one channel, channels that move together, the time steps of a patch); any other start,
        `feature_basis`."""
        if resize_init != "pca":
            return self.feature_basis()
        axes = principal_axes(rows for w in training() for rows in self.basis_samples(w))
        if axes is None:
            raise InputError("resize_init 'pca' fits the start on the training windows, and they hold no "
                             "observed value")
        basis = torch.eye(self.model_fields()["feature_dim"], dtype=torch.float64)
        basis[: len(axes), : len(axes)] = torch.from_numpy(axes)
        return basis

    @abstractmethod
    def default_data(self) -> list[Path]:
        """The small sample bundled in the package, used when no data file is given."""

    def joined(self, windows: list[torch.Tensor]) -> torch.Tensor:
        """A file's windows as one stream of symbols (S, ...) that windows can be cut from anew (`cut`): the
        probe cuts training streams at other offsets and a chronological tail off them. Default: concatenated."""
        return torch.cat(windows)

    def cut(self, symbols: torch.Tensor) -> torch.Tensor:
        """A window of symbols cut from a `joined` stream, as the codec would give it. Default: as it is."""
        return symbols

    def with_side(self, prediction: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """A reconstructed window with the side numbers of the window it rebuilds (what the writer takes from the
        side information, e.g. RevIN's mean and scale), for showing it. Default: as it is."""
        return prediction

    def side_floats(self, window: torch.Tensor) -> int:
        """Numbers a window stores beside its latents that decoding needs (the time-series window's own mean and
        scale with `revin`): counted in the probe's stored floats. Default: none."""
        return 0

    def learn(self, paths: list[Path], share: float = 1.0) -> "Domain":
        """A domain with the data-dependent settings (normalisation, channels) learned from the training files.
        Called once by `fit` (not on --resume: the settings are restored). Default: nothing to learn.

        `share` in (0, 1]: learn from the first `share` of each file's symbols only, cut where the probe's
        chronological split cuts the file's stream of symbols (the first round(S * share) of its S symbols),
        so that nothing is learned from the held-out tail. What only decides how a file is read (columns,
        their kinds) may still come from the whole file. 1: every symbol."""
        return self

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """A short human-readable view of one window (its start), for demos and reports."""
        return shorten(" ".join(f"{float(v):.3g}" for v in window.flatten()[:32]), limit)

    def windows(self, paths: list[Path], seq_len: int) -> Iterator[torch.Tensor]:
        """Every window of the files, in order, streamed (for training and evaluation)."""
        for path in check_data_paths([Path(p) for p in paths]):
            for piece in self.codec.iter_windows(path, seq_len):
                yield from piece.windows

    def load_windows(self, paths: list[Path], seq_len: int) -> list[torch.Tensor]:
        """Every window of the files in a list (for the probe and tests, which hold small data)."""
        return list(self.windows(paths, seq_len))

    def pieces(self, paths: list[Path], seq_len: int) -> Iterator[Piece]:
        """The pieces of the files, in order, each window with its Link (memory resets at each file and record)."""
        for path in check_data_paths([Path(p) for p in paths]):
            yield from file_links(self.codec.iter_windows(path, seq_len))

    def linked_windows(self, paths: list[Path], seq_len: int) -> Iterator[tuple[torch.Tensor, Link]]:
        """Every window of the files, in order, with its Link."""
        for piece in self.pieces(paths, seq_len):
            yield from zip(piece.windows, piece.links)


# ---- helpers shared by domains ---------------------------------------------------------------------------
def bundled(name: str) -> Path:
    """A sample file shipped in the package's data folder."""
    return Path(str(resources.files("seqcompress") / "data" / name))


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


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
        raise InputError(f"seq_len must be at least 1, got {seq_len}")
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


# ---- side information checks shared by domains ----------------------------------------------------------
MAX_INFLATED_BYTES = 64 << 20  # a format-1 zlib block whose exact size is not known inflates to at most this


class SideCheck:
    """Checks of one domain's side information. It comes out of a .sqz file whose checksum anyone can
    recompute, so it is read like any other untrusted input: every number is checked before it sizes an
    allocation, and anything malformed (a missing key, a wrong type, a negative count, nested garbage) is a
    FormatError naming the domain, never a KeyError or a MemoryError.

        check = SideCheck("timeseries")
        rows = check.integer(check.get(side, "rows"), "the row count", 0, patches * patch)  # or a FormatError
        with check.guard():  # what indexing a malformed structure raises (KeyError, ...) -> FormatError
            ...
    """

    def __init__(self, domain: str) -> None:
        self.domain = domain

    def error(self, problem: str) -> FormatError:
        """The FormatError for side information that cannot be right, `problem` saying what is wrong."""
        return FormatError(f"{self.domain} side information is malformed: {problem}")

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn the exceptions that indexing, converting or unpacking a malformed structure raises into this
        domain's FormatError (the checks above them say what is wrong where it matters)."""
        try:
            yield
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError, RecursionError,
                zlib.error, binascii.Error) as exc:
            raise FormatError(f"{self.domain} side information is malformed ({type(exc).__name__}: {exc})") from None

    def get(self, side: object, key: str) -> object:
        """side[key], or a FormatError when `side` is not a JSON object or has no `key`."""
        if not isinstance(side, dict):
            raise self.error(f"expected a JSON object, got {type(side).__name__}")
        if key not in side:
            raise self.error(f"{key!r} is missing")
        return side[key]

    def integer(self, value: object, what: str, low: int = 0, high: int | None = None) -> int:
        """`value` as a whole number in [low, high] (high None: no upper bound), or a FormatError naming `what`."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{what} must be a whole number, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            bound = f"at least {low:,}" if high is None else f"{low:,}" if low == high else f"from {low:,} to {high:,}"
            raise self.error(f"{what} is {_size(value)}, which should be {bound}")
        return value

    def array(self, value: object, what: str, length: int | None = None) -> list:
        """`value` as a JSON array (of exactly `length` items when given), or a FormatError naming `what`."""
        if not isinstance(value, list):
            raise self.error(f"{what} must be a list, got {_kind(value)}")
        if length is not None and len(value) != length:
            raise self.error(f"{what} holds {len(value):,} items, not {length:,}")
        return value

    def runs(self, value: object, what: str, total: int, unit: str, low: int = 0,
             high: int | None = None) -> list[list[int]]:
        """Run-length pairs [[value, count], ...] of `total` `unit` (e.g. rows): values in [low, high], counts
        positive and adding up to exactly `total`, checked before anything is expanded."""
        pairs = self.array(value, what)
        covered = 0
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise self.error(f"{what} must be [value, count] pairs")
            self.integer(pair[0], f"a value of {what}", low, high)
            covered += self.integer(pair[1], f"a count of {what}", 1)
        if covered != total:
            raise self.error(f"{what} claim {_size(covered)} {unit} for {total:,}")
        return pairs

    def inflate(self, packed: object, what: str, size: int | None = None, most: int = MAX_INFLATED_BYTES) -> bytes:
        """A format-1 block (base64 text of zlib data) inflated to exactly `size` bytes when the size is known
        (else at most `most`), never further: a small block cannot expand into gigabytes."""
        if not isinstance(packed, str):
            raise self.error(f"{what} must be base64 text, got {_kind(packed)}")
        limit = most if size is None else size
        with self.guard():
            inflater = zlib.decompressobj()
            data = inflater.decompress(base64.b64decode(packed, validate=True), limit + 1)
        if len(data) > limit:
            raise self.error(f"{what} inflates to more than {limit:,} bytes")
        if not inflater.eof or (size is not None and len(data) != size):
            raise self.error(f"{what} inflates to {len(data):,} bytes{'' if size is None else f', not {size:,}'}"
                             f"{'' if inflater.eof else ' and is cut short'}")
        return data


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _size(number: int) -> str:
    """A number for a message: digits with separators, or a power of ten when it is huge."""
    return f"{number:,}" if abs(number) < 10**15 else f"about 10^{len(str(abs(number))) - 1}"


def copy_through(codec: Codec, path: Path, seq_len: int, out: Path, settings: dict | None = None) -> dict:
    """Read a file's pieces and write them straight back, windows unchanged: the codec's own round trip
    (what a perfect model decodes to). `settings` stands in for the .sqz header's settings (encode options)."""
    from seqcompress.atomic import atomic_open

    header = {"settings": settings if settings is not None else codec.settings.state()}
    with atomic_open(out, "wb") as file:
        writer = codec.open_writer(file, out.name, header)
        for piece in codec.iter_windows(path, seq_len):
            writer.write(piece.windows, piece.side)
        return writer.close()
