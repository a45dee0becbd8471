"""Fuzzing every domain reader and writer with hypothesis: random and mutated FASTA/FASTQ, CSV and text files,
mutated WAV/FLAC headers, and random side information with the right top-level keys (what a crafted .sqz
can hand a writer, its checksum recomputed). Only seqcompress's own errors may come out, never a Python
exception, and each example has a deadline, so a hang or a large allocation fails too."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqcompress.domains.audio import AudioDomain
from seqcompress.domains.dna import DnaDomain, DnaSettings
from seqcompress.domains.text import TextDomain
from seqcompress.domains.timeseries import TimeSeriesDomain, TimeSeriesSettings
from seqcompress.errors import SeqCompressError
from tests.conftest import legacy_split, write_pieces

pytestmark = pytest.mark.usefixtures("one_thread")

# SEQCOMPRESS_FUZZ_EXAMPLES=5000 fuzzes longer (the default keeps the file well under a minute on two cores).
FUZZ = settings(max_examples=int(os.environ.get("SEQCOMPRESS_FUZZ_EXAMPLES", 300)), deadline=2000,
                suppress_health_check=[HealthCheck.too_slow], database=None)
WORK = Path(tempfile.mkdtemp(prefix="seqcompress-fuzz-"))  # hypothesis examples share no function-scoped fixture


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    """The examples run under an address-space limit of 1 GB above what the process maps now: a reader that
    allocates gigabytes fails its example with a MemoryError instead of exhausting the machine."""
    import resource

    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: no VmSize to start from
        yield
        return
    mapped = next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module", autouse=True)
def remove_scratch_files():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


def scratch(data: bytes, suffix: str) -> Path:
    """A new file in WORK holding `data`."""
    path = WORK / f"{uuid.uuid4().hex}{suffix}"
    path.write_bytes(data)
    return path


def expect_only_own_errors(run) -> None:
    """Run `run()`: it may succeed or raise a SeqCompressError, nothing else."""
    try:
        run()
    except SeqCompressError as exc:
        assert str(exc) and "\n" not in str(exc), repr(exc)


def read_all(domain, path: Path, seq_len: int) -> list:
    return [(p.windows, p.side) for p in domain.codec.iter_windows(path, seq_len)]


# ---- byte mutations (as tests/test_format.py mutates .sqz files) ------------------------------------------------
mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 4096), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 4096), st.sampled_from([0, 1, 0x7F, 0x80, 0xFF])),
    st.tuples(st.just("truncate"), st.integers(0, 4096), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 4096), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 4096), st.integers(1, 8)),
)


def mutate(blob: bytes, ops, head: int | None = None) -> bytes:
    """`blob` with the mutations applied (positions taken modulo `head`, the length of the part mutated)."""
    for kind, a, b in ops:
        span = min(len(blob), head or len(blob))
        i = a % (span + 1)
        if kind == "flip" and i < len(blob):
            blob = blob[:i] + bytes([blob[i] ^ b]) + blob[i + 1 :]
        elif kind == "set" and i < len(blob):
            blob = blob[:i] + bytes([b]) + blob[i + 1 :]
        elif kind == "truncate":
            blob = blob[:i]
        elif kind == "insert":
            blob = blob[:i] + b + blob[i:]
        elif kind == "delete":
            blob = blob[:i] + blob[i + b :]
    return blob


# ---- DNA ---------------------------------------------------------------------------------------------------------
FASTQ = b"@r1 first\nACGTNacgtRY\n+\nIIIIH#@@!II\n@r2\nGGGA\nCC\n+r2\n@@@@\n!!\n"
FASTA = b">chr1 desc\nACGTacgtNN\nRYacgtACGT\nGGC\n\n>chr2\nttttAAAA\n"
DNA_CHARS = st.sampled_from([b">", b"@", b"+", b"A", b"C", b"G", b"T", b"N", b"a", b"R", b"\n", b"\r\n", b"\r", b" ",
                             b"I", b"!", b"~", b"\x00", b"\xc3\xa9", b"\xff", b"-", b"1"])


@FUZZ
@given(st.lists(DNA_CHARS, max_size=80).map(b"".join), st.sampled_from([1, 3]))
def test_fuzz_random_fasta_fastq_text(data, k):
    domain = DnaDomain(DnaSettings(k=k))
    expect_only_own_errors(lambda: read_all(domain, scratch(data, ".fa"), 4))


@FUZZ
@given(st.sampled_from([FASTA, FASTQ]), st.lists(mutation, min_size=1, max_size=4), st.booleans())
def test_fuzz_mutated_fasta_fastq_round_trip(blob, ops, drop):
    domain = DnaDomain(DnaSettings(qualities="drop" if drop else "keep"))

    def run():
        write_pieces(domain, read_all(domain, scratch(mutate(blob, ops), ".fq"), 4), "out.fq")

    expect_only_own_errors(run)


# ---- CSV ---------------------------------------------------------------------------------------------------------
CSV = "time,v,w\n1,1.5,2\n2,,3e-2\n3,NA,4.25\n4,2.5,\n5,3,1\n"
CSV_CHARS = st.sampled_from([",", "\n", "\r\n", '"', "1", "2.5", "-", "e", "NA", "", "x", " ", "\x00", "é", "inf",
                             "1e999", "\ufeff", "time", "v"])


@pytest.fixture(scope="module")
def csv_domain():
    return TimeSeriesDomain(TimeSeriesSettings(patch=2)).learn([scratch(CSV.encode(), ".csv")])


@FUZZ
@given(st.lists(CSV_CHARS, max_size=60).map("".join))
def test_fuzz_random_csv_text(csv_domain, text):
    path = scratch(text.encode("utf-8", errors="surrogatepass"), ".csv")
    expect_only_own_errors(lambda: TimeSeriesDomain().learn([path]))
    expect_only_own_errors(lambda: read_all(csv_domain, path, 2))


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutated_csv_round_trip(csv_domain, ops):
    path = scratch(mutate(CSV.encode(), ops), ".csv")
    expect_only_own_errors(lambda: write_pieces(csv_domain, read_all(csv_domain, path, 2), "out.csv"))


# ---- text --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_domain():
    """The text domain with its tokenizer and detokenizer tables loaded (a second, once): not an example's time."""
    domain = TextDomain()
    write_pieces(domain, read_all(domain, scratch(b"warm up the tokenizer.\n", ".txt"), 8), "out.txt")
    return domain


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode("utf-8", errors="surrogatepass")))
def test_fuzz_random_text_files(text_domain, data):
    domain = text_domain
    expect_only_own_errors(lambda: write_pieces(domain, read_all(domain, scratch(data, ".txt"), 8), "out.txt"))


