"""Time-series domain: CSV files <-> patches of normalised values, NRMSE.

A CSV file is one series: one row per time step, in file order. Every column is exactly one of

- the **time column** (at most one): kept as text, exactly, in the side information; the model
  never sees it and treats the rows as equally spaced;
- a **channel**: a numeric column the model reconstructs;
- a **kept column** (`keep_columns=True` only): any other column, kept as text, exactly.

Channels are normalised with a per-channel mean and scale learned at fit time (`learn`), and cut
into patches of `patch` time steps. A patch is one model position (a "symbol": seq_len counts
patches), a vector of 2 * patch * C floats: the patch's normalised values, then its observed mask
(1 where a value was read, 0 where it was missing or is padding past the end of the series):

    values (T, C) -> normalised, NaN -> 0 (T, C) + observed (T, C) -> padded to T' = ceil(T / P) * P
    -> (T'/P, P*C) values | (T'/P, P*C) observed -> (T'/P, 2*P*C) -> windows of seq_len patches

With `revin` (reversible instance normalisation), each window is normalised again by its own per-channel mean
and scale (over its observed values, after the learned normalisation): the model sees every window at level 0
and unit spread, whatever the series did before, and the two numbers per channel and window travel as side
information (`window_stats`) that the writer uses to put the level back; they are appended to each patch
vector (2 * C more floats: the mean, then the scale) so that the loss and the metrics measure errors in the
learned units, as without it. The probe counts them in the stored floats (`Domain.side_floats`).

The file is read with pandas in blocks of whole windows and streamed: each piece holds a bounded
number of windows and the side information of exactly the rows they cover (time cells, kept cells,
missing cells and how each number was spelled), and the writer writes each piece's rows as it
arrives. The loss and the metrics read the observed half of the target, so missing values and
padding are never trained on or scored. docs/timeseries.md describes the layout, the side
information and every edge case. The scikit-learn estimator `SequenceCompressor` (arrays in,
latents out) is in `timeseries_pipeline.py` and importable from here.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from seqcompress.domain import (Codec, Domain, Objective, Piece, Settings, SideCheck, Writer, bundled, check_data_paths,
                                option, shorten, split_windows)
from seqcompress.errors import FormatError, InputError

LOSSES = ("mse", "huber")
# Cell texts read as a missing value: pandas' default NA spellings (pandas.read_csv), after stripping spaces.
MISSING_TEXTS = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
])
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"  # plain decimal or scientific notation
_INFINITY = r"(?i:[+-]?inf(?:inity)?)"
# First-column names that make it the time column when none is given (compared lower-cased, stripped).
# "" is the unnamed index column pandas writes with DataFrame.to_csv().
TIME_NAMES = frozenset(["", "time", "date", "datetime", "timestamp", "ds", "t", "year", "period", "index",
                        "month", "week", "day"])
_SCI = -1  # decimals code of a cell written in scientific notation: written back with 10 significant digits
# Digits after the point a cell may have (the writer spells each cell with as many, so a side may not ask for
# more): the shortest positional spelling of any float64 has at most 324 (5e-324).
MAX_DECIMALS = 340
_INT64 = 1 << 63  # a {"range": ...} text column holds int64 values, as `encode_text_column` writes them
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SAMPLE_BYTES = 65536  # the start of a file, read first: binary data, byte order mark, line ending
# A piece holds at most this many windows, and about this many cells (rows x columns) when windows are long:
# the memory of reading or writing a file is bounded by a piece, whatever the file's length.
PIECE_WINDOWS = 64
PIECE_CELLS = 1 << 18
WRITE_CELLS = 1 << 16  # the writer spells and writes a piece's rows this many cells at a time
_SIDE = SideCheck("timeseries")
NOTE = ("numeric values are the model's reconstruction, spelled with the decimals of the input; the time column, "
        "kept columns and missing cells are exact")


# ---- CSV text -> blocks of cells ----------------------------------------------------------------------
class _Utf8Text(io.TextIOBase):
    """The text of a binary UTF-8 stream, decoded as pandas reads it (a leading BOM dropped), with an
    InputError naming the byte offset of invalid UTF-8."""

    def __init__(self, raw: BinaryIO, path: Path) -> None:
        self._raw, self._path = raw, path
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._consumed = 0  # bytes handed to the decoder so far
        self._start = True

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        while True:
            data = self._raw.read(size if size is not None and size > 0 else -1)
            pending = len(self._decoder.getstate()[0])
            try:
                text = self._decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                at = self._consumed - pending + exc.start
                raise InputError(f"{self._path} is not CSV: invalid UTF-8 at byte {at}") from None
            self._consumed += len(data)
            if self._start and text:
                text, self._start = text.removeprefix("\ufeff"), False
            if text or not data:
                return text


class CsvFile:
    """A UTF-8 CSV file (comma-separated, first line the header) read in blocks of text cells with pandas.

    Nothing is converted (`dtype=str`, no NA conversion), so kept columns stay exactly as written. Blank lines
    are skipped, as pandas does (a missing value of a one-column file is written `""`); a row with fewer fields
    than the header gets empty (missing) cells; one with more fields is an InputError. Only the start of the
    file is read on construction; `blocks` streams the data rows.
    """

    def __init__(self, path: Path) -> None:
        import pandas as pd  # imported here: pandas takes a second to import, which `seqcompress --help` should not pay

        self.path = path = Path(path)
        check_data_paths([path])
        with path.open("rb") as raw:
            sample = raw.read(_SAMPLE_BYTES)
            raw.seek(0)
            first_line = raw.readline(1 << 24)  # the header line, for `quoted_header`
        if b"\x00" in sample:
            raise InputError(f"{path} is binary data, not CSV")
        self.bom = sample.startswith(codecs.BOM_UTF8)  # the file starts with a UTF-8 BOM (Excel's "CSV UTF-8")
        body = sample.removeprefix(codecs.BOM_UTF8)
        if not body.strip() and path.stat().st_size <= len(sample):
            raise InputError(f"{path} holds no CSV, only whitespace")
        # The line ending of the start of the file; writing uses it for every line.
        self.newline = "\r\n" if b"\r\n" in body else "\n"
        try:
            with path.open("rb") as raw:
                frame = pd.read_csv(_Utf8Text(raw, path), header=None, nrows=1, dtype=str, keep_default_na=False,
                                    na_filter=False)
        except pd.errors.EmptyDataError:
            raise InputError(f"{path} holds no CSV data") from None
        except pd.errors.ParserError as exc:
            raise InputError(f"{path} is not a well-formed CSV file: {_parser_detail(exc)}") from None
        self.header = [str(v) for v in frame.iloc[0]]  # column names in file order, exactly as written
        seen: set[str] = set()
        for name in self.header:
            if name in seen:
                raise InputError(f"{path}: column name {name!r} appears twice; CSV columns must have distinct names")
            seen.add(name)
        line = first_line.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="replace").removesuffix("\n")
        # Every name of the header line is in double quotes (R's write.csv does this): written back the same.
        self.quoted_header = line.removesuffix("\r") == ",".join(_quoted(name) for name in self.header)

    def blocks(self, rows: int) -> Iterator[list[np.ndarray]]:
        """The data rows in blocks of `rows` (the last one shorter): one object array of str per column.
        An InputError when there is no data row."""
        import pandas as pd

        pending: list[list[np.ndarray]] = []
        have, total, first = 0, 0, True
        try:
            with self.path.open("rb") as raw:
                reader = pd.read_csv(_Utf8Text(raw, self.path), header=None, dtype=str, keep_default_na=False,
                                     na_filter=False, chunksize=rows)
                for frame in reader:
                    cells = [frame.iloc[:, j].to_numpy(dtype=object) for j in range(frame.shape[1])]
                    if first:
                        cells, first = [c[1:] for c in cells], False  # the header row
                    pending.append(cells)
                    have += len(cells[0])
                    while have >= rows:
                        joined = [np.concatenate(parts) for parts in zip(*pending)]
                        yield [c[:rows] for c in joined]
                        pending, have, total = [[c[rows:] for c in joined]], have - rows, total + rows
        except pd.errors.ParserError as exc:
            raise InputError(f"{self.path} is not a well-formed CSV file: {_parser_detail(exc)}") from None
        if have:
            yield [np.concatenate(parts) for parts in zip(*pending)]
        elif total == 0:
            raise InputError(f"{self.path} has a header line but no data rows")


def _parser_detail(exc: Exception) -> str:
    return str(exc).replace("Error tokenizing data. C error: ", "").strip().rstrip(".")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---- cells -> numbers --------------------------------------------------------------------------------
@dataclasses.dataclass
class Channel:
    """One numeric column of a block: its values and what the writer needs to spell them as they were written."""

    values: np.ndarray  # (T,) float64, NaN where missing
    decimals: np.ndarray  # (T,) int: digits after the point as written, _SCI for scientific notation
    missing_text: str | list[str]  # the spelling of missing cells: one string, or one per missing cell


def _stripped(cells: np.ndarray):
    import pandas as pd

    return pd.Series(cells, dtype=object).str.strip()


def _classify(s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = s.isin(MISSING_TEXTS).to_numpy()
    number = s.str.fullmatch(_NUMBER).fillna(False).to_numpy(dtype=bool)
    infinite = s.str.fullmatch(_INFINITY).fillna(False).to_numpy(dtype=bool)
    return missing, number, infinite


def classify_cells(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (T,) of missing, finite-number and infinite cells of a text column (spaces around a
    cell ignored)."""
    return _classify(_stripped(cells))


