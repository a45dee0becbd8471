"""Hostile input for every domain: crafted side information (what a .sqz file whose checksum was recomputed
can hand a writer) is refused with a FormatError, fast and before anything large is allocated; hostile data
files (headers that claim huge sizes, malformed records, garbage) are refused with an InputError; WAVE
containers keep their speaker mask and float WAV gets its fmt extension.

Each crafted side starts from a real one (`codec.iter_windows` on the bundled sample) with one number
inflated. The cases run in one subprocess, each under an address-space limit of HEADROOM above what the
process has mapped when the case starts and with an alarm, so that code which would allocate gigabytes or
loop for minutes fails the test quickly instead of taking the machine down."""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from seqcompress.domain import bundled, copy_through
from seqcompress.domains import dna
from seqcompress.domains.audio import AudioDomain
from seqcompress.domains.dna import DnaDomain
from seqcompress.domains.text import TextDomain
from seqcompress.domains.timeseries import TimeSeriesDomain
from seqcompress.errors import FormatError, InputError
from tests.conftest import legacy_split, write_pieces

HEADROOM = 200 << 20  # bytes of address space a case may add to what is mapped before it runs
ALARM_S = 10  # a case still running after this long has hung
FAST_S = 2.0  # a refusal takes at most this long


# ---- crafted side information (run in a subprocess: see _run_cases) ---------------------------------------
@functools.cache
def _real(name: str):
    """(domain, first piece's windows, its side, the rest of the pieces) of the bundled sample."""
    if name == "dna":
        domain, path, seq_len = DnaDomain(), bundled("yeast_sample.fa.gz"), 128
    elif name == "timeseries":
        domain, path, seq_len = TimeSeriesDomain().learn([bundled("co2_sample.csv")]), bundled("co2_sample.csv"), 16
    elif name == "audio":
        domain, path, seq_len = AudioDomain(), bundled("speech_sample.flac"), 64
    else:
        domain, path, seq_len = TextDomain(), bundled("wiki_sample.txt"), 128
    pieces = [(p.windows, p.side) for p in domain.codec.iter_windows(path, seq_len)]
    return domain, pieces[0][0], pieces[0][1], pieces[1:]


def _deflated(size: int) -> str:
    """base64 of a zlib block that inflates to `size` zero bytes (a few hundred KB for 300 MB)."""
    packer = zlib.compressobj(1)
    block = bytes(1 << 20)
    data = b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()
    return base64.b64encode(data).decode()


def _side_case(name: str, edit, legacy: bool = False):
    """A case: the bundled sample's first piece with `edit(side)` applied, written (or, `legacy`, the edited
    side taken as a format-1 block and turned into pieces, then written)."""
    domain, windows, side, rest = _real(name)
    side = json.loads(json.dumps(side))  # a copy: the real side serves every case
    edit(side)
    out = {"dna": "out.fa", "timeseries": "out.csv", "audio": "out.wav", "text": "out.txt"}[name]
    if not legacy:
        return lambda: write_pieces(domain, [(windows, side), *rest], out)
    return lambda: write_pieces(domain, legacy_split(domain, side, windows), out)


def _piece_case(name: str, side: object):
    """A case: the bundled sample's first windows written with `side` (not even a JSON object)."""
    domain, windows, _, _ = _real(name)
    return lambda: write_pieces(domain, [(windows, side)], "out")


def _dna_v1_side(lines, length: int, fastq_qualities: str | None = None) -> dict:
    side = {"exact": [[]], "final_newline": True, "format": "fasta", "k": 1, "lengths": [length], "lines": [lines],
            "lower": [[]], "newline": "\n", "qualities_dropped": False, "source_format": "fasta", "titles": ["r1"]}
    if fastq_qualities is not None:
        side.update(format="fastq", source_format="fastq", plus=[0], qualities=fastq_qualities,
                    quality_lines=[[[length, 1]]])
    return side


def _dna_v1(side: dict, lengths: list[int]):
    return lambda: list(DnaDomain().codec.legacy_pieces(side, lengths))


def _set(**values):
    return lambda side: side.update(values)


def _first_record(**values):
    return lambda side: side["records"][0].update(values)


def _audio_v1(side: dict) -> None:
    side.update(frames=10**9, model_samples=10**9, windows_per_channel=[len(_real("audio")[1])],
                layout="channel-major")


