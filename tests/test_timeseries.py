"""Time-series domain: CSV round trips through pieces, streaming in bounded pieces, windows of patches,
normalisation, NaN handling, bad input, format-1 side information, loss and metrics, the scikit-learn
estimator SequenceCompressor, and fit -> encode -> decode through a .sqz file."""

from __future__ import annotations

import base64
import io
import json
import math
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import seqcompress.domains.timeseries as ts
from seqcompress.api import evaluate_files, fit
from seqcompress.atomic import atomic_open
from seqcompress.compress import decode_file, encode_file
from seqcompress.domain import bundled, copy_through
from seqcompress.domains import get_domain
from seqcompress.domains.timeseries import SequenceCompressor, TimeSeriesDomain, TimeSeriesSettings
from seqcompress.domains.timeseries_pipeline import AudioArrays
from seqcompress.errors import FormatError, InputError
from seqcompress.model import load_model
from seqcompress.train import TrainOptions

LEGACY = Path(__file__).parent / "data" / "legacy_v1"
CO2 = bundled("co2_sample.csv")
MULTI = (
    "when,temp,label,pressure,flow\n"
    "2024-01-01 00:00,1.5,a,1013.25,3e-2\n"
    "2024-01-01 01:00,,b,1013.50,4e-2\n"
    "2024-01-01 02:00,2.25,\"c, quoted\",NA,5.5e-2\n"
    "2024-01-01 03:00,-0.5,,1012.75,\n"
    "2024-01-01 04:00,3.0,e,1012.00,7e-2\n"
)


pytestmark = pytest.mark.usefixtures("one_thread")