def is_numeric(cells: np.ndarray) -> bool:
    """Whether every cell is a number, an infinity (refused later, with its row) or a missing value."""
    missing, number, infinite = classify_cells(cells)
    return bool((missing | number | infinite).all())


def is_iso_time(cells: np.ndarray) -> bool:
    """Whether every cell of a text column is an ISO 8601 date or date and time."""
    import pandas as pd

    s = pd.Series(cells, dtype=object).str.strip()
    if not s.str.fullmatch(r"\d{4}-\d{2}(?:-\d{2})?(?:[T ].*)?").fillna(False).all():
        return False
    # utc: cells with and without a time zone (2024-01-31T12:00Z, 2024-01-31 13:00) are all dates
    return bool(pd.to_datetime(s, errors="coerce", format="ISO8601", utc=True).notna().all())


def parse_channel(path: Path, name: str, cells: np.ndarray, first_row: int = 0, carry: int = 0) -> Channel:
    """Numbers of a numeric text column (a block whose first cell is data row `first_row + 1` of the file); an
    InputError for a cell that is not a number, an infinite value or one beyond float64. `carry`: the decimals
    a leading missing cell takes (those of the cell before the block)."""
    stripped = _stripped(cells)
    missing, number, infinite = _classify(stripped)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise InputError(f"{path}: column {name!r}, data row {first_row + row + 1} holds {stripped[row]!r}; only "
                         "finite numbers are read (leave the cell empty to mark a missing value)")
    bad = ~(missing | number)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: column {name!r}, data row {first_row + row + 1} holds {stripped[row]!r}, which "
                         "is not a number")
    numbers = stripped[number]
    values = np.full(len(cells), np.nan)
    values[number] = numbers.to_numpy(dtype=np.float64)  # Python's float(): "1e999" becomes inf, refused below
    if not np.isfinite(values[number]).all():
        row = int(np.flatnonzero(number & ~np.isfinite(values))[0])
        raise InputError(f"{path}: column {name!r}, data row {first_row + row + 1} holds {stripped[row]!r}, beyond "
                         "the float64 range (about 1.8e308)")
    dot, length = numbers.str.find(".").to_numpy(), numbers.str.len().to_numpy()
    written = np.where(numbers.str.contains("[eE]").to_numpy(dtype=bool), _SCI, np.where(dot >= 0, length - dot - 1, 0))
    if len(written) and written.max() > MAX_DECIMALS:
        row = int(np.flatnonzero(number)[int(np.argmax(written))])
        raise InputError(f"{path}: column {name!r}, data row {first_row + row + 1} holds a number with "
                         f"{int(written.max())} digits after the point; at most {MAX_DECIMALS} are kept")
    decimals = np.full(len(cells), np.nan)
    decimals[number] = written
    # A missing cell takes the decimals of the cell before it, so runs stay long in the side information.
    decimals = _forward_fill(decimals, carry).astype(np.int64)
    spellings = [str(c) for c in cells[missing]]  # as written, spaces included
    missing_text: str | list[str] = spellings if len(set(spellings)) > 1 else (spellings[0] if spellings else "")
    return Channel(values, decimals, missing_text)


def _forward_fill(x: np.ndarray, first: float = 0) -> np.ndarray:
    """NaN entries of (T,) take the last value before them (`first` at the start)."""
    import pandas as pd

    return pd.Series(x).ffill().fillna(first).to_numpy()


def resolve_columns(
    path: Path, header: list[str], time_name: str | None, channels: list[str] | None, keep_columns: bool,
    numeric: dict[str, bool] | None = None,
) -> tuple[list[str], list[str]]:
    """(channel names in channel order, kept column names) of a file with this header.

    `time_name`: the time column or None (already decided). `channels` None: every column that `numeric` marks
    numeric, except the time column. Any other column is kept when `keep_columns`, else an InputError says
    what to set.
    """
    if time_name is not None and time_name not in header:
        raise InputError(f"{path} has no time column {time_name!r}; its columns are {header}")
    if channels is not None:
        absent = [c for c in channels if c not in header]
        if absent:
            raise InputError(f"{path} has no column(s) {absent}; its columns are {header}")
        if time_name in channels:
            raise InputError(f"column {time_name!r} cannot be both the time column and a channel")
        reason = "is not one of the chosen channels"
    else:
        channels = [name for name in header if name != time_name and (numeric or {}).get(name, False)]
        reason = "is not numeric"
    others = [name for name in header if name != time_name and name not in channels]
    if others and not keep_columns:
        raise InputError(f"{path}: column {others[0]!r} {reason}; set keep_columns=true to carry such columns "
                         "through unchanged, or choose the channels with columns")
    if not channels:
        raise InputError(f"{path} has no numeric column to compress (columns: {header})")
    return list(channels), others