def _timeseries_v1(side: dict) -> None:
    side.update(rows=10**9, missing=[{"runs": [[0, 1]]}], decimals=[{"runs": [[1, 10**9]]}], stats={})


def _rate(rate: int):
    def edit(side: dict) -> None:
        frames = side["frames"] * rate // 16000
        side.update(sample_rate=rate, frames=frames, model_samples=-(-frames * 16000 // rate))
    return edit


# name -> a builder of the case's action. Marked "before:" is what the code before these checks did.
CASES = {
    # text: the side holds only each document's token count, checked against the decoded tokens (held before)
    "text: a document of 10^12 tokens": lambda: _side_case("text", _set(documents=[10**12])),
    "text: a million documents in a piece": lambda: _side_case("text", _set(documents=[0] * 10**6)),
    # dna
    "dna: a fragment of 10^9 bases": lambda: _side_case("dna", _first_record(length=10**9)),  # held before
    "dna: 10^9 blank lines": lambda: _side_case(  # before: 954 MiB of line breaks
        "dna", lambda s: s["records"][0]["lines"].insert(0, [0, 10**9])),
    "dna: a negative line width": lambda: _side_case(  # before: written, a garbled layout
        "dna", lambda s: s["records"][0]["lines"].extend([[-1, 5], [5, 1]])),
    "dna: a quality block of 300 MB in format 1": lambda: _dna_v1(  # before: inflated whole
        _dna_v1_side([[8, 1]], 8, _deflated(300 << 20)), [8]),
    "dna: 10^9 blank lines in a long format-1 record": lambda: _dna_v1(  # before: a loop over every line
        _dna_v1_side([[0, 10**9], [60, 200]], 12000), [128] * 93 + [96]),
    "dna: a record of 10^12 bases in format 1": lambda: _dna_v1(_dna_v1_side([[60, 1]], 10**12), [60]),  # held
    # timeseries
    "timeseries: a time range of 10^9 rows": lambda: _side_case(  # before: 10^9 strings (the 3.4 GB report)
        "timeseries", _set(time={"range": [0, 1, 10**9]})),
    "timeseries: decimals runs of 10^10 rows": lambda: _side_case(  # before: a 74.5 GiB array
        "timeseries", _set(decimals=[[[1, 10**10]]])),
    "timeseries: 10^8 digits after the point": lambda: _side_case(  # before: a 100 MB string per cell
        "timeseries", _set(decimals=[[[10**8, 2284]]])),
    "timeseries: 10^9 rows": lambda: _side_case("timeseries", _set(rows=10**9)),  # held before
    "timeseries: 10^9 rows in format 1": lambda: _side_case(  # before: a 954 MiB mask
        "timeseries", _timeseries_v1, legacy=True),
    "timeseries: a 300 MB text column in format 1": lambda: _side_case(  # before: inflated whole
        "timeseries", _set(time={"zlib": _deflated(300 << 20)}), legacy=True),
    "timeseries: a mean that is text": lambda: _side_case(  # held before
        "timeseries", _set(normalisation={"mean": ["x"], "scale": [1]})),
    # audio
    "audio: 10^9 frames in format 1": lambda: _side_case("audio", _audio_v1, legacy=True),  # before: 7.45 GiB
    "audio: a rate of 9,999,991 Hz": lambda: _side_case("audio", _rate(9_999_991)),  # before: out of memory
    "audio: a million channels": lambda: _side_case("audio", _set(channels=10**6)),  # held before
    "audio: a format libsndfile does not write": lambda: _side_case(  # before: written as WAV with a note
        "audio", _set(format="XYZ")),
    "audio: a side that is a number": lambda: _piece_case("audio", 5),  # before: TypeError
}


def _mapped() -> int:
    """Bytes of address space this process has mapped (Linux: VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _run_cases(names: list[str]) -> dict[str, dict]:
    """Run the cases here, each under the address-space limit and the alarm; what each raised, and how fast."""
    import resource
    import signal

    def alarm(*_):
        raise TimeoutError(f"still running after {ALARM_S} s")

    signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    results = {}
    for name in names:
        action = CASES[name]()  # real pieces read and sides crafted outside the limit
        resource.setrlimit(resource.RLIMIT_AS, (_mapped() + HEADROOM, hard))
        signal.alarm(ALARM_S)
        start = time.perf_counter()
        try:
            action()
            error, message = "", ""
        except BaseException as exc:  # reported to the test, which judges it
            error, message = type(exc).__name__, str(exc)
        finally:
            seconds = time.perf_counter() - start
            signal.alarm(0)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        results[name] = {"error": error, "message": message[:300], "seconds": seconds}
    return results


@pytest.fixture(scope="module")
def outcomes():
    if not Path("/proc/self/status").exists():
        pytest.skip("the address-space limit is measured from /proc (Linux)")
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_hostile_domains as t; "
            f"print(json.dumps(t._run_cases({sorted(CASES)!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_side_information_is_refused_fast_and_without_a_large_allocation(outcomes, case):
    result = outcomes[case]
    assert result["error"] == "FormatError", result
    assert "\n" not in result["message"]
    assert result["seconds"] < FAST_S, result


def test_refusals_name_what_is_wrong(outcomes):
    messages = {name: result["message"] for name, result in outcomes.items()}
    assert messages["timeseries: a time range of 10^9 rows"] == ("timeseries side information is malformed: a range "
                                                                 "column's row count is 1,000,000,000, which should be "
                                                                 "2,284")
    assert "decimals runs claim 10,000,000,000 rows for 2,284" in messages["timeseries: decimals runs of 10^10 rows"]
    assert "quality block inflates to more than 8 bytes" in messages["dna: a quality block of 300 MB in format 1"]
    assert "line lengths claim 1,000,000,000 blank lines" in messages["dna: 10^9 blank lines"]
    assert "a sample rate of 9,999,991 Hz" in messages["audio: a rate of 9,999,991 Hz"]
    assert "frames decoded for a channel of 1,000,000,000 samples" in messages["audio: 10^9 frames in format 1"]


# ---- hostile data files ----------------------------------------------------------------------------------------
def _wav(channels: int, rate: int, data_bytes: int, present: int) -> bytes:
    """A PCM_16 WAV whose header says what we choose, followed by `present` bytes of samples."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * 2) & 0xFFFFFFFF, channels * 2, 16)
    body = b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_bytes) + b"\x01" * present
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


@pytest.mark.parametrize("content,message", [
    (_wav(2, 16000, 0xFFFFFFF0, 64), "is truncated: its header declares 4,294,967,280 bytes"),
    (_wav(1, 1_000_000, 2000, 2000), "declares a sample rate of 1,000,000 Hz; rates from 1 Hz to 768,000 Hz"),
    (_wav(1000, 1, 2000, 2000), "declares 1,000 channels at 1 Hz; resampling that many channels"),
    (b"RIFF\x00\x00\x00\x00WAVE" + b"JUNK\x00\x00\x00\x00" * 2000, "not a readable audio file"),
])
def test_hostile_audio_headers_are_input_errors(tmp_path, content, message):
    path = tmp_path / "crafted.wav"
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(InputError, match=message):
        list(AudioDomain().codec.iter_windows(path, 8))
    assert time.perf_counter() - start < FAST_S


def test_hostile_fasta_and_fastq_are_input_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(dna, "MAX_TITLE_BYTES", 1000, raising=False)
    monkeypatch.setattr(dna, "MAX_BLANK_LINES", 10, raising=False)
    cases = {
        "quality.fq": (b"@r1\nACGT\n+\nIII\n@r2\nA\n+\nI\n", "Lengths of sequence and quality values differs"),
        "title.fa": (b">" + b"x" * 5000 + b"\nACGT\n", "a header line longer than 1,000 bytes"),
        "blank.fa": (b">r1\nACGT\n" + b"\n" * 11 + b"ACGT\n", "record 'r1' has more than 10 blank lines"),
        "plus.fq": (b"@r1\nACGT\n+" + b"r" * 5000 + b"\nIIII\n", "a \\+ line longer than 1,000 bytes"),
        "binary.fa.gz": (gzip.compress(b">r1\nAC\x00GT\n"), "binary data"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message):
            list(DnaDomain().codec.iter_windows(tmp_path / name, 8))


def test_hostile_csv_is_an_input_error(tmp_path):
    learned = TimeSeriesDomain().learn([bundled("co2_sample.csv")])
    cases = {
        "garbage.csv": (b"\x89PNG\r\n\x1a\n\x00\x00", "binary data"),
        "ragged.csv": (b"date,co2\n1,2,3,4\n", "not a well-formed CSV file"),
        "utf8.csv": (b"date,co2\n1,\xff\n", "invalid UTF-8 at byte 11"),
        "digits.csv": (b"date,co2\n1,1." + b"0" * 400 + b"\n", "400 digits after the point; at most 340"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message):
            list(learned.codec.iter_windows(tmp_path / name, 8))


def test_invalid_utf8_text_is_an_input_error(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text\n\nthen \xc3\x28 bad")
    with pytest.raises(InputError, match="invalid UTF-8 at byte 16"):
        list(TextDomain().codec.iter_windows(path, 8))


# ---- WAVE containers -------------------------------------------------------------------------------------------
def test_wavex_input_decodes_to_wavex_with_its_channel_mask(tmp_path):
    from seqcompress.domains.audio import wav_channel_mask

    path, out = tmp_path / "surround.wav", tmp_path / "back.wav"
    t = np.arange(4000) / 16000
    sf.write(path, np.stack([0.2 * np.sin(2 * np.pi * 200 * (c + 1) * t) for c in range(4)], axis=1), 16000,
             format="WAVEX", subtype="PCM_24")
    data = bytearray(path.read_bytes())
    data[40:44] = struct.pack("<I", 0x0107)  # front left, right, centre and back centre: not libsndfile's default
    path.write_bytes(bytes(data))
    assert wav_channel_mask(path) == 0x0107
    assert copy_through(AudioDomain().codec, path, 8, out) == {}
    info = sf.info(str(out))
    assert (info.format, info.subtype, info.channels, info.frames) == ("WAVEX", "PCM_24", 4, 4000)
    assert wav_channel_mask(out) == 0x0107


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_wav_output_has_the_fmt_extension_and_the_same_samples(tmp_path, subtype):
    path, out = tmp_path / "float.wav", tmp_path / "back.wav"
    data = 0.25 * np.sin(2 * np.pi * 300 * np.arange(3000) / 16000)[:, None].repeat(2, axis=1)
    sf.write(path, data, 16000, subtype=subtype)
    copy_through(AudioDomain().codec, path, 8, out)
    head = out.read_bytes()[:40]
    fmt_size, tag, cb_size = struct.unpack_from("<IH", head, 16) + struct.unpack_from("<H", head, 36)
    assert (fmt_size, tag, cb_size) == (18, 3, 0)  # WAVEFORMATEX with cbSize: what soxi expects of IEEE float
    assert struct.unpack_from("<I", head, 4)[0] == out.stat().st_size - 8  # the RIFF size counts the extension
    info = sf.info(str(out))
    assert (info.format, info.subtype, info.frames, info.channels) == ("WAV", subtype, 3000, 2)
    np.testing.assert_allclose(sf.read(out)[0], data, atol=1e-6)


def test_side_check_helpers_refuse_what_would_raise_python_errors():
    from seqcompress.domain import SideCheck

    check = SideCheck("demo")
    with pytest.raises(FormatError, match="demo side information is malformed: 'rows' is missing"):
        check.get({}, "rows")
    with pytest.raises(FormatError, match="rows must be a whole number, got bool"):
        check.integer(True, "rows")
    with pytest.raises(FormatError, match="rows is about 10\\^20, which should be from 0 to 10"):
        check.integer(10**20, "rows", 0, 10)
    with pytest.raises(FormatError, match="runs claim 12 rows for 10"):
        check.runs([[1, 5], [2, 7]], "runs", 10, "rows")
    with pytest.raises(FormatError, match="inflates to more than 4 bytes"):
        check.inflate(base64.b64encode(zlib.compress(b"x" * 100)).decode(), "a block", size=4)
    with pytest.raises(FormatError, match="malformed \\(KeyError"):
        with check.guard():
            {}["x"]
    with pytest.raises(FormatError, match="inflates to 3 bytes and is cut short"):
        check.inflate(base64.b64encode(zlib.compress(b"abcd")[:-6]).decode(), "a block")
    assert check.inflate(base64.b64encode(zlib.compress(b"abcd")).decode(), "a block", size=4) == b"abcd"