def write(tmp_path, text: str, name: str = "series.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def learned(paths, **settings) -> TimeSeriesDomain:
    return TimeSeriesDomain(TimeSeriesSettings(**settings)).learn(paths)


def read(domain: TimeSeriesDomain, path, seq_len: int) -> tuple[list[torch.Tensor], list[dict]]:
    """Every window of a file and the side information of each piece."""
    pieces = list(domain.codec.iter_windows(path, seq_len))
    return [w for p in pieces for w in p.windows], [p.side for p in pieces]


def write_pieces(domain: TimeSeriesDomain, pieces, out) -> dict:
    """Pieces through JSON (as a .sqz chunk stores their sides) into the codec's writer, written atomically."""
    with atomic_open(out, "wb") as file:
        writer = domain.codec.open_writer(file, Path(out).name, {"settings": domain.settings.state()})
        for windows, side, *_ in pieces:
            writer.write(windows, json.loads(json.dumps(side)))
        return writer.close()


def round_trip(domain: TimeSeriesDomain, path, out, seq_len: int = 4) -> str:
    """What the writer makes of the true windows (a perfect model)."""
    write_pieces(domain, domain.codec.iter_windows(path, seq_len), out)
    return Path(out).read_text(encoding="utf-8")


def as_text(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# ---- round trips with a perfect model ---------------------------------------------------------------
def test_bundled_co2_sample_round_trips_byte_for_byte(tmp_path):
    domain = learned([CO2])
    assert domain.settings.time_col == "date" and domain.settings.columns == ["co2"]
    assert domain.settings.mean[0] == pytest.approx(340.14225, abs=1e-4)
    assert domain.settings.scale[0] == pytest.approx(17.00006, abs=1e-4)
    assert domain.default_data() == [CO2]
    report = copy_through(domain.codec, CO2, 64, tmp_path / "back.csv")
    assert (tmp_path / "back.csv").read_bytes() == CO2.read_bytes() and "decimals of the input" in report["note"]
    assert round_trip(domain, CO2, tmp_path / "json.csv", seq_len=64) == CO2.read_text(encoding="utf-8")
    windows, sides = read(domain, CO2, 64)
    assert [tuple(w.shape) for w in windows] == [(64, 16)] * 4 + [(30, 16)]  # 2284 rows = 285.5 patches of 8
    assert sides[0]["rows"] == 2284 and sides[-1] == {"rows": 0, "stats": sides[-1]["stats"]}
    assert sides[-1]["stats"]["co2"]["missing"] == 59 and sides[-1]["stats"]["co2"]["max"] == 373.9
    assert sides[0]["missing"][0][:2] == [[6, 1], [9, 5]]  # weeks 7 and 10-14 of 1958 are missing
    assert sides[0]["decimals"] == [[[1, 2284]]] and sides[0]["time"]["text"][:2] == ["19580329", "19580405"]


def test_round_trip_keeps_columns_time_text_and_missing_cells_exactly(tmp_path):
    path = write(tmp_path, MULTI)
    domain = learned([path], keep_columns=True)
    assert domain.settings.time_col == "when" and domain.settings.columns == ["temp", "pressure", "flow"]
    text = round_trip(domain, path, tmp_path / "back.csv")
    original, back = as_text(path), as_text(io.StringIO(text))
    assert list(back.columns) == list(original.columns) and len(back) == len(original) == 5
    assert back["when"].tolist() == original["when"].tolist()
    assert back["label"].tolist() == ["a", "b", "c, quoted", "", "e"]
    assert back["temp"].tolist() == ["1.5", "", "2.25", "-0.5", "3.0"]  # each cell's own decimals
    assert back["pressure"].tolist() == ["1013.25", "1013.50", "NA", "1012.75", "1012.00"]  # "NA" spelled as read
    numbers = pd.read_csv(io.StringIO(text))
    assert numbers["flow"].isna().tolist() == [False, False, False, True, False]
    np.testing.assert_allclose(numbers["flow"].to_numpy()[[0, 1, 2, 4]], [0.03, 0.04, 0.055, 0.07], rtol=1e-6)
    _, sides = read(domain, path, 4)
    assert sides[0]["kept"] == {"label": {"text": ["a", "b", "c, quoted", "", "e"]}}
    assert sides[0]["missing_text"] == ["", "NA", ""] and sides[0]["decimals"][2] == [[-1, 5]]


def test_reconstruction_errors_are_spelled_with_the_input_decimals_never_minus_zero(tmp_path):
    path = write(tmp_path, "x\n0.0\n1.25\n-2\n")
    domain = learned([path], patch=4)
    pieces = list(domain.codec.iter_windows(path, 8))
    noisy = pieces[0].windows[0].clone()
    noisy[0, :3] += torch.tensor([-0.01, 0.2, 0.3]) / float(domain.settings.scale[0])  # errors in data units
    write_pieces(domain, [([noisy], pieces[0].side), ([], pieces[1].side)], tmp_path / "back.csv")
    assert (tmp_path / "back.csv").read_text() == "x\n0.0\n1.45\n-2\n"  # -0.01 -> "0.0"; -1.7 rounds to -2


def test_variable_length_files_pad_only_their_last_patch(tmp_path):
    short = write(tmp_path, "v\n" + "".join(f"{i}\n" for i in range(11)), "short.csv")
    long = write(tmp_path, "v\n" + "".join(f"{i}\n" for i in range(37)), "long.csv")
    domain = learned([short, long], patch=4)
    assert domain.settings.mean[0] == pytest.approx((55 + 666) / 48)
    w_short, side_short = read(domain, short, 3)
    w_long, _ = read(domain, long, 3)
    assert [len(w) for w in w_short] == [3] and [len(w) for w in w_long] == [3, 3, 3, 1]  # 11 -> 3 patches, 37 -> 10
    observed = w_short[0][:, 4:]  # (3, 4): the observed half
    assert observed.flatten().tolist() == [1.0] * 11 + [0.0]
    assert side_short[0]["rows"] == 11
    assert round_trip(domain, long, tmp_path / "back.csv", 3) == long.read_text()


def test_patch_vector_is_values_then_observed_mask_time_major(tmp_path):
    path = write(tmp_path, "a,b\n1,10\n3,\n5,30\n")
    domain = learned([path], patch=2, time_col=False)
    mean, scale = domain.settings.mean, domain.settings.scale
    assert mean == [3.0, 20.0] and scale == pytest.approx([math.sqrt(8 / 3), 10.0])
    windows, _ = read(domain, path, 8)
    z = lambda v, c: (v - mean[c]) / scale[c]  # noqa: E731
    expected = [
        [z(1, 0), z(10, 1), z(3, 0), 0.0, 1, 1, 1, 0],  # steps 1-2: a1 b1 a2 b2 | their observed mask
        [z(5, 0), z(30, 1), 0.0, 0.0, 1, 1, 0, 0],  # step 3, then padding
    ]
    np.testing.assert_allclose(windows[0].numpy(), expected, rtol=1e-6)
    assert windows[0].dtype == torch.float32 and domain.model_fields() == {"feature_dim": 8}


# ---- streaming: bounded pieces, each with exactly its rows --------------------------------------------
def long_csv(tmp_path, rows: int, name: str = "long.csv") -> Path:
    """A seeded multivariate series with a time column, a kept text column, gaps of several spellings and
    varying decimals."""
    rng = np.random.default_rng(7)
    a = np.round(np.cumsum(rng.standard_normal(rows)), 2)
    b = np.round(20 + 5 * np.sin(np.arange(rows) / 50), 1)
    lines = ["t,a,tag,b"]
    for i in range(rows):
        cell_a = "" if i % 97 == 3 else "NA" if i % 89 == 5 else f"{a[i]:.2f}" if i % 7 else f"{a[i]:.1f}"
        cell_b = "" if i % 61 == 0 else f"{b[i]:.1f}" if i % 5 else f"{b[i]:.0f}"
        lines.append(f"{2000 + i},{cell_a},{'xyz'[i % 3]},{cell_b}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_long_file_streams_in_bounded_pieces_that_round_trip_byte_for_byte(tmp_path, monkeypatch):
    path = long_csv(tmp_path, 5000)
    domain = learned([path], keep_columns=True, patch=4)
    monkeypatch.setattr(ts, "PIECE_CELLS", 4 * 16 * 4 * 3)  # 3 windows of 16 patches of 4 rows, 4 columns
    windows, sides = read(domain, path, 16)
    assert len(windows) == 79 and len(sides) == 28  # 1250 patches; 27 pieces of <= 3 windows, then the stats
    assert [s["rows"] for s in sides[:-1]] == [192] * 26 + [5000 - 26 * 192] and sides[-1]["rows"] == 0
    assert "columns" in sides[0] and not any("columns" in s for s in sides[1:])
    assert sides[1]["time"] == {"range": [2192, 1, 192]} and sides[1]["kept"]["tag"]["text"][:3] == ["x", "y", "z"]
    assert sides[1]["missing"][0] == [[5, 1], [80, 1], [102, 1], [169, 1]]  # rows 197, 272, 294 and 361 of the file
    assert sides[-1]["stats"]["a"]["missing"] == sum(1 for i in range(5000) if i % 97 == 3 or i % 89 == 5)
    assert copy_through(domain.codec, path, 16, tmp_path / "back.csv")["note"]
    assert (tmp_path / "back.csv").read_bytes() == path.read_bytes()
    assert round_trip(domain, path, tmp_path / "json.csv", 16) == path.read_text()


def test_learning_over_many_blocks_matches_the_whole_file_statistics(tmp_path, monkeypatch):
    path = long_csv(tmp_path, 3000)
    whole = learned([path], keep_columns=True)
    monkeypatch.setattr(ts, "PIECE_CELLS", 400)  # blocks of 101 rows
    blocks = learned([path], keep_columns=True)
    frame = pd.read_csv(path)
    assert whole.settings.mean == pytest.approx(frame[["a", "b"]].mean().tolist(), rel=1e-12)
    assert blocks.settings.mean == pytest.approx(whole.settings.mean, rel=1e-12)
    assert blocks.settings.scale == pytest.approx(frame[["a", "b"]].std(ddof=0).tolist(), rel=1e-12)


def test_learning_a_share_matches_learning_a_copy_cut_at_the_same_patch(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "PIECE_CELLS", 400)  # blocks of 101 rows: the cuts fall inside a later block
    long, short = long_csv(tmp_path, 1000), long_csv(tmp_path, 537, "short.csv")
    # 334 and 179 patches of 3 rows; share 0.6: the first round(334 * 0.6) = 200 and round(179 * 0.6) = 107
    # patches, as the probe's chronological split cuts them: 600 and 321 data rows
    heads = []
    for path, rows in ((long, 600), (short, 321)):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        heads.append(write(tmp_path, "".join(lines[: 1 + rows]), f"head_{path.name}"))
    fresh = TimeSeriesDomain(TimeSeriesSettings(keep_columns=True, patch=3))
    part = fresh.learn([long, short], share=0.6)
    assert part.settings == learned(heads, keep_columns=True, patch=3).settings  # the same columns, mean and scale
    whole = fresh.learn([long, short])
    assert part.settings.mean != whole.settings.mean
    assert fresh.learn([long, short], share=1.0).settings == whole.settings
    # a share of the patches, not of the rows: 7 rows are 4 patches of 2 (the last one padded); 0.7 of them is
    # round(2.8) = 3 patches, rows 0..5 (not round(7 * 0.7) = 5 rows)
    odd = write(tmp_path, "v\n" + "".join(f"{i}\n" for i in range(7)), "odd.csv")
    assert learned([odd], patch=2).learn([odd], 0.7).settings.mean == [2.5]
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(InputError, match="share must be in \\(0, 1\\]"):
            TimeSeriesDomain().learn([long], share=bad)


def test_errors_name_the_data_row_of_the_whole_file_in_a_later_block(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "PIECE_CELLS", 10)  # blocks of 6 rows (learn) and of one window of 4 rows (read)
    rows = [f"{i},{i}.5" for i in range(40)]
    rows[33] = "33,oops"
    path = write(tmp_path, "t,v\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match="'v', data row 34 holds 'oops', which is not a number"):
        learned([path], columns=["v"])
    good = write(tmp_path, "t,v\n" + "".join(f"{i},{i}\n" for i in range(40)), "good.csv")
    domain = learned([good], patch=2)
    far = write(tmp_path, "t,v\n" + "".join(f"{i},{1e300 if i == 37 else i}\n" for i in range(40)), "far.csv")
    with pytest.raises(InputError, match="channel 'v', row 38 holds 1e\\+300"):
        read(domain, far, 2)


def test_reading_memory_is_a_piece_whatever_the_file_length(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "PIECE_CELLS", 8192)  # pieces of 2,048 rows

    def peak(rows: int) -> tuple[int, int]:
        path = long_csv(tmp_path, rows, f"{rows}.csv")
        domain = learned([path], keep_columns=True, patch=4)
        tracemalloc.start()
        try:
            windows = sum(len(piece.windows) for piece in domain.codec.iter_windows(path, 16))
            return windows, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    (small_windows, small), (large_windows, large) = peak(10_000), peak(40_000)
    assert (small_windows, large_windows) == (157, 625)
    # 1.7 and 1.8 MB measured; the 40,000 rows alone are 0.8 MB of text and 8 MB as Python strings
    assert large < 1.25 * small and large < 4e6


# ---- columns, normalisation, state ------------------------------------------------------------------
def test_crlf_line_endings_and_a_byte_order_mark_survive(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffdate,v\r\n2024-01-01,1.5\r\n2024-01-02,-0\r\n".encode("utf-8"))
    domain = learned([path])
    assert domain.settings.time_col == "date"
    round_trip(domain, path, tmp_path / "back.csv")
    assert (tmp_path / "back.csv").read_bytes() == "\ufeffdate,v\r\n2024-01-01,1.5\r\n2024-01-02,0\r\n".encode("utf-8")


def test_time_column_is_detected_by_name_or_iso_dates_or_given_or_absent(tmp_path):
    index_csv = write(tmp_path, ",value\n0,1.0\n1,2.0\n", "index.csv")  # pandas DataFrame.to_csv() with its index
    assert learned([index_csv]).settings.time_col == ""
    plain = write(tmp_path, "value,other\n1,2\n3,4\n", "plain.csv")
    assert learned([plain]).settings.time_col is False and learned([plain]).settings.columns == ["value", "other"]
    assert learned([plain], time_col="value").settings.columns == ["other"]
    iso = write(tmp_path, "stamp,v\n2024-01-31T12:00:00Z,1\n2024-01-31 13:00,2\n", "iso.csv")
    assert learned([iso]).settings.time_col == "stamp"
    single = write(tmp_path, "time\n1\n2\n", "single.csv")  # a one-column file has no time column
    assert learned([single]).settings.time_col is False and learned([single]).settings.columns == ["time"]
    years = write(tmp_path, "YEAR,SUNACTIVITY\n1700,5\n1701,11\n1702,16\n", "years.csv")
    domain = learned([years])
    assert domain.settings.time_col == "YEAR" and domain.settings.columns == ["SUNACTIVITY"]
    _, sides = read(domain, years, 4)
    assert sides[0]["time"] == {"range": [1700, 1, 3]}  # evenly spaced integers are stored as a range


def test_columns_choose_channels_and_the_rest_needs_keep_columns(tmp_path):
    rows = "1959,1,2710.3,28.98\n1959,2,2778.8,29.15\n1959,3,2775.5,29.35\n"
    path = write(tmp_path, '"year","quarter","gdp","cpi"\n' + rows)
    with pytest.raises(InputError, match="'quarter' is not one of the chosen channels; set keep_columns=true"):
        learned([path], columns=["gdp", "cpi"])
    domain = learned([path], columns=["cpi", "gdp"], keep_columns=True)
    assert domain.settings.columns == ["cpi", "gdp"]  # channel order as given; the file's column order is kept on write
    assert round_trip(domain, path, tmp_path / "back.csv") == path.read_text()  # quoted header too (R's write.csv)


def test_learn_returns_a_new_domain_and_state_restores_it(tmp_path):
    path = write(tmp_path, MULTI)
    settings = TimeSeriesDomain(TimeSeriesSettings(keep_columns=True, patch=3, loss="huber", huber_delta=0.5))
    domain = settings.learn([path])
    assert settings.settings.mean is None and settings.settings.columns is None  # never mutated
    state = json.loads(json.dumps(domain.state()))
    assert state["name"] == "timeseries" and state["columns"] == ["temp", "pressure", "flow"]
    again = get_domain("timeseries", state)
    assert again.state() == domain.state() and again.settings == domain.settings
    w1, s1 = read(domain, path, 4)
    w2, s2 = read(again, path, 4)
    assert s1 == s2 and all(torch.equal(a, b) for a, b in zip(w1, w2))
    fresh = TimeSeriesDomain.from_state({"name": "timeseries"})  # missing entries take their defaults
    assert fresh.settings == TimeSeriesSettings() and not fresh.settings.learned


def test_a_model_state_saved_before_the_settings_dataclass_loads():
    saved = json.loads((LEGACY / "model_timeseries" / "config.json").read_text())["domain"]
    assert "features" in saved and "training" in saved  # keys of the old state that are not settings
    domain = get_domain("timeseries", saved)
    assert domain.settings == TimeSeriesSettings(patch=2, time_col="date", columns=["co2", "temp"], keep_columns=True,
                                                 mean=saved["mean"], scale=saved["scale"])
    assert domain.model_fields() == {"feature_dim": 8} and domain.metric_name == "nrmse"


def test_constant_and_empty_channels_get_scale_one_and_round_trip(tmp_path):
    path = write(tmp_path, "t,flat,empty,x\n1,7.5,,1\n2,7.5,,2\n3,7.5,,4\n")
    domain = learned([path])
    assert domain.settings.columns == ["flat", "empty", "x"]
    assert domain.settings.mean[:2] == [7.5, 0.0] and domain.settings.scale[:2] == [1.0, 1.0]
    windows, sides = read(domain, path, 4)
    assert torch.isfinite(windows[0]).all()
    stats = sides[-1]["stats"]
    assert stats["empty"] == {"observed": 0, "missing": 3, "mean": None, "std": None, "min": None, "max": None}
    assert stats["flat"]["std"] == 0.0
    assert round_trip(domain, path, tmp_path / "back.csv") == path.read_text()


def test_many_missing_runs_and_mixed_decimals_round_trip(tmp_path):
    cells = ["" if i % 3 == 1 else f"{i / 4:g}" for i in range(4000)]  # 1,333 gaps; decimals 0, 1 and 2 mixed
    path = write(tmp_path, "v\n" + "".join(f"{c}\n" if c else '""\n' for c in cells))
    domain = learned([path])
    _, sides = read(domain, path, 64)
    assert len(sides[0]["missing"][0]) == 1333 and sides[0]["missing"][0][0] == [1, 1]
    back = as_text(io.StringIO(round_trip(domain, path, tmp_path / "back.csv", 64)))
    assert back["v"].tolist() == cells


def test_single_row_series(tmp_path):
    path = write(tmp_path, "date,v\n2020-01-01,42.5\n")
    domain = learned([path])
    assert domain.settings.mean == [42.5] and domain.settings.scale == [1.0]
    windows, _ = read(domain, path, 4)
    assert [tuple(w.shape) for w in windows] == [(1, 16)] and float(windows[0][0, 8:].sum()) == 1.0
    assert round_trip(domain, path, tmp_path / "back.csv") == path.read_text()


def test_huge_and_tiny_magnitudes_normalise_without_overflow(tmp_path):
    rows = "".join(f"{s * 1.5e307:.6e},{s * 2.5e-300:.6e}\n" for s in (1, -1, 1, -1, 0.5))
    path = write(tmp_path, "big,small\n" + rows)
    domain = learned([path])
    unit = np.array([1, -1, 1, -1, 0.5])
    assert domain.settings.mean == pytest.approx([1.5e307 * unit.mean(), 2.5e-300 * unit.mean()], rel=1e-12)
    assert domain.settings.scale == pytest.approx([1.5e307 * unit.std(), 2.5e-300 * unit.std()], rel=1e-12)
    back = pd.read_csv(io.StringIO(round_trip(domain, path, tmp_path / "back.csv")))
    np.testing.assert_allclose(back.to_numpy(), pd.read_csv(path).to_numpy(), rtol=1e-6)
    far = write(tmp_path, "big,small\n1e300,1e10\n", "far.csv")  # 1e10 is 4e309 learned deviations: beyond float32
    with pytest.raises(InputError, match=r"'small', row 1 holds 1e\+10, more than 3.4e\+38 standard deviations"):
        read(domain, far, 4)


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("  \n\n ", "holds no CSV, only whitespace"),
    ("a,b\n", "no data rows"),
    ("name,city\nann,paris\nbob,rome\n", "'name' is not numeric; set keep_columns=true"),
    ("t,v\n1,2.0\n2,inf\n", "'v', data row 2 holds 'inf'; only finite"),
    ("t,v\n1,-Infinity\n", "holds '-Infinity'"),
    ("t,v\n1,1e999\n", "beyond the float64 range"),
    ("t,v,w\n1,2,x\n2,3,y\n", "'w' is not numeric"),
    ("t,v\n1,2\n2,3,4\n", "not a well-formed CSV file: Expected 2 fields in line 3, saw 3"),
    ("t,v,v\n1,2,3\n", "'v' appears twice"),
])
def test_bad_csv_files_are_refused_with_a_clear_message(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message):
        learned([path])


def test_a_text_cell_in_a_chosen_channel_is_named(tmp_path):
    path = write(tmp_path, "t,v\n1,2\n2,3 kg\n")
    with pytest.raises(InputError, match="'v', data row 2 holds '3 kg', which is not a number"):
        learned([path], columns=["v"])


def test_binary_invalid_utf8_missing_columns_and_unlearned_reads_are_refused(tmp_path):
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"a,b\n\x00\x01\x02\n")
    with pytest.raises(InputError, match="binary data, not CSV"):
        learned([binary])
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"a,b\n1,2\n" + b"3,4\n" * 100_000 + b"5,caf\xe9\n")
    with pytest.raises(InputError, match="not CSV: invalid UTF-8 at byte 400013"):
        learned([latin], keep_columns=True)
    words = write(tmp_path, "year,name\n2020,ann\n", "words.csv")
    with pytest.raises(InputError, match="no numeric column"):
        learned([words], keep_columns=True)
    path = write(tmp_path, "t,v\n1,2\n2,3\n")
    with pytest.raises(InputError, match="no time column 'time'"):
        learned([path], time_col="time")
    other = write(tmp_path, "t,w\n1,2\n", "other.csv")
    with pytest.raises(InputError, match=r"has no column\(s\) \['v'\]"):
        read(learned([path]), other, 4)
    extra = write(tmp_path, "t,v,note\n1,2,x\n", "extra.csv")
    with pytest.raises(InputError, match="'note' is not one of the chosen channels"):
        learned([path, extra])
    with pytest.raises(InputError, match="has not learned"):
        read(TimeSeriesDomain(), path, 4)
    with pytest.raises(InputError, match="no data files"):
        TimeSeriesDomain().learn([])


@pytest.mark.parametrize("settings, message", [
    ({"patch": 0}, "patch must be a positive whole number"),
    ({"patch": True}, "patch must be"),
    ({"time_col": True}, "time_col must be a column name"),
    ({"columns": []}, "columns must name at least one channel"),
    ({"columns": ["a", "a"]}, "each once"),
    ({"loss": "mae"}, "unknown loss 'mae'"),
    ({"huber_delta": 0}, "huber_delta must be a positive number"),
    ({"mean": [0.0]}, "mean and scale are learned together"),
    ({"mean": [0.0], "scale": [1.0]}, "need the columns and time_col"),
    ({"columns": ["a"], "time_col": False, "mean": [0.0], "scale": [0.0]}, "scale must be positive"),
    ({"columns": ["a", "b"], "time_col": False, "mean": [0.0], "scale": [1.0]}, "mean must hold one finite number"),
])
def test_invalid_settings_name_the_parameter(settings, message):
    with pytest.raises(InputError, match=message):
        TimeSeriesSettings(**settings)


def test_settings_parse_user_text_and_list_the_options():
    parsed = TimeSeriesSettings.parse({"patch": "4", "columns": "a, b", "time_col": "false", "huber_delta": "2"})
    assert parsed == {"patch": 4, "columns": ["a", "b"], "time_col": False, "huber_delta": 2.0}
    assert TimeSeriesSettings.names() == ["patch", "time_col", "columns", "keep_columns", "loss", "huber_delta",
                                          "revin"]
    with pytest.raises(InputError, match="unknown domain option 'mean'"):
        TimeSeriesSettings.parse({"mean": "[1]"})


def test_the_writer_refuses_windows_or_sides_that_do_not_match(tmp_path):
    path = write(tmp_path, "v\n1\n2\n3\n4\n5\n")
    domain = learned([path], patch=2)
    (windows, side), (_, stats) = [(p.windows, p.side) for p in domain.codec.iter_windows(path, 8)]
    out = tmp_path / "back.csv"
    with pytest.raises(FormatError, match="2 patches decoded for 5 rows"):
        write_pieces(domain, [([windows[0][:2]], side)], out)
    with pytest.raises(FormatError, match="malformed"):
        write_pieces(domain, [(windows, {k: v for k, v in side.items() if k != "decimals"})], out)
    with pytest.raises(FormatError, match="first piece does not hold the CSV header"):
        write_pieces(domain, [([], stats)], out)
    with pytest.raises(FormatError, match=r"patches of 2 steps of \['w'\]"):
        write_pieces(domain, [(windows, {**side, "channels": ["w"]})], out)
    assert not out.exists()


# ---- format-1 side information ----------------------------------------------------------------------
def test_the_format1_fixture_side_becomes_pieces_that_rebuild_its_csv(tmp_path):
    from seqcompress.format import LatentReader

    model, meta = load_model(LEGACY / "model_timeseries")
    domain = get_domain("timeseries", meta["domain"])
    reader = LatentReader(LEGACY / "input_timeseries.sqz")
    assert reader.version == 1 and reader.lengths == [4, 1]
    pieces = list(domain.codec.legacy_pieces(reader.side, reader.lengths))
    assert [count for count, _ in pieces] == [2, 0] and pieces[0][1]["rows"] == 9
    assert pieces[0][1]["kept"]["flag"] == {"text": ["a", "b", "a", "c", "a", "b", "a", "a", "a"]}
    assert pieces[1][1] == {"rows": 0, "stats": reader.side["stats"]}
    windows = [w for p in domain.codec.iter_windows(LEGACY / "input.csv", model.config.n_max) for w in p.windows]
    write_pieces(domain, [(windows, pieces[0][1]), ([], pieces[1][1])], tmp_path / "back.csv")
    assert (tmp_path / "back.csv").read_bytes() == (LEGACY / "input.csv").read_bytes()  # a perfect model


def _v1_text(cells: list[str]) -> dict:
    return {"zlib": base64.b64encode(zlib.compress(json.dumps(cells).encode())).decode()}


def test_a_packed_format1_side_of_many_windows_becomes_several_pieces(tmp_path):
    # A side as format 1 wrote it for a long file: text columns, missing cells (> 1,024 runs: a packbits
    # bitmask) and decimals (an int16 array) zlib-packed in base64, one spelling per missing cell.
    cells = ["" if i % 3 == 1 else "NA" if i % 3 == 2 and i % 5 == 0 else f"{i / 4:g}" for i in range(4000)]
    path = write(tmp_path, "day,v\n" + "".join(f"d{i},{c}\n" for i, c in enumerate(cells)))
    domain = learned([path], patch=8)
    windows, sides = read(domain, path, 4)  # 500 patches: 125 windows of 4
    missing = np.array([c in ("", "NA") for c in cells])
    channel = ts.parse_channel(path, "v", np.array(cells, dtype=object))
    v1 = {
        "columns": ["day", "v"], "rows": 4000, "newline": "\n", "quoted_header": False, "bom": False, "patch": 8,
        "time_col": "day", "time": _v1_text([f"d{i}" for i in range(4000)]), "channels": ["v"],
        "missing": [{"zlib": base64.b64encode(zlib.compress(np.packbits(missing).tobytes())).decode()}],
        "missing_text": [[c for c in cells if c in ("", "NA")]],
        "decimals": [{"zlib": base64.b64encode(zlib.compress(channel.decimals.astype("<i2").tobytes())).decode()}],
        "kept": {}, "normalisation": sides[0]["normalisation"], "stats": sides[-1]["stats"],
    }
    pieces = list(domain.codec.legacy_pieces(json.loads(json.dumps(v1)), [len(w) for w in windows]))
    assert [count for count, _ in pieces] == [64, 61, 0] and [p["rows"] for _, p in pieces] == [2048, 1952, 0]
    assert pieces[1][1]["time"]["text"][0] == "d2048" and pieces[1][1]["missing_text"][0][:2] == ["", ""]
    grouped = [(windows[:64], pieces[0][1]), (windows[64:], pieces[1][1]), ([], pieces[2][1])]
    write_pieces(domain, grouped, tmp_path / "back.csv")
    assert (tmp_path / "back.csv").read_bytes() == path.read_bytes()
    with pytest.raises(FormatError, match="malformed"):
        list(domain.codec.legacy_pieces({**v1, "missing": [{"zlib": "not base64!"}]}, [4] * 125))


# ---- loss and metrics ----------------------------------------------------------------------------------
def test_loss_and_metrics_ignore_missing_values_and_padding(tmp_path):
    path = write(tmp_path, "a,b\n1,10\n3,\n5,30\n")
    domain = learned([path], patch=2, time_col=False)
    objective = domain.objective
    assert objective.metric_name == "nrmse" and not objective.higher_is_better
    target, _ = read(domain, path, 8)
    target = target[0][None]  # (1, 2, 8)
    mask = torch.ones(1, 2, dtype=torch.bool)
    output = target.clone()
    output[0, 0, 3] += 100.0  # b at step 2: missing
    output[0, 1, 2:8] -= 50.0  # step 4 (padding) and the whole observed-mask half
    assert float(objective.loss(output, target, mask)) == 0.0
    assert objective.values(objective.totals(output, target, mask))["nrmse"] == 0.0
    assert torch.equal(objective.prediction(output), output)
    output[0, 0, 0] += 0.3  # a at step 1, in standard deviations
    output[0, 1, 1] -= 0.4  # b at step 3
    assert float(objective.loss(output, target, mask)) == pytest.approx((0.09 + 0.16) / 5)
    values = objective.values(objective.totals(output, target, mask))
    assert values["nrmse"] == pytest.approx(math.sqrt(0.25 / 5))
    assert values["nmae"] == pytest.approx(0.7 / 5)
    assert values["mae"] == pytest.approx((0.3 * math.sqrt(8 / 3) + 0.4 * 10) / 5)
    assert values["nrmse[a]"] == pytest.approx(math.sqrt(0.09 / 3)) and values["mae[b]"] == pytest.approx(0.4 * 10 / 2)
    # each window's own mean, in standard deviations: a: 3 -> squares 1.5 + 0 + 1.5; b: 20 -> 1 + 1
    assert values["r2"] == pytest.approx(1 - 0.25 / 5.0)
    huber = TimeSeriesDomain.from_state({**domain.state(), "loss": "huber", "huber_delta": 0.2})
    assert float(huber.objective.loss(output, target, mask)) == pytest.approx((0.2 * (0.3 - 0.1) + 0.2 * (0.4 - 0.1)) / 5)


def test_metric_totals_add_up_across_batches(tmp_path):
    path = write(tmp_path, "v\n" + "".join(f"{math.sin(i)}\n" for i in range(40)))
    domain = learned([path], patch=4)
    windows, _ = read(domain, path, 3)  # 10 patches: windows of 3, 3, 3, 1
    outputs = [w + 0.1 * torch.randn_like(w) for w in windows]
    all_patches = torch.ones(1, 10, dtype=torch.bool)
    whole = domain.objective.totals(torch.cat(outputs)[None], torch.cat(windows)[None], all_patches)
    split = domain.objective.accumulator()
    for out, w in zip(outputs, windows):
        split.add(out[None], w[None], torch.ones(1, len(w), dtype=torch.bool))
    for key in ("sq.0", "abs.0", "n.0"):
        assert split.sums[key] == pytest.approx(whole[key], rel=1e-5)
    assert split.values()["nrmse"] == pytest.approx(domain.objective.values(whole)["nrmse"], rel=1e-5)


def test_render_and_references_describe_the_patches(tmp_path):
    path = write(tmp_path, 'v\n1\n""\n2\n')
    domain = learned([path], patch=2)
    windows, _ = read(domain, path, 4)
    assert domain.render(windows[0]) == "v: 1 · 2 ·"
    assert domain.codec.references(path, 2) == {"float32 values (2 steps x 1 channels per symbol)": 64.0}


# ---- the scikit-learn estimator -----------------------------------------------------------------------
def sines(rng: np.random.Generator, n: int, length: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Seeded univariate series (n, length, 1): a sine of random amplitude, frequency and phase plus noise."""
    t = np.arange(length)
    amp, freq, phase = rng.uniform(0.5, 2, n), rng.uniform(0.02, 0.12, n), rng.uniform(0, 2 * np.pi, n)
    x = amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None]) + 0.05 * rng.standard_normal((n, length))
    return x[:, :, None], amp


@pytest.mark.filterwarnings("ignore:Skipping check check_array_api_input")
def test_sequence_compressor_passes_scikit_learns_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    tiny = SequenceCompressor(settings={"patch": 2}, ratio=0.5, latent_dim=4, d_model=8, heads=2, layers=1,
                              max_steps=2, n_jobs=1)
    results = check_estimator(tiny, on_fail=None)
    failed = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "failed"}
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert failed == {}
    assert skipped <= {"check_array_api_input"}  # needs SCIPY_ARRAY_API=1, set before scipy is imported
    assert sum(r["status"] == "passed" for r in results) >= 44


def test_sequence_compressor_in_a_sklearn_pipeline_reconstructs_and_feeds_a_ridge():
    import sklearn
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(0)
    X, amp = sines(rng, 256)
    X_test, amp_test = sines(rng, 32)
    compressor = SequenceCompressor(settings={"patch": 8}, ratio=0.5, latent_dim=8, d_model=64, heads=4, layers=1,
                                    max_steps=300, n_jobs=1)
    Z = compressor.fit(X).transform(X_test)
    assert Z.shape == (32, 4, 8) and Z.dtype == np.float32  # 64 steps = 8 patches -> 4 latents
    assert compressor.n_features_in_ == 64 and compressor.series_length_ == 64 and compressor.n_channels_ == 1
    X_hat = compressor.inverse_transform(Z)
    assert X_hat.shape == X_test.shape
    rmse = float(np.sqrt(((X_hat - X_test) ** 2).mean()))
    mean_rmse = float(np.sqrt(((X_test - X.mean()) ** 2).mean()))  # predicting the training mean
    assert rmse < 0.5 * mean_rmse  # 0.29 x on the project's machine
    assert compressor.score(X_test) == pytest.approx(-rmse / compressor.domain_.settings.scale[0], rel=1e-4)
    with pytest.raises(ValueError, match="X has 32 features, but SequenceCompressor is expecting 64 features"):
        compressor.transform(X_test[:, :32])

    pipe = Pipeline([
        ("compress", sklearn.base.clone(compressor)),
        ("flatten", FunctionTransformer(lambda z: z.reshape(len(z), -1))),
        ("ridge", Ridge(alpha=1.0)),
    ])
    pipe.fit(X, amp)
    predicted = pipe.predict(X_test)
    assert predicted.shape == (32,)
    assert pipe.score(X_test, amp_test) > 0.7  # R^2 of the amplitude from the flattened latents: 0.90 measured
    assert np.array_equal(pipe.named_steps["compress"].transform(X_test), Z)  # same seed, same training


def test_sequence_compressor_params_follow_sklearn_conventions():
    import sklearn
    from sklearn.exceptions import NotFittedError

    compressor = SequenceCompressor(settings={"patch": 4}, ratio=0.5)
    assert compressor.get_params()["settings"] == {"patch": 4} and compressor.get_params()["seed"] == 0
    assert not hasattr(compressor, "model_")  # the constructor learns nothing
    twin = sklearn.base.clone(compressor.set_params(latent_dim=4))
    assert twin.get_params() == compressor.get_params() and twin is not compressor
    assert repr(compressor) == "SequenceCompressor(latent_dim=4, ratio=0.5, settings={'patch': 4})"
    tags = sklearn.utils.get_tags(compressor)
    assert tags.input_tags.three_d_array and tags.input_tags.allow_nan and tags.transformer_tags.preserves_dtype == []
    assert not sklearn.utils.get_tags(SequenceCompressor(domain="audio")).input_tags.allow_nan
    with pytest.raises(ValueError, match="Invalid parameter 'patches'"):
        compressor.set_params(patches=3)
    with pytest.raises(NotFittedError):
        compressor.transform(np.zeros((1, 8, 1)))
    with pytest.raises(ValueError, match="timeseries has no option\\(s\\) \\['patches'\\]"):
        SequenceCompressor(settings={"patches": 3}).fit(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="domain must be a vector domain"):
        SequenceCompressor(domain="text").fit(np.zeros((2, 8)))
    with pytest.raises(InputError, match="patch must be a positive"):
        SequenceCompressor(settings={"patch": 0}).fit(np.zeros((2, 8)))


def test_sequence_compressor_takes_variable_length_lists_and_dataframes():
    rng = np.random.default_rng(1)
    series = [rng.standard_normal((n, 2)) for n in (20, 9, 33)]
    series[0][3, 1] = np.nan  # missing values are fine; they are not trained on
    compressor = SequenceCompressor(settings={"patch": 4}, seq_len=4, ratio=0.5, latent_dim=4, d_model=16, heads=2,
                                    layers=1, max_steps=2, n_jobs=2).fit(series)
    assert torch.get_num_threads() == 1  # n_jobs applies while fitting only
    assert compressor.series_length_ is None and compressor.model_.config.n_max == 4
    assert not hasattr(compressor, "n_features_in_")  # lengths are free after fitting on a list
    Z = compressor.transform(series)
    # 20 steps = 5 patches -> windows of 4 + 1 -> 2 + 1 latents; 9 -> 3 patches -> 2; 33 -> 9 patches -> 2 + 2 + 1
    assert Z.shape == (3, 5, 4) and [compressor.latent_length(n) for n in (20, 9, 33)] == [3, 2, 5]
    assert not Z[1, 2:].any()  # rows past a short series' latents are zero
    with pytest.raises(ValueError, match="pass lengths="):
        compressor.inverse_transform(Z)
    back = compressor.inverse_transform(Z, lengths=[20, 9, 33])
    assert [b.shape for b in back] == [(20, 2), (9, 2), (33, 2)] and np.isfinite(back[0]).all()
    frame = pd.DataFrame(series[2], columns=["x", "y"], index=pd.date_range("2024-01-01", periods=33, freq="h"))
    assert compressor.transform(frame).shape == (1, 5, 4)
    with pytest.raises(ValueError, match="contains infinity"):
        compressor.transform(np.full((1, 8, 2), np.inf))
    with pytest.raises(ValueError, match="3 channel"):
        compressor.transform(np.zeros((1, 8, 3)))
    with pytest.raises(ValueError, match="not numeric"):
        SequenceCompressor().fit(pd.DataFrame({"x": [1.0, 2.0], "name": ["a", "b"]}))
    with pytest.raises(ValueError, match="same number of channels"):
        SequenceCompressor().fit([np.zeros((4, 1)), np.zeros((4, 2))])
    with pytest.raises(ValueError, match="latent rows; Z has"):
        compressor.inverse_transform(Z[:, :2], lengths=[20, 9, 33])


def test_sequence_compressor_refuses_a_changed_length_after_fitting_on_an_array():
    X = np.random.default_rng(2).standard_normal((6, 12))  # scikit-learn's layout: 6 univariate series of 12 steps
    compressor = SequenceCompressor(settings={"patch": 4}, ratio=0.5, latent_dim=4, d_model=8, heads=2, layers=1,
                                    max_steps=1, n_jobs=1).fit(X)
    assert compressor.n_features_in_ == 12 and compressor.transform(X).shape == (6, 2, 4)
    with pytest.raises(ValueError, match="X has 8 features, but SequenceCompressor is expecting 12"):
        compressor.transform([np.zeros(8)])
    assert compressor.inverse_transform(compressor.transform(X)).shape == (6, 12, 1)
    compressor.fit([np.zeros(8), np.ones(5)])  # refit on a list: lengths free again
    assert not hasattr(compressor, "n_features_in_") and compressor.transform([np.zeros(30)]).shape == (1, 4, 4)


def test_sequence_compressor_takes_audio_arrays_in_the_windows_an_audio_file_gives(tmp_path):
    import soundfile as sf

    t = np.arange(1000) / 8000
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t + 1)], axis=1)  # (1000, 2)
    path = tmp_path / "tone.wav"
    sf.write(path, stereo, 8000, subtype="FLOAT")
    domain = get_domain("audio").with_settings(sample_rate=8000, frame_ms=2.0, scale=0.25)  # frames of 16 samples
    arrays = AudioArrays(domain)
    from_file = [w for piece in domain.codec.iter_windows(path, 16) for w in piece.windows]
    from_array = arrays.windows(sf.read(path)[0], 16)
    # 63 frames per channel: steps of 16, 16, 16 and 15 frames, channel 0 then channel 1 in each step
    assert [len(w) for w in from_array] == arrays.window_lengths(1000, 2, 16) == [16] * 6 + [15] * 2
    assert len(from_file) == 8 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(from_file, from_array))
    np.testing.assert_allclose(arrays.values(from_array, 1000, 2), stereo, atol=1e-6)

    compressor = SequenceCompressor(domain="audio", settings={"sample_rate": 8000, "frame_ms": 2.0}, seq_len=16,
                                    ratio=0.5, latent_dim=4, d_model=16, heads=2, layers=1, max_steps=2, n_jobs=1)
    compressor.fit([stereo])
    assert compressor.domain_.settings.scale == pytest.approx(float(np.sqrt(np.mean(stereo**2))))
    Z = compressor.transform([stereo])
    assert Z.shape == (1, 64, 4) and compressor.latent_length(1000) == 64  # 8 windows of 8 latents
    assert compressor.inverse_transform(Z).shape == (1, 1000, 2) and math.isfinite(compressor.score([stereo]))
    with pytest.raises(ValueError, match="contains NaN"):
        compressor.transform([np.full((10, 2), np.nan)])


# ---- end to end: fit -> .sqz -> CSV -----------------------------------------------------------------
def test_fit_encode_decode_round_trips_the_csv_shape(tmp_path):
    t = np.arange(300)
    frame = pd.DataFrame({
        "date": pd.date_range("2020-01-01", periods=300, freq="D").strftime("%Y-%m-%d"),
        "load": np.round(50 + 10 * np.sin(2 * np.pi * t / 7), 2),
        "site": ["north"] * 300,
        "temp": np.round(15 + 8 * np.sin(2 * np.pi * t / 365), 1),
    })
    frame.loc[[5, 6, 7, 120], "load"] = np.nan
    frame.loc[299, "temp"] = np.nan
    path = tmp_path / "load.csv"
    frame.to_csv(path, index=False)
    domain = TimeSeriesDomain(TimeSeriesSettings(patch=4, keep_columns=True))
    summary = fit(domain, [path], tmp_path / "model", seq_len=16, ratio=0.25,
                  model_options={"d_model": 32, "heads": 2, "layers": 1, "ffn_dim": 64, "latent_dim": 16},
                  options=TrainOptions(epochs=None, max_steps=3, seed=0, device="cpu"))
    assert summary["metric"] == "nrmse" and summary["latent_len"] == 4 and math.isfinite(summary["value"])
    model, meta = load_model(tmp_path / "model")
    assert model.config.feature_dim == 2 * 4 * 2 and meta["domain"]["columns"] == ["load", "temp"]
    loaded = get_domain("timeseries", meta["domain"])
    report = encode_file(model, meta, loaded, path, tmp_path / "load.sqz", dtype="float16")
    assert report["windows"] == 5 and report["symbols"] == 75  # 300 rows = 75 patches of 4, windows of 16
    decoded = decode_file(model, meta, loaded, tmp_path / "load.sqz", tmp_path / "back.csv")
    assert "decimals of the input" in decoded["note"]
    original, back = as_text(path), as_text(tmp_path / "back.csv")
    assert list(back.columns) == ["date", "load", "site", "temp"] and len(back) == 300
    assert back["date"].tolist() == original["date"].tolist() and back["site"].tolist() == ["north"] * 300
    for column in ("load", "temp"):
        assert (back[column] == "").tolist() == (original[column] == "").tolist()
    assert pd.to_numeric(back["load"]).notna().sum() == 296
    values = evaluate_files(tmp_path / "model", [path])
    assert values["metric"] == "nrmse" and values["metrics"]["observed_values"] == 595.0


# ---- resize_init "pca": the DCT start on the principal axes of the training data --------------------------
def _linked_channels(tmp_path) -> Path:
    """Two channels that move together (b = 2a + 1) and one of their own: two of three floats per step hold
    everything, but not the first two channels."""
    g = np.random.default_rng(0)
    a, c = np.cumsum(g.normal(size=(2, 400)), axis=1)
    path = tmp_path / "linked.csv"
    pd.DataFrame({"a": a, "b": 2 * a + 1, "c": c}).to_csv(path, index=False)
    return path


def test_a_pca_start_keeps_the_principal_axes_of_the_values_and_leaves_mask_and_statistics_in_place(tmp_path):
    path = _linked_channels(tmp_path)
    domain = learned([path], revin=True, patch=1)
    windows = domain.load_windows([path], 16)
    basis = domain.start_basis("pca", lambda: iter(windows))
    width, values = domain.settings.feature_width, domain.settings.values_width
    assert basis.shape == (width, width) and values == 3 and width == 3 + 3 + 6
    assert torch.allclose(basis @ basis.T, torch.eye(width, dtype=torch.float64), atol=1e-9)
    assert torch.equal(basis[values:, values:], torch.eye(width - values, dtype=torch.float64))
    assert not basis[:values, values:].any() and not basis[values:, :values].any()
    # the dct start keeps the channels as they are, and reads no data for it
    assert domain.start_basis("dct", lambda: pytest.fail("the data is read only for a pca start")) is None


@pytest.mark.parametrize("revin", [False, True])
def test_a_pca_start_samples_a_patch_at_every_time_step_with_missing_values_as_nan(tmp_path, revin):
    path = tmp_path / "gap.csv"
    pd.DataFrame({"a": [1.0, 2, 3, 4, 5, 6, 7], "b": [10.0, 20, None, 40, 50, 60, 70]}).to_csv(path, index=False)
    domain = learned([path], patch=2, revin=revin)
    (window,) = domain.load_windows([path], 4)  # 7 steps: the last patch holds one, and one unobserved pad
    rows = np.concatenate(list(domain.basis_samples(window)))
    assert rows.shape == (7, 4)  # 8 time steps (the pad included): runs of 2 starting at each of the first 7
    symbols = window[:, :4].double().numpy()  # the patches: rows 0, 2, 4 and 6 of the runs, time-major
    assert np.array_equal(rows[[0, 4]], symbols[[0, 2]])
    assert np.isnan(rows[1]).sum() == 1 and np.isnan(rows[2]).sum() == 1  # the runs that hold b's gap
    assert np.isnan(rows[2, 1]) and np.isnan(rows[1, 3])  # (step, channel) order within a run, as in a patch
    assert np.isnan(rows[6, 2:]).all() and np.isnan(rows[5, 2:]).sum() == 0  # the pad: not observed
    assert np.isfinite(np.delete(rows, [1, 2, 6], axis=0)).all()


def test_a_pca_start_fits_when_every_patch_holds_a_gap(tmp_path):
    path = tmp_path / "weekly.csv"
    a = np.sin(np.arange(64) / 5)
    b = np.where(np.arange(64) % 7 == 0, np.cos(np.arange(64) / 5), np.nan)  # read once a week
    pd.DataFrame({"a": a, "b": b}).to_csv(path, index=False)
    domain = learned([path], patch=8)
    basis = domain.start_basis("pca", lambda: iter(domain.load_windows([path], 4)))
    w = domain.settings.values_width
    assert torch.allclose(basis[:w, :w] @ basis[:w, :w].T, torch.eye(w, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("start, most", [("pca", 0.01), ("dct", None)])
def test_a_fresh_pca_model_keeps_channels_that_move_together_in_fewer_floats_than_the_dct(tmp_path, start, most):
    path = _linked_channels(tmp_path)
    summary = fit(get_domain("timeseries", {"patch": 1}), [path], tmp_path / start, seq_len=32, ratio=1.0,
                  model_options={"d_model": 8, "heads": 2, "layers": 1, "ffn_dim": 16, "latent_dim": 2,
                                 "resize_init": start},
                  options=TrainOptions(epochs=None, max_steps=1, lr=1e-9, lr_end=1e-9, seed=0, device="cpu",
                                       val_fraction=0.0))
    # ratio 1 and 2 floats per step of 3 channels: the pca start keeps a and c (b is a's), the DCT start a and b
    if most is not None:
        assert summary["value"] < most, summary
    else:
        assert summary["value"] > 0.3, summary  # channel c is lost: NRMSE near 1 on a third of the values


# ---- revin: each window normalised by its own mean and scale ---------------------------------------------
def test_revin_windows_sit_at_level_zero_and_round_trip_byte_for_byte(tmp_path):
    domain = learned([CO2], revin=True)
    windows, sides = read(domain, CO2, 16)
    c, w = 1, 8
    assert domain.model_fields() == {"feature_dim": 2 * w + 2 * c}
    for window, stats in zip(windows, sides[0]["window_stats"]):
        values, observed = window[:, :w].double(), window[:, w : 2 * w] > 0.5
        assert float(values[observed].mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(values[observed].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
        assert window[:, 2 * w :].tolist() == [stats] * len(window)  # mean, scale on every patch
    assert len(sides[0]["window_stats"]) == len(windows) and domain.side_floats(windows[0]) == 2
    copy_through(domain.codec, CO2, 16, tmp_path / "back.csv")
    assert (tmp_path / "back.csv").read_bytes() == CO2.read_bytes()
    assert round_trip(domain, CO2, tmp_path / "json.csv", seq_len=16) == CO2.read_text(encoding="utf-8")


def test_revin_errors_are_measured_in_the_learned_units_as_without_it(tmp_path):
    plain, revin = learned([CO2]), learned([CO2], revin=True)
    target_plain, target_revin = plain.load_windows([CO2], 16)[0], revin.load_windows([CO2], 16)[0]
    noise = 0.1 * torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    guess_plain = target_plain.clone()
    guess_plain[:, :8] += noise
    scale = target_revin[0, 17]
    guess_revin = target_revin.clone()
    guess_revin[:, :8] += noise / scale  # the same values, in the window's units
    mask = torch.ones(1, 16, dtype=torch.bool)
    a = plain.objective.values(plain.objective.totals(guess_plain[None], target_plain[None], mask))
    b = revin.objective.values(revin.objective.totals(guess_revin[None], target_revin[None], mask))
    for key in ("nrmse", "nmae", "r2"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key
    loss_a = plain.objective.loss(guess_plain[None], target_plain[None], mask)
    assert float(revin.objective.loss(guess_revin[None], target_revin[None], mask)) == pytest.approx(float(loss_a), rel=1e-4)


def test_revin_side_information_is_checked(tmp_path):
    domain = learned([CO2], revin=True)
    pieces = list(domain.codec.iter_windows(CO2, 16))
    short = [(pieces[0].windows, {**pieces[0].side, "window_stats": pieces[0].side["window_stats"][:-1]})]
    with pytest.raises(FormatError, match="window_stats"):
        write_pieces(domain, short, tmp_path / "a.csv")
    negative = [list(s) for s in pieces[0].side["window_stats"]]
    negative[0][1] = -1.0
    with pytest.raises(FormatError, match="scale must be positive"):
        write_pieces(domain, [(pieces[0].windows, {**pieces[0].side, "window_stats": negative})], tmp_path / "b.csv")
    with pytest.raises(InputError, match="revin"):
        SequenceCompressor(settings={"revin": True}, max_steps=1).fit(np.random.default_rng(0).normal(size=(4, 64, 1)))


def test_a_file_written_before_a_setting_existed_still_decodes_with_its_model():
    """A .sqz header lists the settings of its time; one added later (revin) is missing there: its default."""
    from types import SimpleNamespace

    from seqcompress.compress import _writer_domain
    from seqcompress.errors import ModelMismatchError

    domain = learned([CO2])
    older = {k: v for k, v in domain.settings.state().items() if k != "revin"}
    assert _writer_domain(domain, SimpleNamespace(version=2, header={"settings": older}), force=False) is domain
    other = SimpleNamespace(version=2, header={"settings": {**older, "revin": True}})
    with pytest.raises(ModelMismatchError, match="revin"):
        _writer_domain(domain, other, force=False)