# ---- WAV and FLAC headers ------------------------------------------------------------------------------------------
def _sound(fmt: str, subtype: str, channels: int = 2) -> bytes:
    t = np.arange(800) / 8000
    data = np.stack([0.3 * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)], axis=1)
    out = io.BytesIO()
    sf.write(out, data, 8000, format=fmt, subtype=subtype)
    return out.getvalue()


SOUNDS = {"wav": _sound("WAV", "PCM_16"), "float": _sound("WAV", "FLOAT"), "wavex": _sound("WAVEX", "PCM_24", 3),
          "flac": _sound("FLAC", "PCM_16")}


@pytest.fixture(scope="module")
def audio_warm():
    """One unmutated round trip of each sound first: libsndfile's and the resampler's first-call costs belong
    to no example, so the per-example deadline measures the example."""
    domain = AudioDomain()
    for kind, blob in SOUNDS.items():
        path = scratch(blob, ".flac" if kind == "flac" else ".wav")
        write_pieces(domain, read_all(domain, path, 4), path.name)


@FUZZ
@given(st.sampled_from(sorted(SOUNDS)), st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutated_audio_headers(audio_warm, kind, ops):
    domain = AudioDomain()
    path = scratch(mutate(SOUNDS[kind], ops, head=96), ".flac" if kind == "flac" else ".wav")
    expect_only_own_errors(lambda: write_pieces(domain, read_all(domain, path, 4), path.name))


# ---- side information --------------------------------------------------------------------------------------------
# JSON-like values, numbers biased towards the edges: what a crafted .sqz may hold in any field.
EDGE_INTS = st.sampled_from([0, 1, -1, 2, 7, 8, 16000, 2**31, 2**32 - 1, 2**63, -(2**63), 10**9, 10**18, 10**40])
SCALARS = st.none() | st.booleans() | EDGE_INTS | st.integers(-50, 50) | st.floats(allow_nan=True) | st.text(max_size=8)


def _nested(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)


JSON = st.recursive(SCALARS, _nested, max_leaves=12)


def with_fuzzed_fields(side: dict, draw_values: dict) -> dict:
    """A real side with some of its fields (nested ones too, by "a.b" path) replaced; a path whose parent an
    earlier replacement removed is skipped."""
    out = json.loads(json.dumps(side))
    for path, value in draw_values.items():
        target = out
        *parents, key = path.split(".")
        for parent in parents:
            target = target.get(parent) if isinstance(target, dict) else \
                target[int(parent)] if isinstance(target, list) and parent.isdigit() and int(parent) < len(target) \
                else None
        if isinstance(target, list) and key.isdigit() and target:
            target[int(key) % len(target)] = value
        elif isinstance(target, dict):
            target[key] = value
    return out


def fields(side: dict, prefix: str = "") -> list[str]:
    """Every field path of a side: "rows", "normalisation.mean", "records.0.lines", ..."""
    out = []
    items = side.items() if isinstance(side, dict) else enumerate(side)
    for key, value in items:
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, (dict, list)) and value and len(out) < 200:
            out += fields(value if isinstance(value, dict) else value[:3], path + ".")
    return out


