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

The loss and the metrics read the observed half of the target, so missing values and padding are
never trained on or scored; `write` puts NaN back at the recorded positions. docs/timeseries.md
describes the layout, the side information and every edge case. The scikit-learn style
`SequenceCompressor` (arrays in, latents out) is in `timeseries_pipeline.py` and importable from here.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqcompress.atomic import atomic_write_text
from seqcompress.classical import WindowPCA, truncated_dct
from seqcompress.domain import Domain, check_data_paths, decode_utf8, split_windows
from seqcompress.errors import FormatError, InputError
from seqcompress.format import expand_runs

DEFAULT_PATCH = 8
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
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def sample_path() -> Path:
    """The bundled sample: weekly Mauna Loa CO2, 1958-2001 (2,284 rows, 59 missing; statsmodels' co2)."""
    return Path(str(resources.files("seqcompress") / "data" / "co2_sample.csv"))


# ---- CSV text -> columns --------------------------------------------------------------------------
@dataclass
class CsvTable:
    """A CSV file as text cells: nothing is converted yet, so kept columns stay exactly as written."""

    header: list[str]  # column names in file order, exactly as written
    cells: list[np.ndarray]  # one object array of str (rows,) per column
    newline: str  # "\n" or "\r\n"
    quoted_header: bool = False  # every name in the header line is in double quotes (R's write.csv does this)
    bom: bool = False  # the file starts with a UTF-8 byte order mark (Excel's "CSV UTF-8" does this)

    @property
    def rows(self) -> int:
        return len(self.cells[0]) if self.cells else 0


def read_csv(path: Path) -> CsvTable:
    """Parse a UTF-8 CSV file (comma-separated, first line the header) into text cells with pandas.

    Blank lines are skipped, as pandas does (a missing value of a one-column file is written `""`); a row
    with fewer fields than the header gets empty (missing) cells; one with more fields is an InputError.
    """
    import pandas as pd  # imported here: pandas takes a second to import, which `seqcompress --help` should not pay

    check_data_paths([path])
    text = decode_utf8(path, path.read_bytes(), "CSV")
    bom = text.startswith("\ufeff")
    text = text.removeprefix("\ufeff")
    newline = "\r\n" if "\r\n" in text else "\n"
    try:
        frame = pd.read_csv(io.StringIO(text), header=None, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} holds no CSV data") from None
    except pd.errors.ParserError as exc:
        detail = str(exc).replace("Error tokenizing data. C error: ", "").strip().rstrip(".")
        raise InputError(f"{path} is not a well-formed CSV file: {detail}") from None
    if len(frame) < 2:
        raise InputError(f"{path} has a header line but no data rows")
    header = [str(v) for v in frame.iloc[0]]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise InputError(f"{path}: column name {name!r} appears twice; CSV columns must have distinct names")
        seen.add(name)
    cells = [frame.iloc[1:, j].to_numpy(dtype=object) for j in range(frame.shape[1])]
    first_line = text.split("\n", 1)[0].removesuffix("\r")
    return CsvTable(header, cells, newline, first_line == ",".join(_quoted(name) for name in header), bom)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Channel:
    """One numeric column: its values and what `write` needs to spell them as they were written."""

    values: np.ndarray  # (T,) float64, NaN where missing
    decimals: np.ndarray  # (T,) int: digits after the point as written, _SCI for scientific notation
    missing_text: str | list[str]  # the spelling of missing cells: one string, or one per missing cell