def detect_columns(csv_file: CsvFile, time_col: str | bool | None, need_numeric: bool) -> tuple[str | None, dict]:
    """One pass over a file for what `learn` decides from content: the time column (time_col None: the first
    column when its name is a usual time name (TIME_NAMES) or every cell of it is an ISO 8601 date or time, and
    the file has another column) and, with `need_numeric`, which columns hold only numbers or missing cells."""
    header = csv_file.header
    check_iso = time_col is None and len(header) > 1 and header[0].strip().lower() not in TIME_NAMES
    numeric = {name: True for name in header} if need_numeric else {}
    iso = check_iso
    if need_numeric or check_iso:
        for cells in csv_file.blocks(PIECE_CELLS // len(header) + 1):
            for j, name in enumerate(header):
                if numeric.get(name):
                    numeric[name] = is_numeric(cells[j])
            iso = iso and is_iso_time(cells[0])
    if time_col is None:
        named = header[0].strip().lower() in TIME_NAMES
        time_name = header[0] if len(header) > 1 and (named or iso) else None
    elif time_col is False:
        time_name = None
    else:
        time_name = str(time_col)
    return time_name, numeric


# ---- side information ----------------------------------------------------------------------------------
def encode_text_column(texts: list[str]) -> dict:
    """Cells of a text column, exactly: {"range": [start, step, count]} for evenly spaced integers (e.g. years),
    else {"text": [cell, ...]}."""
    if len(texts) >= 2 and all(re.fullmatch(r"0|-?[1-9]\d{0,17}", t) for t in texts):
        ints = np.array([int(t) for t in texts], dtype=np.int64)
        step = int(ints[1] - ints[0])
        if (np.diff(ints) == step).all():
            return {"range": [int(ints[0]), step, len(ints)]}
    return {"text": texts}


def decode_text_column(spec: object, rows: int) -> list[str] | range | np.ndarray:
    """The `rows` cells of `encode_text_column`'s spec, checked to be exactly that many before anything is
    built: a list of str; for {"range": ...} the integers, lazily (a `range`, or one value broadcast for a
    step of 0), so that a column costs nothing until its rows are written (str() each cell). Also reads
    format 1's {"zlib": base64 of zlib of JSON}."""
    if isinstance(spec, dict) and "range" in spec:
        start, step, count = _SIDE.array(spec["range"], "a range column", 3)
        count = _SIDE.integer(count, "a range column's row count", rows, rows)
        _SIDE.integer(start, "a range column's start", -_INT64, _INT64 - 1)
        _SIDE.integer(step, "a range column's step", -2 * _INT64, 2 * _INT64)
        _SIDE.integer(start + step * max(count - 1, 0), "a range column's last value", -_INT64, _INT64 - 1)
        return np.broadcast_to(np.int64(start), (count,)) if step == 0 else range(start, start + step * count, step)
    texts = _SIDE.get(spec, "text") if not isinstance(spec, dict) or "zlib" not in spec else \
        json.loads(_SIDE.inflate(spec["zlib"], "a packed text column").decode("utf-8"))
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise FormatError("timeseries side information: a kept column is not a list of strings")
    if len(texts) != rows:
        raise _SIDE.error(f"a text column holds {len(texts):,} cells for {rows:,} rows")
    return texts


def mask_runs(mask: np.ndarray) -> list[list[int]]:
    """[[start, length], ...] of the True runs of a (T,) bool mask."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [[s, e - s] for s, e in zip(edges[::2].tolist(), edges[1::2].tolist())]


def runs_mask(runs: object, rows: int) -> np.ndarray:
    """The (rows,) bool mask of [[start, length], ...] runs, in order and apart (as `mask_runs` writes them)."""
    mask = np.zeros(rows, dtype=bool)
    end = 0
    for run in _SIDE.array(runs, "missing-value runs"):
        start, length = _SIDE.array(run, "a missing-value run", 2)
        if not (_SIDE.integer(start, "a missing-value run's start") >= end
                and _SIDE.integer(length, "a missing-value run's length", 1) and start + length <= rows):
            raise FormatError("timeseries side information: a missing-value run lies outside the rows")
        mask[start : start + length] = True
        end = start + length
    return mask


def value_runs(values: np.ndarray) -> list[list[int]]:
    """[[value, count], ...] of consecutive equal values of (T,) ints."""
    if not len(values):
        return []
    starts = np.concatenate(([0], np.flatnonzero(np.diff(values)) + 1))
    counts = np.diff(np.concatenate((starts, [len(values)])))
    return [[v, n] for v, n in zip(values[starts].tolist(), counts.tolist())]


def runs_values(runs: object, rows: int) -> np.ndarray:
    """The (rows,) int64 decimals of [[decimals, count], ...] runs, checked to cover exactly `rows` first."""
    runs = _SIDE.runs(runs, "decimals runs", rows, "rows", _SCI, MAX_DECIMALS)
    if not runs:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(np.array([v for v, _ in runs], dtype=np.int64), [n for _, n in runs])


def _legacy_missing(spec: dict, rows: int) -> np.ndarray:
    """Format 1's missing cells: {"runs": [[start, length], ...]} or {"zlib": packbits bitmask}."""
    if "zlib" in spec:
        bits = np.frombuffer(_SIDE.inflate(spec["zlib"], "a missing-value bitmask", size=-(-rows // 8)), dtype=np.uint8)
        return np.unpackbits(bits)[:rows].astype(bool)
    return runs_mask(spec["runs"], rows)


def _legacy_decimals(spec: dict, rows: int) -> np.ndarray:
    """Format 1's decimals: {"runs": [[decimals, count], ...]} or {"zlib": int16 little-endian array}."""
    if "zlib" in spec:
        packed = _SIDE.inflate(spec["zlib"], "a decimals array", size=2 * rows)
        decimals = np.frombuffer(packed, dtype="<i2").astype(np.int64)
        if len(decimals) and (decimals.min() < _SCI or decimals.max() > MAX_DECIMALS):
            raise _SIDE.error(f"decimals must lie in [{_SCI}, {MAX_DECIMALS}]")
        return decimals
    return runs_values(spec["runs"], rows)


def _check_share(share: float) -> float:
    """`learn`'s share of each file, refused unless in (0, 1]."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise InputError(f"share must be in (0, 1], got {share!r}")
    return float(share)


def _finite_numbers(values: object, what: str, count: int) -> list[float]:
    """`count` finite numbers (the side's normalisation), or a FormatError naming `what`."""
    values = _SIDE.array(values, what, count)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise _SIDE.error(f"{what} must hold finite numbers")
    return values


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class ChannelStats:
    """Running per-channel count, mean, population standard deviation, minimum and maximum of blocks of values
    (T, C) with NaN for missing ones, safe for magnitudes up to float64's limit: sums are kept in units of the
    channel's largest |value| so far (rescaled when it grows) and blocks are merged with Chan et al.'s formula.
    A single block gives exactly the two-pass mean and variance of its scaled values."""

    def __init__(self, channels: int) -> None:
        self.count = np.zeros(channels)
        self.mean_s = np.zeros(channels)  # mean / unit
        self.m2_s = np.zeros(channels)  # sum of squared deviations / unit^2
        self.peak = np.zeros(channels)  # largest |value| so far
        self.missing = np.zeros(channels, dtype=np.int64)
        self.low = np.full(channels, np.inf)
        self.high = np.full(channels, -np.inf)

    @staticmethod
    def _unit(peak: np.ndarray) -> np.ndarray:
        return np.where(peak > 0, peak, 1.0)

    def add(self, values: np.ndarray) -> None:
        observed = ~np.isnan(values)  # (T, C)
        peak = np.maximum(self.peak, np.where(observed, np.abs(values), 0.0).max(axis=0, initial=0.0))
        unit = self._unit(peak)
        ratio = self._unit(self.peak) / unit  # <= 1: the running sums only shrink
        mean_a, m2_a = self.mean_s * ratio, self.m2_s * ratio * ratio
        scaled = values / unit  # (T, C), |x| <= 1
        n_b = observed.sum(axis=0)
        mean_b = np.where(n_b > 0, np.nansum(scaled, axis=0) / np.maximum(n_b, 1), 0.0)
        m2_b = np.where(n_b > 0, np.nansum((scaled - mean_b) ** 2, axis=0), 0.0)
        n_a, n = self.count, self.count + n_b
        delta = mean_b - mean_a
        merged = n_a > 0
        self.mean_s = np.where(merged, mean_a + delta * n_b / np.maximum(n, 1), mean_b)
        self.m2_s = np.where(merged, m2_a + m2_b + delta * delta * n_a * n_b / np.maximum(n, 1), m2_b)
        self.count, self.peak = n, peak
        self.missing += (~observed).sum(axis=0)
        self.low = np.minimum(self.low, np.where(observed, values, np.inf).min(axis=0, initial=np.inf))
        self.high = np.maximum(self.high, np.where(observed, values, -np.inf).max(axis=0, initial=-np.inf))

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and standard deviation; 0 and 0 for a channel without observed values."""
        unit = self._unit(self.peak)
        var_s = np.where(self.count > 0, self.m2_s / np.maximum(self.count, 1), 0.0)
        return self.mean_s * unit, np.sqrt(var_s) * unit

    def report(self, names: list[str]) -> dict:
        """Per channel: observed and missing counts, mean, std, min, max (None where nothing is observed)."""
        mean, std = self.mean_std()
        out = {}
        for c, name in enumerate(names):
            seen = self.count[c] > 0
            out[name] = {
                "observed": int(self.count[c]), "missing": int(self.missing[c]),
                "mean": _finite_or_none(mean[c]) if seen else None, "std": _finite_or_none(std[c]) if seen else None,
                "min": float(self.low[c]) if seen else None, "max": float(self.high[c]) if seen else None,
            }
        return out


def format_values(values: np.ndarray, decimals: np.ndarray) -> list[str]:
    """Reconstructed values (T,) spelled with each cell's decimals as read (so a perfect reconstruction gives
    the same numbers back), scientific-notation cells with 10 significant digits; never "-0.0"."""
    out = []
    for v, d in zip(values.tolist(), decimals.tolist()):
        text = f"{v:.10g}" if d == _SCI else f"{v:.{d}f}"
        if text.startswith("-") and float(text) == 0:
            text = text[1:]
        out.append(text)
    return out


# ---- settings --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TimeSeriesSettings(Settings):
    patch: int = option(8, "time steps per model position (a symbol); seq_len counts patches")
    time_col: str | bool | None = option(None, "the time column: null detects it (a first column named like a "
                                               "time or holding ISO 8601 dates), false: none, or its name")
    columns: list[str] | None = option(None, "the channels, in the model's order (null: every numeric column but "
                                             "the time column)")
    keep_columns: bool = option(False, "carry other columns (text, or numbers not chosen as channels) through "
                                       "exactly")
    loss: str = option("mse", "training loss: mse or huber")
    huber_delta: float = option(1.0, "huber loss: delta in channel standard deviations")
    revin: bool = option(False, "normalise each window by its own per-channel mean and scale, kept as side "
                                "information (2 floats per channel and window)")
    mean: list[float] | None = option(None, "per-channel mean of the training data", learned=True)
    scale: list[float] | None = option(None, "per-channel standard deviation of the training data (1 for a "
                                             "constant channel)", learned=True)

    def validate(self) -> None:
        if isinstance(self.patch, bool) or not isinstance(self.patch, int) or self.patch < 1:
            raise InputError(f"patch must be a positive whole number of time steps, got {self.patch!r}")
        if self.time_col is True or not isinstance(self.time_col, (str, bool, type(None))):
            raise InputError(f"time_col must be a column name, null (detect) or false (none), got {self.time_col!r}")
        if self.columns is not None and (not isinstance(self.columns, list) or not self.columns
                                         or not all(isinstance(c, str) for c in self.columns)
                                         or len(set(self.columns)) != len(self.columns)):
            raise InputError(f"columns must name at least one channel, each once, got {self.columns!r}")
        if not isinstance(self.keep_columns, bool):
            raise InputError(f"keep_columns must be true or false, got {self.keep_columns!r}")
        if not isinstance(self.revin, bool):
            raise InputError(f"revin must be true or false, got {self.revin!r}")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if isinstance(self.huber_delta, bool) or not isinstance(self.huber_delta, (int, float)) \
                or not self.huber_delta > 0:
            raise InputError(f"huber_delta must be a positive number, got {self.huber_delta!r}")
        if (self.mean is None) != (self.scale is None):
            raise InputError("mean and scale are learned together: give both or neither")
        if self.mean is not None:
            if self.columns is None or self.time_col is None:
                raise InputError("learned settings (mean, scale) need the columns and time_col they were learned with")
            for name in ("mean", "scale"):
                values = getattr(self, name)
                if not isinstance(values, list) or len(values) != len(self.columns) \
                        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                    raise InputError(f"{name} must hold one finite number per channel in columns")
            if not all(v > 0 for v in self.scale):
                raise InputError("scale must be positive")

    @property
    def learned(self) -> bool:
        return self.mean is not None

    def require_learned(self) -> None:
        if not self.learned:
            raise InputError("the timeseries domain has not learned its channels and normalisation yet; "
                             "call learn(paths) (fit does) or load a trained model")

    @property
    def channels(self) -> int:
        self.require_learned()
        return len(self.columns)

    @property
    def values_width(self) -> int:
        """Floats of the values half of a patch vector: patch * C."""
        return self.patch * self.channels

    @property
    def feature_width(self) -> int:
        """Floats of a patch vector: values and observed mask (patch * C each), then with `revin` the window's
        per-channel mean and scale (C each)."""
        return 2 * self.values_width + (2 * self.channels if self.revin else 0)


# ---- objective -------------------------------------------------------------------------------------------
class TimeSeriesObjective(Objective):
    """MSE (or Huber) over observed values in normalised units; NRMSE, NMAE, MAE and R² from additive totals."""

    metric_name = "nrmse"
    higher_is_better = False

    def __init__(self, settings: TimeSeriesSettings) -> None:
        self.settings = settings  # used learned: the channels and their scale

    def _split(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        """Normalised errors (B, N, P*C) and the observed cells (B, N, P*C) of real patches (with `revin`, in
        the learned units: the window's scale put back)."""
        w = self.settings.values_width
        observed = (target[..., w : 2 * w] > 0.5) & mask[..., None]
        err = output[..., :w].float() - target[..., :w].float()
        if self.settings.revin:
            err = err * self._tiled(target, 1)
        return err, observed

    def _tiled(self, target: torch.Tensor, which: int) -> torch.Tensor:
        """The window's per-channel mean (which 0) or scale (1) of `revin`, (B, N, P*C) like the values."""
        w, c = self.settings.values_width, self.settings.channels
        stats = target[..., 2 * w + which * c : 2 * w + (which + 1) * c].float()  # (B, N, C)
        return stats.repeat(1, 1, self.settings.patch)  # a patch's values are P steps of C channels

    def loss_weight(self, target: torch.Tensor, mask: torch.Tensor) -> float:
        return float(self._split(target, target, mask)[1].sum())  # the observed values

    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean MSE (or Huber) over observed values, in normalised units; the mask half of the output is not
        trained (the model's output width must equal its input width, so the head predicts it anyway)."""
        err, observed = self._split(output, target, mask)
        if self.settings.loss == "huber":
            delta = float(self.settings.huber_delta)
            per_value = F.huber_loss(err, torch.zeros_like(err), reduction="none", delta=delta)
        else:
            per_value = err.square()
        return (per_value * observed).sum() / observed.sum().clamp(min=1)

    def totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Per channel c, over observed values: squared and absolute normalised errors, their count, and the
        squared deviations from each window's own mean (the error of storing one mean per window)."""
        err, observed = self._split(output, target, mask)
        b, c = err.shape[0], self.settings.channels
        err = err.reshape(b, -1, c)  # (B, N*P, C): time steps of each window
        observed = observed.reshape(b, -1, c)
        x = target[..., : self.settings.values_width].float()
        if self.settings.revin:  # the learned units
            x = x * self._tiled(target, 1) + self._tiled(target, 0)
        x = x.reshape(b, -1, c)  # (B, N*P, C)
        n_w = observed.sum(1)  # (B, C)
        mean_w = (x * observed).sum(1) / n_w.clamp(min=1)  # (B, C)
        base = (((x - mean_w[:, None]) * observed).square()).sum((0, 1))  # (C,)
        sq = (err.square() * observed).sum((0, 1))  # (C,)
        ab = (err.abs() * observed).sum((0, 1))
        n = n_w.sum(0)
        totals: dict[str, float] = {}
        for i in range(c):
            totals[f"sq.{i}"], totals[f"abs.{i}"], totals[f"n.{i}"] = float(sq[i]), float(ab[i]), float(n[i])
            totals[f"base.{i}"] = float(base[i])
        return totals

    def values(self, totals: dict[str, float]) -> dict[str, float]:
        """nrmse: sqrt(mean over every observed value of ((x_hat - x) / sigma_c)^2), sigma_c the channel's
        learned scale (its standard deviation at fit time); nmae the same with |.|; mae in the channels' own
        units (pooled: meaningful when channels share a unit); r2 = 1 - SSE / (squared deviations from each
        window's own mean), so 0 is no better than keeping one mean per window and channel; per channel
        nrmse[name] and mae[name]."""
        c = self.settings.channels
        n = [totals.get(f"n.{i}", 0.0) for i in range(c)]
        sq = [totals.get(f"sq.{i}", 0.0) for i in range(c)]
        ab = [totals.get(f"abs.{i}", 0.0) for i in range(c)]
        total = sum(n)
        nan = float("nan")
        base = sum(totals.get(f"base.{i}", 0.0) for i in range(c))
        out = {
            self.metric_name: math.sqrt(sum(sq) / total) if total else nan,
            "nmae": sum(ab) / total if total else nan,
            "mae": sum(a * s for a, s in zip(ab, self.settings.scale)) / total if total else nan,
            "r2": 1.0 - sum(sq) / base if base else nan,
            "observed_values": total,
        }
        for i, name in enumerate(self.settings.columns):
            out[f"nrmse[{name}]"] = math.sqrt(sq[i] / n[i]) if n[i] else nan
            out[f"mae[{name}]"] = ab[i] * self.settings.scale[i] / n[i] if n[i] else nan
        return out


# ---- codec -----------------------------------------------------------------------------------------------
class TimeSeriesCodec(Codec):
    """CSV files <-> windows of patches, streamed; also arrays <-> windows for the scikit-learn estimator
    (`series_windows`, `series_values`).

    Piece side information (JSON; rows are data rows, 0-based within the piece):

        every piece   "rows": its row count (its patches x patch; the file's last piece: the remainder)
                      "time": its time cells (absent without a time column), "kept": {name: its cells}, cells
                      as {"range": [start, step, count]} (evenly spaced integers) or {"text": [cell, ...]}
                      "missing": per channel [[start, length], ...] of missing cells
                      "missing_text": per channel, their spelling: one string, or one per missing cell
                      "decimals": per channel [[decimals, count], ...], -1 for scientific notation
        first piece   also "columns" (every name, file order), "newline", "quoted_header", "bom", "patch",
                      "time_col", "channels", "normalisation": {"mean": [...], "scale": [...]}
        last piece    no windows, "rows": 0 and "stats": per channel observed, missing, mean, std, min, max
    """

    suffix = ".csv"
    settings: TimeSeriesSettings

    def __init__(self, settings: TimeSeriesSettings) -> None:
        super().__init__(settings)
        if settings.learned:
            self.mean = np.array(settings.mean, dtype=np.float64)
            self.scale = np.array(settings.scale, dtype=np.float64)

    # ---- arrays <-> windows -------------------------------------------------------------------------
    def normalise(self, values: np.ndarray, where: str = "the input", first_row: int = 0) -> np.ndarray:
        """(T, C) float64 -> (T, C) normalised float64, NaN kept; an InputError when a value lies so far
        outside the learned range that float32 cannot hold it (rows counted from `first_row + 1`)."""
        self.settings.require_learned()
        with np.errstate(over="ignore"):
            z = values / self.scale - self.mean / self.scale  # two divisions: x - mean may overflow near 1e308
        too_big = np.abs(np.nan_to_num(z, nan=0.0)) > _FLOAT32_MAX
        if too_big.any():
            row, col = (int(i) for i in np.argwhere(too_big)[0])
            raise InputError(f"{where}: channel {self.settings.columns[col]!r}, row {first_row + row + 1} holds "
                             f"{float(values[row, col]):.6g}, more than {_FLOAT32_MAX:.3g} standard deviations from "
                             "the learned mean: too far for the model's float32 input; fit on data of this magnitude")
        return z

    def series_windows(self, values: np.ndarray, seq_len: int, where: str = "the input",
                       first_row: int = 0) -> list[torch.Tensor]:
        """A series (T, C) float64 with NaN for missing values -> windows (L, 2 * patch * C) float32 of at
        most seq_len patches; the last patch is padded with unobserved steps."""
        self.settings.require_learned()
        t, c = values.shape
        if c != self.settings.channels:
            raise InputError(f"{where} has {c} channel(s); this model was fit on {self.settings.channels}")
        if t == 0:
            raise InputError(f"{where} has no time steps")
        patch = self.settings.patch
        z = self.normalise(values, where, first_row)
        observed = ~np.isnan(z)  # (T, C)
        patches = -(-t // patch)
        padded = patches * patch
        vals = np.zeros((padded, c), dtype=np.float32)
        vals[:t] = np.where(observed, z, 0.0)
        mask = np.zeros((padded, c), dtype=np.float32)
        mask[:t] = observed
        x = np.concatenate([vals.reshape(patches, patch * c), mask.reshape(patches, patch * c)], axis=1)
        windows = split_windows(torch.from_numpy(x), seq_len)  # each (L, 2 * patch * C)
        return [self._instance_normalised(w) for w in windows] if self.settings.revin else windows

    def _instance_normalised(self, window: torch.Tensor) -> torch.Tensor:
        """`revin`: (L, 2PC) -> (L, 2PC + 2C), the values normalised by the window's per-channel mean and scale
        (population standard deviation over observed values; 1 when it is below 1e-6 of the learned scale, or
        nothing is observed), both float32, appended to every patch."""
        c, w = self.settings.channels, self.settings.values_width
        values, observed = window[:, :w].double().reshape(-1, c), window[:, w:].double().reshape(-1, c)
        count = observed.sum(0)
        mean = (values * observed).sum(0) / count.clamp(min=1)
        spread = (((values - mean) * observed).square().sum(0) / count.clamp(min=1)).sqrt()
        mean, scale = mean.float(), torch.where(spread > 1e-6, spread, torch.ones_like(spread)).float()
        normalised = torch.where(observed > 0, (values - mean.double()) / scale.double(), 0.0).float()
        stats = torch.cat([mean, scale]).expand(len(window), 2 * c)
        return torch.cat([normalised.reshape(len(window), w), window[:, w:], stats], dim=1)

    def leveled(self, window: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """`revin`: a window (L, 2PC[+2C]) -> (L, 2PC) float64, its values put back at the level of `stats` (the
        window's [mean..., scale...]): the learned units."""
        s, w = self.settings, self.settings.values_width
        x = window[:, : 2 * w].detach().cpu().double().clone()
        stats = stats.double()
        x[:, :w] = x[:, :w] * stats[s.channels :].repeat(s.patch) + stats[: s.channels].repeat(s.patch)
        return x

    @staticmethod
    def window_stats(windows: list[torch.Tensor], channels: int) -> list[list[float]]:
        """`revin`: each window's [mean..., scale...] (2C floats, as the windows carry them)."""
        return [w[0, -2 * channels :].tolist() for w in windows]

    def series_values(self, windows: list[torch.Tensor], rows: int, mean=None, scale=None,
                      stats: list | None = None) -> np.ndarray:
        """Windows (L, 2 * patch * C) in read order -> the series' first `rows` time steps (rows, C) float64,
        denormalised (every step, including those that were missing). With `revin`, `stats` holds each window's
        [mean..., scale...] (the side information `window_stats`), which puts its level back first."""
        c, patch = self.settings.channels, self.settings.patch
        width = self.settings.feature_width
        windows = [w.detach().cpu().double() for w in windows]
        for w in windows:
            if w.ndim != 2 or w.shape[1] != width:
                raise FormatError(f"timeseries windows must have {width} features per patch, got shape "
                                  f"{tuple(w.shape)}")
        if self.settings.revin:
            if stats is None or len(stats) != len(windows):
                raise FormatError(f"timeseries: {0 if stats is None else len(stats):,} window statistics for "
                                  f"{len(windows):,} windows (the model normalises each window: revin)")
            for i, numbers in enumerate(stats):
                values = np.asarray(_finite_numbers(numbers, "a window's mean and scale", 2 * c), dtype=np.float64)
                if not (values[c:] > 0).all() or not (np.abs(values) <= _FLOAT32_MAX).all():
                    raise FormatError("timeseries side information: a window's scale must be positive and its mean "
                                      "and scale within float32's range")
                windows[i] = self.leveled(windows[i], torch.from_numpy(values))
        x = torch.cat(windows).numpy() if windows else np.zeros((0, width))
        if len(x) != -(-rows // patch):
            raise FormatError(f"timeseries: {len(x):,} patches decoded for {rows:,} rows "
                              f"({-(-rows // patch):,} patches of {patch})")
        z = x[:, : self.settings.values_width].reshape(len(x) * patch, c)[:rows]  # (rows, C)
        mean = self.mean if mean is None else np.asarray(mean, dtype=np.float64)
        scale = self.scale if scale is None else np.asarray(scale, dtype=np.float64)
        return z * scale + mean

    # ---- files -> windows -----------------------------------------------------------------------------
    def _open(self, path: Path) -> tuple[CsvFile, str | None, list[str]]:
        """The file, its time column and kept columns, checked against the learned channels."""
        s = self.settings
        s.require_learned()
        csv_file = CsvFile(path)
        time_name = s.time_col if isinstance(s.time_col, str) else None
        _, kept = resolve_columns(csv_file.path, csv_file.header, time_name, s.columns, s.keep_columns)
        return csv_file, time_name, kept

    def _channels(self, csv_file: CsvFile, cells: list[np.ndarray], first_row: int, carry: list[int]) -> list[Channel]:
        index = {name: j for j, name in enumerate(csv_file.header)}
        return [parse_channel(csv_file.path, name, cells[index[name]], first_row, carry[c])
                for c, name in enumerate(self.settings.columns)]

    def piece_rows(self, seq_len: int, columns: int) -> int:
        """Rows of a piece: whole windows, at most PIECE_WINDOWS of them and about PIECE_CELLS cells."""
        window_rows = seq_len * self.settings.patch
        return window_rows * max(1, min(PIECE_WINDOWS, PIECE_CELLS // (window_rows * max(columns, 1))))

    def iter_windows(self, path: Path, seq_len: int) -> Iterator[Piece]:
        """Pieces of whole windows (L, 2 * patch * C) and the side information of exactly their rows."""
        if seq_len < 1:
            raise InputError(f"seq_len must be at least 1, got {seq_len}")
        s = self.settings
        csv_file, time_name, kept = self._open(Path(path))
        index = {name: j for j, name in enumerate(csv_file.header)}
        stats = ChannelStats(len(s.columns))
        carry = [0] * len(s.columns)
        first_row = 0
        for cells in csv_file.blocks(self.piece_rows(seq_len, len(csv_file.header))):
            channels = self._channels(csv_file, cells, first_row, carry)
            values = np.stack([ch.values for ch in channels], axis=1)  # (T, C)
            windows = self.series_windows(values, seq_len, str(csv_file.path), first_row)
            side: dict = {}
            if first_row == 0:
                side.update(columns=csv_file.header, newline=csv_file.newline, quoted_header=csv_file.quoted_header,
                            bom=csv_file.bom, patch=s.patch, time_col=time_name, channels=list(s.columns),
                            normalisation={"mean": list(s.mean), "scale": list(s.scale)})
            side["rows"] = len(values)
            if time_name is not None:
                side["time"] = encode_text_column([str(c) for c in cells[index[time_name]]])
            side["kept"] = {name: encode_text_column([str(c) for c in cells[index[name]]]) for name in kept}
            side["missing"] = [mask_runs(np.isnan(ch.values)) for ch in channels]
            side["missing_text"] = [ch.missing_text for ch in channels]
            side["decimals"] = [value_runs(ch.decimals) for ch in channels]
            if s.revin:
                side["window_stats"] = self.window_stats(windows, len(s.columns))
            stats.add(values)
            carry = [int(ch.decimals[-1]) for ch in channels]
            first_row += len(values)
            yield Piece(windows, side)
        yield Piece([], {"rows": 0, "stats": stats.report(list(s.columns))})

    def references(self, path: Path, symbols: int) -> dict[str, float]:
        s = self.settings
        return {f"float32 values ({s.patch} steps x {s.channels} channels per symbol)": 32.0 * s.values_width}

    # ---- windows -> files -------------------------------------------------------------------------------
    def open_writer(self, file: BinaryIO, name: str, header: dict) -> Writer:
        self.settings.require_learned()
        return TimeSeriesWriter(self, file)

    def legacy_pieces(self, side: dict, lengths: list[int]) -> Iterator[tuple[int, dict]]:
        """Format 1 kept the whole file's side information in one block (text columns and masks zlib-packed when
        long): cut it into the pieces of this format, PIECE_WINDOWS windows each, then the stats piece."""
        with _SIDE.guard():
            yield from self._legacy_pieces(side, lengths)

    def _legacy_pieces(self, side: dict, lengths: list[int]) -> Iterator[tuple[int, dict]]:
        patch = _SIDE.integer(_SIDE.get(side, "patch"), "patch", 1)
        # The file's rows fill its patches: checked against the windows before anything is sized by them.
        rows = _SIDE.integer(_SIDE.get(side, "rows"), "the row count", 0, sum(lengths) * patch)
        if -(-rows // patch) != sum(lengths):
            raise _SIDE.error(f"{rows:,} rows make {-(-rows // patch):,} patches of {patch}, but the windows hold "
                              f"{sum(lengths):,}")
        channels = _SIDE.array(side["channels"], "channels", len(self.settings.columns or []) or None)
        per_channel = {key: _SIDE.array(side[key], key) for key in ("missing", "decimals", "missing_text")}
        if any(len(entries) != len(channels) for entries in per_channel.values()):  # before a row-sized array
            raise FormatError("timeseries side information: per-channel entries do not match the channels")
        time = decode_text_column(side["time"], rows) if side["time_col"] is not None else None
        kept = {name: decode_text_column(spec, rows) for name, spec in _SIDE.get(side, "kept").items()}
        missing = [_legacy_missing(spec, rows) for spec in per_channel["missing"]]
        decimals = [_legacy_decimals(spec, rows) for spec in per_channel["decimals"]]
        texts = [t if isinstance(t, str) else list(t) for t in per_channel["missing_text"]]
        spelled = [0] * len(channels)  # missing cells spelled so far, per channel (for per-cell spellings)
        start = 0
        for i in range(0, max(len(lengths), 1), PIECE_WINDOWS):
            group = lengths[i : i + PIECE_WINDOWS]
            end = rows if i + PIECE_WINDOWS >= len(lengths) else min(rows, start + sum(group) * patch)
            piece: dict = {}
            if i == 0:
                piece.update({key: side[key] for key in ("columns", "newline", "quoted_header", "bom", "patch",
                                                         "time_col", "channels", "normalisation")})
            piece["rows"] = end - start
            if time is not None:
                piece["time"] = encode_text_column([str(cell) for cell in time[start:end]])
            piece["kept"] = {name: encode_text_column([str(cell) for cell in cells[start:end]])
                             for name, cells in kept.items()}
            piece["missing"] = [mask_runs(m[start:end]) for m in missing]
            piece["missing_text"] = []
            for c, text in enumerate(texts):
                gaps = int(missing[c][start:end].sum())
                piece["missing_text"].append(text if isinstance(text, str) else text[spelled[c] : spelled[c] + gaps])
                spelled[c] += gaps
            piece["decimals"] = [value_runs(d[start:end]) for d in decimals]
            yield len(group), piece
            start = end
        yield 0, {"rows": 0, "stats": side.get("stats", {})}


class TimeSeriesWriter(Writer):
    """Writes a CSV piece by piece: the header line with the first piece, then each piece's rows: the input's
    columns in order, its time and kept cells and missing cells exactly, the reconstructed channel values
    spelled with the input's decimals."""

    def __init__(self, codec: TimeSeriesCodec, file: BinaryIO) -> None:
        self.codec, self.file = codec, file
        self.layout: dict | None = None  # the first piece's file-level fields

    def write(self, windows: list[torch.Tensor], side: dict) -> None:
        with _SIDE.guard():
            self._write(windows, side)

    def _start(self, side: dict) -> None:
        s = self.codec.settings
        if int(side["patch"]) != s.patch or list(side["channels"]) != s.columns:
            raise FormatError(f"the latents hold patches of {side['patch']} steps of {side['channels']}; this model "
                              f"uses {s.patch} steps of {s.columns}")
        if side["newline"] not in ("\n", "\r\n"):
            raise FormatError("timeseries side information: the line ending must be LF or CRLF")
        header = [str(name) for name in _SIDE.array(side["columns"], "columns")]
        time_col = side["time_col"]
        if not isinstance(time_col, (str, type(None))) or not isinstance(side["kept"], dict):
            raise _SIDE.error("time_col must be a column name or null, and kept an object")
        named = {*s.columns, *side["kept"], *([time_col] if time_col is not None else [])}
        if sorted(named) != sorted(header):
            raise FormatError("timeseries side information: the columns do not match the header")
        normalisation = side["normalisation"]
        self.layout = {"header": header, "newline": side["newline"], "time_col": time_col,
                       "mean": _finite_numbers(normalisation["mean"], "the mean", len(s.columns)),
                       "scale": _finite_numbers(normalisation["scale"], "the scale", len(s.columns))}
        out = io.StringIO()
        if side.get("bom"):
            out.write("\ufeff")
        if side.get("quoted_header"):
            out.write(",".join(_quoted(name) for name in header) + side["newline"])
        else:
            csv.writer(out, lineterminator=side["newline"]).writerow(header)
        self.file.write(out.getvalue().encode("utf-8"))

    def _write(self, windows: list[torch.Tensor], side: dict) -> None:
        if self.layout is None:
            if not isinstance(side, dict) or "columns" not in side:
                raise FormatError("timeseries side information: the first piece does not hold the CSV header")
            self._start(side)
        layout, codec = self.layout, self.codec
        channels = codec.settings.columns
        rows = _SIDE.integer(_SIDE.get(side, "rows"), "the row count")
        if rows == 0:
            if windows:
                raise FormatError(f"timeseries: {len(windows)} windows for a piece of no rows")
            return
        # The row count is checked against the decoded patches first; every other count against the rows.
        window_stats = _SIDE.array(side["window_stats"], "window_stats", len(windows)) if codec.settings.revin else None
        values = codec.series_values(windows, rows, layout["mean"], layout["scale"], window_stats)  # (rows, C)
        per_channel = {key: _SIDE.array(side[key], key, len(channels))
                       for key in ("decimals", "missing", "missing_text")}
        decimals = [runs_values(spec, rows) for spec in per_channel["decimals"]]
        gaps = [np.flatnonzero(runs_mask(spec, rows)) for spec in per_channel["missing"]]
        spellings = per_channel["missing_text"]
        for spelled, missing in zip(spellings, gaps):
            if not isinstance(spelled, str) and (not isinstance(spelled, list) or len(spelled) != len(missing)):
                raise FormatError("timeseries side information: missing-cell spellings do not match the missing cells")
        texts = {name: decode_text_column(spec, rows) for name, spec in side["kept"].items()}
        if layout["time_col"] is not None:
            texts[layout["time_col"]] = decode_text_column(side["time"], rows)
        header = layout["header"]
        if sorted([*channels, *texts]) != sorted(header):
            raise FormatError("timeseries side information: the columns do not match the header and row count")
        step = max(1, WRITE_CELLS // len(header))  # rows spelled and written at once
        for start in range(0, rows, step):
            end = min(start + step, rows)
            columns = {name: [str(cell) for cell in cells[start:end]] for name, cells in texts.items()}
            for c, name in enumerate(channels):
                cells = format_values(values[start:end, c], decimals[c][start:end])
                first, last = np.searchsorted(gaps[c], [start, end])
                for k in range(first, last):
                    spelled = spellings[c]
                    cells[gaps[c][k] - start] = spelled if isinstance(spelled, str) else str(spelled[k])
                columns[name] = cells
            out = io.StringIO()
            csv.writer(out, lineterminator=layout["newline"]).writerows(zip(*(columns[n] for n in header)))
            self.file.write(out.getvalue().encode("utf-8"))

    def close(self) -> dict:
        if self.layout is None:
            raise FormatError("timeseries: no piece held the CSV header")
        return {"note": NOTE}


# ---- the domain -----------------------------------------------------------------------------------------
class TimeSeriesDomain(Domain):
    """CSV time series: patches of `patch` time steps of the channels, normalised with learned statistics."""

    name = "timeseries"
    settings_class = TimeSeriesSettings
    default_seq_len = 64  # patches: 512 time steps at the default patch of 8
    settings: TimeSeriesSettings

    def make_codec(self) -> TimeSeriesCodec:
        return TimeSeriesCodec(self.settings)

    def make_objective(self) -> TimeSeriesObjective:
        return TimeSeriesObjective(self.settings)

    def model_fields(self) -> dict:
        return {"feature_dim": self.settings.feature_width}

    def signal_features(self) -> int:
        """The values of a patch (patch x C), ahead of their observed mask and RevIN's statistics."""
        return self.settings.values_width

    def basis_samples(self, window: torch.Tensor) -> Iterator[np.ndarray]:
        """Every run of `patch` consecutive time steps in the window, one step apart (not one patch apart: a
        patch's principal axes are those of its values wherever a patch may start, and a long patch's many
        features need the patch times as many samples), unobserved values as NaN (left out of the fit, not
        read as zeros); in blocks of about a million values, whatever the patch and channel count."""
        c, w, patch = self.settings.channels, self.settings.values_width, self.settings.patch
        values = window[:, :w].double().reshape(-1, c).numpy()
        observed = window[:, w : 2 * w].reshape(-1, c).numpy() > 0.5
        steps = np.where(observed, values, np.nan)  # (time steps, C)
        if len(steps) < patch:
            return
        runs = np.lib.stride_tricks.sliding_window_view(steps, patch, axis=0)  # (T - patch + 1, C, patch): a view
        block = max(1, (1 << 20) // w)
        for start in range(0, len(runs), block):  # time-major within a run, as in a patch
            chunk = runs[start : start + block]
            yield chunk.transpose(0, 2, 1).reshape(len(chunk), w)

    def joined(self, windows: list[torch.Tensor]) -> torch.Tensor:
        """`revin`: each window's level put back and its statistics dropped, so that a window cut anew gets its
        own (`cut`); without it, the windows concatenated."""
        if not self.settings.revin:
            return torch.cat(windows)
        w = self.settings.values_width
        out = []
        for window in windows:
            x = self.codec.leveled(window, window[0, 2 * w :]).float()
            x[:, :w] *= x[:, w:] > 0.5  # unobserved values stay 0, as the codec reads them
            out.append(x)
        return torch.cat(out)

    def with_side(self, prediction: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        if not self.settings.revin:
            return prediction
        out = prediction.clone()
        out[:, 2 * self.settings.values_width :] = window[: len(out), 2 * self.settings.values_width :]
        return out

    def cut(self, symbols: torch.Tensor) -> torch.Tensor:
        return self.codec._instance_normalised(symbols) if self.settings.revin else symbols

    def side_floats(self, window: torch.Tensor) -> int:
        """`revin`: the window's mean and scale per channel, stored beside its latents."""
        return 2 * self.settings.channels if self.settings.revin else 0

    def default_data(self) -> list[Path]:
        """The bundled sample: weekly Mauna Loa CO2, 1958-2001 (2,284 rows, 59 missing; statsmodels' co2)."""
        return [bundled("co2_sample.csv")]

    def learn(self, paths: list[Path], share: float = 1.0) -> "TimeSeriesDomain":
        """A domain with the time column and channels decided from the first file (when not given) and each
        channel's mean and scale (population standard deviation; 1 for a constant or empty channel) pooled over
        every file, streamed. Every file must have those columns.

        With `share` < 1 the mean and scale come from the first round(P * share) patches of each file only (P =
        ceil(rows / patch) patches of `patch` data rows; exactly the rows before the probe's chronological cut,
        which falls on a patch boundary); a counting pass over the file finds its rows. The time column and the
        channels are still decided from the whole first file, as the codec reads whole files."""
        share = _check_share(share)
        paths = check_data_paths([Path(p) for p in paths])
        if not paths:
            raise InputError("no data files to learn from")
        s = self.settings
        time_col, columns = s.time_col, s.columns
        stats: ChannelStats | None = None
        for path in paths:
            csv_file = CsvFile(path)
            if time_col is None or columns is None:  # the first file decides
                time_name, numeric = detect_columns(csv_file, time_col, columns is None)
                columns, _ = resolve_columns(csv_file.path, csv_file.header, time_name, columns, s.keep_columns,
                                             numeric)
                time_col = time_name if time_name is not None else False
            else:
                resolve_columns(csv_file.path, csv_file.header, time_col if isinstance(time_col, str) else None,
                                columns, s.keep_columns)
            stats = stats or ChannelStats(len(columns))
            index = {name: j for j, name in enumerate(csv_file.header)}
            block_rows = PIECE_CELLS // len(csv_file.header) + 1
            limit = None  # data rows learned from (None: all)
            if share < 1:
                rows = sum(len(cells[0]) for cells in csv_file.blocks(block_rows))
                limit = round(-(-rows // s.patch) * share) * s.patch
            first_row = 0
            with contextlib.closing(csv_file.blocks(block_rows)) as blocks:
                for cells in blocks:
                    if limit is not None:
                        if first_row >= limit:
                            break
                        cells = [c[: limit - first_row] for c in cells]
                    block = [parse_channel(csv_file.path, name, cells[index[name]], first_row).values
                             for name in columns]
                    stats.add(np.stack(block, axis=1))
                    first_row += len(cells[0])
        mean, std = stats.mean_std()
        return self._learned(time_col, columns, mean, std)

    def learn_arrays(self, series: list[np.ndarray]) -> "TimeSeriesDomain":
        """A domain learned from arrays (T_i, C) float64 with NaN for missing values: mean and scale as `learn`;
        channels named by `columns`, else "0", "1", ...; no time column."""
        if not series:
            raise InputError("no series to learn from")
        widths = {s.shape[1] for s in series}
        if len(widths) != 1:
            raise InputError(f"all series need the same number of channels, got {sorted(widths)}")
        width = widths.pop()
        columns = self.settings.columns or [str(i) for i in range(width)]
        if len(columns) != width:
            raise InputError(f"the series have {width} channel(s); columns names {len(columns)}")
        stats = ChannelStats(width)
        for values in series:
            stats.add(values)
        mean, std = stats.mean_std()
        return self._learned(self.settings.time_col or False, columns, mean, std)

    def _learned(self, time_col, columns, mean: np.ndarray, std: np.ndarray) -> "TimeSeriesDomain":
        scale = np.where(std > 0, std, 1.0)
        return type(self)(self.settings.replace(time_col=time_col, columns=list(columns), mean=mean.tolist(),
                                                scale=scale.tolist()))

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """The first channel's values of the window, denormalised; '·' where the observed mask is exactly 0 (a
        missing value or padding of an input window; a model output shows its value at every step)."""
        s = self.settings
        s.require_learned()
        x = window.detach().cpu().double().numpy()
        c, w = s.channels, s.values_width
        z = x[:, :w].reshape(-1, c)[:, 0]
        if s.revin:  # the window's own level first (an input window's: a model output repeats its guess)
            z = z * x[0, 2 * w + c] + x[0, 2 * w]
        seen = x[:, w : 2 * w].reshape(-1, c)[:, 0] != 0
        values = z * s.scale[0] + s.mean[0]
        return shorten(f"{s.columns[0]}: " + " ".join(f"{v:.4g}" if o else "·" for v, o in zip(values, seen)), limit)


def __getattr__(name: str):
    # The scikit-learn estimator lives in its own module (it imports scikit-learn); imported lazily here.
    if name == "SequenceCompressor":
        from seqcompress.domains.timeseries_pipeline import SequenceCompressor

        return SequenceCompressor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