@pytest.fixture(scope="module")
def real_pieces(csv_domain):
    """One small real file of each domain: (domain, its pieces, output name)."""
    audio = AudioDomain()
    t = np.arange(3000) / 16000
    wav = scratch(b"", ".wav")
    sf.write(wav, np.stack([0.3 * np.sin(2 * np.pi * 300 * t)] * 2, axis=1), 16000, format="WAVEX", subtype="PCM_16")
    text = scratch(b"first document here.\n\nsecond one, longer than the first.\n", ".txt")
    real = {
        "dna": (DnaDomain(DnaSettings(k=1)), read_all(DnaDomain(DnaSettings(k=1)), scratch(FASTQ, ".fq"), 4), "out.fq"),
        "dna3": (DnaDomain(), read_all(DnaDomain(), scratch(FASTQ, ".fq"), 4), "out.fq"),
        "timeseries": (csv_domain, read_all(csv_domain, scratch(CSV.encode(), ".csv"), 2), "out.csv"),
        "audio": (audio, read_all(audio, wav, 4), "out.wav"),
        "text": (TextDomain(), read_all(TextDomain(), text, 4), "out.txt"),
    }
    for domain, pieces, out in real.values():  # unchanged, they write (and what loads once is loaded)
        write_pieces(domain, pieces, out)
    return real


@FUZZ
@given(st.sampled_from(["dna", "dna3", "timeseries", "audio", "text"]), st.data())
def test_fuzz_side_information_reaching_the_writer(real_pieces, name, data):
    domain, pieces, out = real_pieces[name]
    index = data.draw(st.integers(0, len(pieces) - 1))
    windows, side, *_ = pieces[index]
    paths = fields(side)
    chosen = data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)) if paths else []
    crafted = with_fuzzed_fields(side, {p: data.draw(JSON) for p in chosen})
    changed = [*pieces[:index], (windows, crafted), *pieces[index + 1 :]]
    expect_only_own_errors(lambda: write_pieces(domain, changed, out))


@FUZZ
@given(st.sampled_from(["dna", "dna3", "timeseries", "audio", "text"]), JSON)
def test_fuzz_whole_sides_of_garbage(real_pieces, name, garbage):
    domain, pieces, out = real_pieces[name]
    windows, side, *_ = pieces[0]
    crafted = {key: garbage for key in side} if isinstance(garbage, (list, dict)) or garbage is None else garbage
    expect_only_own_errors(lambda: write_pieces(domain, [(windows, crafted), *pieces[1:]], out))


# Format 1 kept one side block per file, turned into pieces by `legacy_pieces`.
LEGACY_FASTQ = {"exact": [[], [[4, 1, "R"], [5, 1, "Y"]]], "final_newline": True, "format": "fastq", "k": 1,
                "lengths": [16, 10], "lines": [[[16, 1]], [[10, 1]]], "lower": [[], [0, 4, 6]], "newline": "\n",
                "plus": [0, 1], "qualities": "eNrz9IQBZRDwVIQDAFE1BR0=", "qualities_dropped": False,
                "quality_lines": [[[16, 1]], [[10, 1]]], "source_format": "fastq", "titles": ["r1 first read", "r2"]}


@FUZZ
@given(st.data())
def test_fuzz_format1_side_information(real_pieces, data):
    name = data.draw(st.sampled_from(["dna", "timeseries", "audio"]))
    if name == "dna":
        domain, side, out = DnaDomain(DnaSettings(k=1)), LEGACY_FASTQ, "out.fq"
        windows = [torch.randint(1, 6, (n,)) for n in (16, 10)]
    else:
        domain, pieces, out = real_pieces[name]
        windows = [w for piece_windows, _ in pieces for w in piece_windows]
        side = {k: v for _, piece_side in pieces for k, v in piece_side.items()}
        if name == "audio":
            side = {**side, "windows_per_channel": [len(windows) // 2] * 2}
            windows = windows[0::2] + windows[1::2]
    chosen = data.draw(st.lists(st.sampled_from(fields(side)), min_size=1, max_size=3, unique=True))
    crafted = with_fuzzed_fields(side, {p: data.draw(JSON) for p in chosen})

    expect_only_own_errors(lambda: write_pieces(domain, legacy_split(domain, crafted, windows), out))