def classify_cells(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (T,) of missing, finite-number and infinite cells of a text column (spaces around a
    cell ignored)."""
    return _classify(_stripped(cells))


def _stripped(cells: np.ndarray):
    import pandas as pd

    return pd.Series(cells, dtype=object).str.strip()


def _classify(s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = s.isin(MISSING_TEXTS).to_numpy()
    number = s.str.fullmatch(_NUMBER).fillna(False).to_numpy(dtype=bool)
    infinite = s.str.fullmatch(_INFINITY).fillna(False).to_numpy(dtype=bool)
    return missing, number, infinite


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
    return bool(pd.to_datetime(s, errors="coerce", format="ISO8601").notna().all())


def parse_channel(path: Path, name: str, cells: np.ndarray) -> Channel:
    """Numbers of a numeric text column; an InputError for an infinite value or one beyond float64."""
    stripped = _stripped(cells)
    missing, number, infinite = _classify(stripped)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise InputError(f"{path}: column {name!r}, data row {row + 1} holds {stripped[row]!r}; only finite "
                         "numbers are read (leave the cell empty to mark a missing value)")
    bad = ~(missing | number)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: column {name!r}, data row {row + 1} holds {stripped[row]!r}, which is not a number")
    numbers = stripped[number]
    values = np.full(len(cells), np.nan)
    values[number] = numbers.to_numpy(dtype=np.float64)  # Python's float(): "1e999" becomes inf, refused below
    if not np.isfinite(values[number]).all():
        row = int(np.flatnonzero(number & ~np.isfinite(values))[0])
        raise InputError(f"{path}: column {name!r}, data row {row + 1} holds {stripped[row]!r}, beyond the "
                         "float64 range (about 1.8e308)")
    dot, length = numbers.str.find(".").to_numpy(), numbers.str.len().to_numpy()
    written = np.where(numbers.str.contains("[eE]").to_numpy(dtype=bool), _SCI, np.where(dot >= 0, length - dot - 1, 0))
    decimals = np.full(len(cells), np.nan)
    decimals[number] = written
    # A missing cell takes the decimals of the cell before it, so runs stay long in the side information.
    decimals = _forward_fill(decimals).astype(np.int64)
    spellings = [str(c) for c in cells[missing]]  # as written, spaces included
    missing_text: str | list[str] = spellings if len(set(spellings)) > 1 else (spellings[0] if spellings else "")
    return Channel(values, decimals, missing_text)


def _forward_fill(x: np.ndarray) -> np.ndarray:
    """NaN entries of (T,) take the last value before them (0 at the start)."""
    import pandas as pd

    return pd.Series(x).ffill().fillna(0).to_numpy()


def resolve_columns(
    path: Path, table: CsvTable, time_col: str | bool | None, columns: list[str] | None, keep_columns: bool
) -> tuple[str | None, list[str], list[str]]:
    """(time column or None, channel names in channel order, kept column names) for this file.

    time_col None: the first column when its name is a usual time name (TIME_NAMES) or every cell of it
    is an ISO 8601 date or time (2024-01-31, 2024-01-31 12:00, 2024-01-31T12:00:00Z); False: no time
    column; a string: that column. columns None: every numeric column except the time column.
    Any other column is kept when `keep_columns`, else an InputError says what to do.
    """
    header = table.header
    if time_col is None:
        first = header[0]
        detected = first.strip().lower() in TIME_NAMES or is_iso_time(table.cells[0])
        time_name = first if detected and len(header) > 1 else None
    elif time_col is False:
        time_name = None
    else:
        if time_col not in header:
            raise InputError(f"{path} has no time column {time_col!r}; its columns are {header}")
        time_name = str(time_col)
    if columns is not None:
        missing = [c for c in columns if c not in header]
        if missing:
            raise InputError(f"{path} has no column(s) {missing}; its columns are {header}")
        if time_name in columns:
            raise InputError(f"column {time_name!r} cannot be both the time column and a channel")
        channels = list(columns)
    else:
        channels = [name for name, cells in zip(header, table.cells) if name != time_name and is_numeric(cells)]
    others = [name for name in header if name != time_name and name not in channels]
    if others and not keep_columns:
        reason = ("is not numeric" if columns is None else "is not one of the chosen channels")
        raise InputError(f"{path}: column {others[0]!r} {reason}; pass --keep-columns (keep_columns=True) to "
                         "carry such columns through unchanged, or --columns to choose the channels")
    if not channels:
        raise InputError(f"{path} has no numeric column to compress (columns: {header})")
    return time_name, channels, others


# ---- side information helpers -------------------------------------------------------------------
def encode_text_column(cells: np.ndarray) -> dict:
    """A text column, exactly: {"range": [start, step, count]} for evenly spaced integers (e.g. years),
    else {"zlib": base64 of the zlib-compressed JSON list of strings}."""
    texts = [str(c) for c in cells]
    if len(texts) >= 2 and all(re.fullmatch(r"0|-?[1-9]\d{0,17}", t) for t in texts):
        ints = np.array([int(t) for t in texts], dtype=np.int64)
        step = int(ints[1] - ints[0])
        if (np.diff(ints) == step).all():
            return {"range": [int(ints[0]), step, len(ints)]}
    packed = zlib.compress(json.dumps(texts, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), 9)
    return {"zlib": base64.b64encode(packed).decode("ascii")}


def decode_text_column(spec: dict) -> list[str]:
    if "range" in spec:
        start, step, count = (int(v) for v in spec["range"])
        return [str(start + step * i) for i in range(count)]
    texts = json.loads(zlib.decompress(base64.b64decode(spec["zlib"])).decode("utf-8"))
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise FormatError("timeseries side information: a kept column is not a list of strings")
    return texts


_MAX_RUNS = 1024  # beyond this many runs, an integer column of the side information is stored zlib-compressed


def encode_missing(values: np.ndarray) -> dict:
    """Where (T,) values are NaN: {"runs": [[start, length], ...]}, or {"zlib": base64 of the zlib-compressed
    bitmask (numpy.packbits, first row in the highest bit)} when there are more than _MAX_RUNS runs."""
    nan = np.isnan(values)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], nan.astype(np.int8), [0]))))
    if len(edges) // 2 <= _MAX_RUNS:
        return {"runs": [[int(s), int(e - s)] for s, e in zip(edges[::2], edges[1::2])]}
    return {"zlib": base64.b64encode(zlib.compress(np.packbits(nan).tobytes(), 9)).decode("ascii")}


def decode_missing(spec: dict, rows: int) -> np.ndarray:
    """The (rows,) bool mask of missing cells."""
    if "zlib" in spec:
        bits = np.frombuffer(zlib.decompress(base64.b64decode(spec["zlib"])), dtype=np.uint8)
        if len(bits) != -(-rows // 8):
            raise FormatError("timeseries side information: a missing-value bitmask does not cover the rows")
        return np.unpackbits(bits)[:rows].astype(bool)
    mask = np.zeros(rows, dtype=bool)
    for start, length in spec["runs"]:
        if not (0 <= start and length > 0 and start + length <= rows):
            raise FormatError("timeseries side information: a missing-value run lies outside the series")
        mask[start : start + length] = True
    return mask


def encode_decimals(decimals: np.ndarray) -> dict:
    """Each cell's decimals: {"runs": [[decimals, count], ...]}, or {"zlib": base64 of the zlib-compressed
    int16 little-endian array} when there are more than _MAX_RUNS runs."""
    starts = np.concatenate(([0], np.flatnonzero(np.diff(decimals)) + 1)) if len(decimals) else np.zeros(0, int)
    if len(starts) <= _MAX_RUNS:
        counts = np.diff(np.concatenate((starts, [len(decimals)])))
        return {"runs": [[int(decimals[i]), int(n)] for i, n in zip(starts, counts)]}
    packed = np.clip(decimals, _SCI, 32767).astype("<i2").tobytes()
    return {"zlib": base64.b64encode(zlib.compress(packed, 6)).decode("ascii")}


def decode_decimals(spec: dict, rows: int) -> np.ndarray:
    if "zlib" in spec:
        decimals = np.frombuffer(zlib.decompress(base64.b64decode(spec["zlib"])), dtype="<i2").astype(np.int64)
    else:
        decimals = np.array(expand_runs(spec["runs"]), dtype=np.int64)
    if len(decimals) != rows:
        raise FormatError(f"timeseries side information: decimals cover {len(decimals)} rows, not {rows}")
    return decimals


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def channel_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (population) of (T, C) values over observed cells, safe for
    magnitudes up to float64's limit: values are divided by the channel's largest |value| first.
    A channel without observed values has mean 0, std 0."""
    observed = ~np.isnan(values)
    peak = np.where(observed, np.abs(values), 0.0).max(axis=0, initial=0.0)  # (C,)
    peak = np.where(peak > 0, peak, 1.0)
    scaled = values / peak  # (T, C), |x| <= 1
    count = observed.sum(axis=0)
    mean_s = np.where(count > 0, np.nansum(scaled, axis=0) / np.maximum(count, 1), 0.0)
    var_s = np.where(count > 0, np.nansum((scaled - mean_s) ** 2, axis=0) / np.maximum(count, 1), 0.0)
    return mean_s * peak, np.sqrt(var_s) * peak


def file_stats(names: list[str], values: np.ndarray) -> dict:
    """Per-file, per-channel statistics recorded in the side information (None where nothing is observed)."""
    mean, std = channel_stats(values)
    observed = ~np.isnan(values)
    out = {}
    for c, name in enumerate(names):
        seen = values[observed[:, c], c]
        out[name] = {
            "observed": int(observed[:, c].sum()), "missing": int((~observed[:, c]).sum()),
            "mean": _finite_or_none(mean[c]) if seen.size else None,
            "std": _finite_or_none(std[c]) if seen.size else None,
            "min": float(seen.min()) if seen.size else None, "max": float(seen.max()) if seen.size else None,
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


# ---- the domain -----------------------------------------------------------------------------------
class TimeSeriesDomain(Domain):
    """CSV time series: patches of `patch` time steps of the channels, normalised with learned statistics.

    Settings (saved in the model with everything learned):
      patch         time steps per model position (a symbol); seq_len counts patches
      time_col      None: detect (the first column, when its name is a usual time name or its cells are ISO
                    8601 dates), False: none, str: that column
      columns       channel names (None: every numeric column but the time column, decided by `learn`)
      keep_columns  carry other columns (text, or numbers not chosen as channels) through exactly
      loss          "mse" or "huber" (delta `huber_delta`, in units of channel standard deviations)
    """

    name = "timeseries"
    metric_name = "nrmse"
    higher_is_better = False
    default_seq_len = 64  # patches: 512 time steps at the default patch of 8
    output_suffix = ".csv"

    def __init__(
        self, patch: int = DEFAULT_PATCH, time_col: str | bool | None = None, columns: list[str] | None = None,
        keep_columns: bool = False, loss: str = "mse", huber_delta: float = 1.0,
        mean: list[float] | None = None, scale: list[float] | None = None,
    ) -> None:
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
            raise InputError(f"patch must be a positive whole number of time steps, got {patch!r}")
        if time_col is True:
            raise InputError("time_col must be a column name, None (detect) or False (no time column)")
        if loss not in LOSSES:
            raise InputError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if not huber_delta > 0:
            raise InputError(f"huber_delta must be positive, got {huber_delta}")
        if columns is not None and (not columns or len(set(columns)) != len(columns)):
            raise InputError("columns must name at least one channel, each once")
        self.patch, self.time_col, self.keep_columns = patch, time_col, bool(keep_columns)
        self.columns = list(columns) if columns is not None else None
        self.loss_name, self.huber_delta = loss, float(huber_delta)
        self.mean = np.array(mean, dtype=np.float64) if mean is not None else None
        self.scale = np.array(scale, dtype=np.float64) if scale is not None else None
        if self.mean is not None and (self.columns is None
                                      or not len(self.mean) == len(self.scale) == len(self.columns)):
            raise InputError("timeseries state: mean and scale need one entry per channel in columns")

    # ---- state ---------------------------------------------------------------------------------
    @property
    def learned(self) -> bool:
        return self.mean is not None

    @property
    def channels(self) -> int:
        self._require_learned()
        return len(self.columns)

    @property
    def values_width(self) -> int:
        """Floats of the values half of a patch vector: patch * C."""
        return self.patch * self.channels

    def _require_learned(self) -> None:
        if not self.learned:
            raise InputError("the timeseries domain has not learned its channels and normalisation yet; "
                             "call learn(paths) (fit does) or load a trained model")

    def model_fields(self) -> dict:
        return {"feature_dim": 2 * self.values_width}

    def state(self) -> dict:
        state = {"name": self.name, "patch": self.patch, "time_col": self.time_col, "columns": self.columns,
                 "keep_columns": self.keep_columns, "loss": self.loss_name, "huber_delta": self.huber_delta}
        if self.learned:
            state.update(mean=self.mean.tolist(), scale=self.scale.tolist(),
                         features="per patch: patch x channels normalised values, then their observed mask")
        return state

    @classmethod
    def from_state(cls, state: dict) -> "TimeSeriesDomain":
        """A saved (learned) state, or settings to learn with: missing or None entries take their defaults."""
        patch = state.get("patch")
        return cls(patch=DEFAULT_PATCH if patch is None else patch, time_col=state.get("time_col"),
                   columns=state.get("columns"), keep_columns=bool(state.get("keep_columns")),
                   loss=state.get("loss") or "mse", huber_delta=float(state.get("huber_delta") or 1.0),
                   mean=state.get("mean"), scale=state.get("scale"))

    def learn(self, paths: list[Path]) -> None:
        """Decide the time column and channels from the first file, then learn each channel's mean and scale
        (population standard deviation; 1 for a constant or empty channel) pooled over every file."""
        paths = check_data_paths([Path(p) for p in paths])
        if not paths:
            raise InputError("no data files to learn from")
        self.mean = self.scale = None
        parsed = []
        for path in paths:
            table = read_csv(path)
            time_name, channels, _ = resolve_columns(path, table, self.time_col, self.columns, self.keep_columns)
            if self.columns is None:
                self.columns = channels
            if self.time_col is None:
                self.time_col = time_name if time_name is not None else False
            parsed.append(self._channel_values(path, table))
        self.learn_arrays([values for values, _ in parsed])

    def learn_arrays(self, series: list[np.ndarray]) -> None:
        """Learn mean and scale from series (T_i, C) float64 with NaN for missing values (the channels are
        self.columns)."""
        mean, std = channel_stats(np.concatenate(series, axis=0))
        self.mean = mean
        self.scale = np.where(std > 0, std, 1.0)

    def default_data(self) -> list[Path]:
        return [sample_path()]

    def size_references(self) -> dict[str, float]:
        if not self.learned:
            return {}
        return {f"float32 values ({self.patch} steps x {self.channels} channels per symbol)": 32.0 * self.values_width}

    def decode_note(self, side: dict) -> str | None:
        return ("numeric values are the model's reconstruction, spelled with the decimals of the input; the time "
                "column, kept columns and missing cells are exact")

    # ---- arrays <-> windows ------------------------------------------------------------------------
    def normalise(self, values: np.ndarray, where: str = "the input") -> np.ndarray:
        """(T, C) float64 -> (T, C) normalised float64, NaN kept; an InputError when a value lies so far
        outside the learned range that float32 cannot hold it."""
        with np.errstate(over="ignore"):
            z = values / self.scale - self.mean / self.scale  # two divisions: x - mean may overflow near 1e308
        too_big = np.abs(np.nan_to_num(z, nan=0.0)) > _FLOAT32_MAX
        if too_big.any():
            row, col = (int(i) for i in np.argwhere(too_big)[0])
            raise InputError(f"{where}: channel {self.columns[col]!r}, row {row + 1} holds "
                             f"{float(values[row, col]):.6g}, more than {_FLOAT32_MAX:.3g} standard deviations from the learned mean: too far for the "
                             "model's float32 input; fit on data of this magnitude")
        return z

    def series_windows(self, values: np.ndarray, seq_len: int, where: str = "the input") -> list[torch.Tensor]:
        """A series (T, C) float64 with NaN for missing values -> windows (L, 2 * patch * C) float32 of at
        most seq_len patches; the last patch is padded with unobserved steps."""
        self._require_learned()
        t, c = values.shape
        if c != self.channels:
            raise InputError(f"{where} has {c} channel(s); this model was fit on {self.channels}")
        if t == 0:
            raise InputError(f"{where} has no time steps")
        z = self.normalise(values, where)
        observed = ~np.isnan(z)  # (T, C)
        patches = -(-t // self.patch)
        padded = patches * self.patch
        vals = np.zeros((padded, c), dtype=np.float32)
        vals[:t] = np.where(observed, z, 0.0)
        mask = np.zeros((padded, c), dtype=np.float32)
        mask[:t] = observed
        x = np.concatenate([vals.reshape(patches, self.patch * c), mask.reshape(patches, self.patch * c)], axis=1)
        return split_windows(torch.from_numpy(x), seq_len)  # each (L, 2 * patch * C)

    def windows_values(self, windows: list[torch.Tensor], rows: int, mean=None, scale=None) -> np.ndarray:
        """Windows (L, 2 * patch * C) in read order -> the series' first `rows` time steps (rows, C) float64,
        denormalised (every step, including those that were missing)."""
        c = self.channels
        width = 2 * self.values_width
        x = torch.cat(list(windows)).detach().cpu().double().numpy() if windows else np.zeros((0, width))
        if x.ndim != 2 or x.shape[1] != width:
            raise FormatError(f"timeseries windows must have {width} features per patch, "
                              f"got shape {tuple(x.shape)}")
        if len(x) != -(-rows // self.patch):
            raise FormatError(f"timeseries: {len(x)} patches decoded for a series of {rows} rows "
                              f"({-(-rows // self.patch)} patches of {self.patch})")
        z = x[:, : self.values_width].reshape(len(x) * self.patch, c)[:rows]  # (rows, C)
        mean = self.mean if mean is None else np.asarray(mean, dtype=np.float64)
        scale = self.scale if scale is None else np.asarray(scale, dtype=np.float64)
        return z * scale + mean

    # ---- files ---------------------------------------------------------------------------------------
    def _channel_values(self, path: Path, table: CsvTable) -> tuple[np.ndarray, list[Channel]]:
        index = {name: j for j, name in enumerate(table.header)}
        parsed = [parse_channel(path, name, table.cells[index[name]]) for name in self.columns]
        return np.stack([ch.values for ch in parsed], axis=1), parsed  # (T, C)

    def read(self, path: Path, seq_len: int) -> tuple[list[torch.Tensor], dict]:
        """Windows (L, 2 * patch * C) of the file's series and the side information `write` needs."""
        self._require_learned()
        path = Path(path)
        table = read_csv(path)
        time_name, _, kept = resolve_columns(path, table, self.time_col, self.columns, self.keep_columns)
        values, parsed = self._channel_values(path, table)
        windows = self.series_windows(values, seq_len, str(path))
        index = {name: j for j, name in enumerate(table.header)}
        side = {
            "columns": table.header,
            "rows": table.rows,
            "newline": table.newline,
            "quoted_header": table.quoted_header,
            "bom": table.bom,
            "patch": self.patch,
            "time_col": time_name,
            "time": encode_text_column(table.cells[index[time_name]]) if time_name is not None else None,
            "channels": self.columns,
            "missing": [encode_missing(ch.values) for ch in parsed],
            "missing_text": [ch.missing_text for ch in parsed],
            "decimals": [encode_decimals(ch.decimals) for ch in parsed],
            "kept": {name: encode_text_column(table.cells[index[name]]) for name in kept},
            "normalisation": {"mean": self.mean.tolist(), "scale": self.scale.tolist()},
            "stats": file_stats(self.columns, values),
        }
        return windows, side

    def write(self, path: Path, windows: list[torch.Tensor], side: dict) -> None:
        """A CSV with the input's columns in order, its row count, time and kept columns and missing cells
        exactly, and the reconstructed channel values; written atomically."""
        try:
            text = self._rebuild(windows, side)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, zlib.error, binascii.Error) as exc:
            raise FormatError(f"timeseries side information is malformed ({type(exc).__name__}: {exc})") from None
        atomic_write_text(path, text)

    def _rebuild(self, windows: list[torch.Tensor], side: dict) -> str:
        if int(side["patch"]) != self.patch or list(side["channels"]) != self.columns:
            raise FormatError(f"the latents hold patches of {side['patch']} steps of {side['channels']}; this model "
                              f"uses {self.patch} steps of {self.columns}")
        rows = int(side["rows"])
        norm = side["normalisation"]
        values = self.windows_values(windows, rows, norm["mean"], norm["scale"])  # (rows, C)
        columns: dict[str, list[str]] = {}
        for c, name in enumerate(self.columns):
            texts = format_values(values[:, c], decode_decimals(side["decimals"][c], rows))
            gaps = np.flatnonzero(decode_missing(side["missing"][c], rows))
            spelled = side["missing_text"][c]
            for k, i in enumerate(gaps):
                texts[i] = spelled if isinstance(spelled, str) else spelled[k]
            columns[name] = texts
        if side["time_col"] is not None:
            columns[side["time_col"]] = decode_text_column(side["time"])
        for name, spec in side["kept"].items():
            columns[name] = decode_text_column(spec)
        header = list(side["columns"])
        if sorted(columns) != sorted(header) or any(len(columns[n]) != rows for n in header):
            raise FormatError("timeseries side information: the columns do not match the header and row count")
        newline = side["newline"]
        if newline not in ("\n", "\r\n"):
            raise FormatError("timeseries side information: the line ending must be LF or CRLF")
        out = io.StringIO()
        if side.get("bom"):
            out.write("\ufeff")
        if side.get("quoted_header"):
            out.write(",".join(_quoted(name) for name in header) + newline)
        else:
            csv.writer(out, lineterminator=newline).writerow(header)
        csv.writer(out, lineterminator=newline).writerows(zip(*(columns[n] for n in header)))
        return out.getvalue()

    # ---- training and evaluation ----------------------------------------------------------------
    def _split(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        """Normalised errors (B, N, P*C) and the observed cells (B, N, P*C) of real patches."""
        w = self.values_width
        observed = (target[..., w:] > 0.5) & mask[..., None]
        return output[..., :w].float() - target[..., :w].float(), observed

    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean MSE (or Huber) over observed values, in normalised units; the mask half of the output is not
        trained (the model's output width must equal its input width, so the head predicts it anyway)."""
        err, observed = self._split(output, target, mask)
        if self.loss_name == "huber":
            per_value = F.huber_loss(err, torch.zeros_like(err), reduction="none", delta=self.huber_delta)
        else:
            per_value = err.square()
        return (per_value * observed).sum() / observed.sum().clamp(min=1)

    def metric_totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Per channel c, over observed values: squared and absolute normalised errors, their count, and the
        squared deviations from each window's own mean (the error of storing one mean per window)."""
        err, observed = self._split(output, target, mask)
        b, c = err.shape[0], self.channels
        err = err.reshape(b, -1, c)  # (B, N*P, C): time steps of each window
        observed = observed.reshape(b, -1, c)
        x = target[..., : self.values_width].float().reshape(b, -1, c)  # (B, N*P, C)
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

    def metric_values(self, totals: dict[str, float]) -> dict[str, float]:
        """nrmse: sqrt(mean over every observed value of ((x_hat - x) / sigma_c)^2), sigma_c the channel's
        learned scale (its standard deviation at fit time); nmae the same with |.|; mae in the channels' own
        units (pooled: meaningful when channels share a unit); r2 = 1 - SSE / (squared deviations from each
        window's own mean), so 0 is no better than keeping one mean per window and channel; per channel
        nrmse[name] and mae[name]."""
        c = self.channels
        n = [totals.get(f"n.{i}", 0.0) for i in range(c)]
        sq = [totals.get(f"sq.{i}", 0.0) for i in range(c)]
        ab = [totals.get(f"abs.{i}", 0.0) for i in range(c)]
        total = sum(n)
        nan = float("nan")
        out = {
            self.metric_name: math.sqrt(sum(sq) / total) if total else nan,
            "nmae": sum(ab) / total if total else nan,
            "mae": sum(a * s for a, s in zip(ab, self.scale.tolist())) / total if total else nan,
            "r2": 1.0 - sum(sq) / base if (base := sum(totals.get(f"base.{i}", 0.0) for i in range(c))) else nan,
            "observed_values": total,
        }
        for i, name in enumerate(self.columns):
            out[f"nrmse[{name}]"] = math.sqrt(sq[i] / n[i]) if n[i] else nan
            out[f"mae[{name}]"] = ab[i] * float(self.scale[i]) / n[i] if n[i] else nan
        return out

    # ---- classical baselines for the probe --------------------------------------------------------
    def classical_baselines(self) -> dict:
        """Truncated DCT per channel and PCA on windows, each keeping the model's number of floats per window."""
        return {"dct": self.dct_baseline, "pca": self.pca_baseline}

    def window_values(self, window: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """A window (L, 2PC) -> normalised values (L*P, C) and observed mask (L*P, C)."""
        x = window.double().numpy()
        w, c = self.values_width, self.channels
        return x[:, :w].reshape(-1, c), x[:, w:].reshape(-1, c) > 0.5

    def as_window(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """Normalised values (L*P, C) -> a window shaped like the model's output (L, 2PC)."""
        out = like.clone().float()
        out[:, : self.values_width] = torch.from_numpy(values.reshape(len(like), -1)).float()
        return out

    def dct_baseline(self, train_windows, test_windows, floats) -> list[torch.Tensor]:
        return [self.as_window(truncated_dct(*self.window_values(w), f), w) for w, f in zip(test_windows, floats)]

    def pca_baseline(self, train_windows, test_windows, floats) -> list[torch.Tensor]:
        steps = max(len(w) for w in [*train_windows, *test_windows]) * self.patch
        pca = WindowPCA([self.window_values(w) for w in train_windows], steps)
        return [self.as_window(pca.reconstruct(*self.window_values(w), f), w) for w, f in zip(test_windows, floats)]

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """The first channel's values of the window, denormalised; '·' where the observed mask is exactly 0 (a
        missing value or padding of an input window; a model output shows its value at every step)."""
        self._require_learned()
        x = window.detach().cpu().double().numpy()
        c, w = self.channels, self.values_width
        z = x[:, :w].reshape(-1, c)[:, 0]
        seen = x[:, w:].reshape(-1, c)[:, 0] != 0
        values = z * self.scale[0] + self.mean[0]
        text = f"{self.columns[0]}: " + " ".join(f"{v:.4g}" if s else "·" for v, s in zip(values, seen))
        return text if len(text) <= limit else text[: limit - 3] + "..."


def __getattr__(name: str):
    # The scikit-learn style API lives in its own module; importing it here lazily avoids an import cycle.
    if name == "SequenceCompressor":
        from seqcompress.domains.timeseries_pipeline import SequenceCompressor

        return SequenceCompressor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
