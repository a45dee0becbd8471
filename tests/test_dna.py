"""DNA domain: exact FASTA/FASTQ round trips through the streaming codec, windows per record, pieces and
their side information, format-1 side information, bad input, memory, metrics."""

from __future__ import annotations

import bz2
import filecmp
import gzip
import hashlib
import json
import lzma
import string
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from seqcompress.cli.main import app
from seqcompress.domain import bundled, copy_through
from seqcompress.domains.dna import (DROPPED_NOTE, MIXED_ID, OTHER_ID, DnaCodec, DnaDomain, DnaObjective,
                                     DnaSettings)
from seqcompress.errors import FormatError, InputError

FASTA = (
    ">chr1 first test record\n"
    "ACGTacgtNN\n"
    "RYacgtACGT\n"
    "GGC\n"
    ">chr2\tsecond, with a tab\n"
    "ttttAAAACCCCGGGGnnnnKMSW\n"
    "A\n"
    ">chr3 one base\n"
    "g\n"
)

FASTQ = (
    "@read1 lane=1\n"
    "ACGTNacgt\n"
    "+\n"
    "IIIIH#@@!\n"
    "@read2\n"
    "GGGA\n"
    "+read2\n"
    "@@@@\n"
)

TINY = {"windows": 1, "size": 1, "block": 3}  # one window a piece, qualities cut anywhere, lines read in 3-byte blocks


def write_file(path, text: str, compress: bool = False):
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def make_codec(k: int = 1, qualities: str = "keep", windows: int | None = None, size: int | None = None,
               block: int | None = None) -> DnaCodec:
    """A codec; `windows`, `size` and `block` shrink its pieces and read blocks (tests of the streaming)."""
    codec = DnaCodec(DnaSettings(k=k, qualities=qualities))
    if windows is not None:
        codec.max_piece_windows = windows
    if size is not None:
        codec.max_piece_bytes = size
    if block is not None:
        codec.block_size = block
    return codec


def read(path, seq_len: int, **options) -> tuple[list[torch.Tensor], list[dict], list]:
    """Every window, every record fragment, and the pieces of a file."""
    pieces = list(make_codec(**options).iter_windows(path, seq_len))
    return ([w for p in pieces for w in p.windows], [f for p in pieces for f in p.side["records"]], pieces)


def round_trip(path, out, seq_len: int = 7, **options) -> bytes:
    """What the writer makes of the true token windows (a perfect model)."""
    copy_through(make_codec(**options), path, seq_len, out)
    return out.read_bytes()


def sequences(text: str) -> list[str]:
    """The sequence of each FASTA record, line breaks removed."""
    return ["".join(block.split("\n")[1:]) for block in text.split(">")[1:]]


def reference_windows(seqs: list[str], k: int, seq_len: int) -> list[list[int]]:
    """Today's windows, computed independently: each record's tokens cut into windows of seq_len."""
    out = []
    for seq in seqs:
        seq = seq.upper()
        if k == 1:
            tokens = ["?ACGTN".index(c) if c in "ACGTN" else OTHER_ID for c in seq]
        else:
            chunks = [seq[i : i + k] for i in range(0, len(seq), k)]
            tokens = [2 + int("".join(str("ACGT".index(c)) for c in chunk), 4)
                      if len(chunk) == k and set(chunk) <= set("ACGT") else MIXED_ID for chunk in chunks]
        out += [tokens[i : i + seq_len] for i in range(0, len(tokens), seq_len)]
    return out


# ---- tokens and windows ---------------------------------------------------------------------
def test_single_nucleotide_tokens_fold_case_and_lump_rare_iupac(tmp_path):
    windows, frags, _ = read(write_file(tmp_path / "a.fa", ">x\nACGTNRacgtnyU\n"), 64)
    assert windows[0].tolist() == [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 6]
    assert windows[0].dtype == torch.long
    assert frags[0]["exact"] == [[5, 1, "R"], [11, 1, "Y"], [12, 1, "U"]]
    assert frags[0]["lower"] == [6, 6, 1]  # ACGTNR upper, acgtny lower, U upper


def test_case_runs_start_with_an_upper_case_run(tmp_path):
    _, frags, _ = read(write_file(tmp_path / "a.fa", ">x\nacGTa\n>y\nACGT\n"), 64)
    assert frags[0]["lower"] == [0, 2, 2, 1] and "lower" not in frags[1]


def test_windows_never_cross_records_and_the_last_of_each_is_shorter(tmp_path):
    text = "".join(f">{name}\n{base * n}\n" for name, base, n in [("a", "A", 10), ("b", "C", 25), ("c", "G", 7), ("d", "T", 16)])
    windows, frags, _ = read(write_file(tmp_path / "a.fa", text), 8)
    assert [len(w) for w in windows] == [8, 2, 8, 8, 8, 1, 7, 8, 8]
    assert [set(w.tolist()) for w in windows] == [{1}] * 2 + [{2}] * 4 + [{3}] + [{4}] * 2
    assert [f["length"] for f in frags] == [10, 25, 7, 16]


def test_kmer_windows_count_tokens_and_keep_the_partial_last_kmer(tmp_path):
    windows, frags, _ = read(write_file(tmp_path / "a.fa", ">a\nACGTA\n>b\nAAANAAATTT\n"), 2, k=3)
    acg, aaa, att = 2 + 0b000110, 2 + 0, 2 + 0b001111  # base-4 digits A=0 C=1 G=2 T=3, first base first
    assert [w.tolist() for w in windows] == [[acg, MIXED_ID], [aaa, MIXED_ID], [att, MIXED_ID]]
    assert [f["exact"] for f in frags] == [[[3, 1, "TA"]], [[3, 1, "NAA"], [9, 1, "T"]]]
    assert DnaDomain(DnaSettings(k=3)).model_fields() == {"vocab_size": 2 + 64}


def test_bundled_sample_windows_are_the_windows_of_before_the_streaming_reader():
    """sha256 of the int64 tokens, as the whole-file reader of commit 4e94bc2 made them."""
    for k, seq_len, count, digest in [(1, 512, 453, "58990148c167b24b"), (3, 100, 768, "f633c6cdd7492d75")]:
        domain = DnaDomain(DnaSettings(k=k))
        windows = domain.load_windows(domain.default_data(), seq_len)
        assert len(windows) == count and max(len(w) for w in windows) == seq_len
        flat = torch.cat(windows).numpy().astype("<i8")
        assert hashlib.sha256(flat.tobytes()).hexdigest()[:16] == digest


# ---- settings --------------------------------------------------------------------------------
def test_settings_restore_old_states_and_name_the_parameter():
    old = {"name": "dna", "k": 6, "vocab_size": 4098, "tokens": "PAD MIXED then the 4096 6-mers", "training": {"seed": 0}}
    domain = DnaDomain.from_state(old)
    assert (domain.settings.k, domain.settings.qualities, domain.model_fields()) == (6, "keep", {"vocab_size": 4098})
    assert DnaDomain().state() == {"name": "dna", "k": 3, "qualities": "keep"}  # 3-mers: docs/dna.md, "Settings"
    assert DnaSettings.encode_names() == ["qualities"]
    assert DnaSettings.parse({"k": "3", "qualities": "drop"}) == {"k": 3, "qualities": "drop"}
    with pytest.raises(InputError, match=r"^k \(the k-mer size\) must be an integer from 1 to 6, got 7$"):
        DnaSettings(k=7)
    with pytest.raises(InputError, match="^k "):
        DnaSettings(k=True)
    with pytest.raises(InputError, match="^qualities must be 'keep' or 'drop', got 'lose'$"):
        DnaDomain().with_settings(qualities="lose")


def test_fit_takes_the_domains_schedule_unless_one_is_given(tmp_path):
    """DNA's measured defaults: 3-mer tokens and the learning rate falling over 50 epochs (the paper's 5
    elsewhere); a schedule given by the caller is kept."""
    from seqcompress.api import _prepare
    from seqcompress.domains.text import TextDomain
    from seqcompress.train import TrainOptions

    def decay(domain, options):
        return _prepare(domain, None, tmp_path / "m", 16, 0.5, None, None, options, False, False, None)[2].decay_epochs

    assert DnaDomain().settings.k == 3
    assert decay(DnaDomain(), TrainOptions(max_steps=1)) == 50.0
    assert decay(DnaDomain(), TrainOptions(max_steps=1, decay_epochs=2)) == 2.0
    assert decay(TextDomain(), TrainOptions(max_steps=1)) == 5.0
    with pytest.raises(InputError, match="^decay_epochs must be positive, got 0$"):
        TrainOptions(max_steps=1, decay_epochs=0)


# ---- exact round trips with a perfect model ---------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_round_trip_is_byte_exact(tmp_path, k):
    path = write_file(tmp_path / "a.fa", FASTA)
    assert round_trip(path, tmp_path / "back.fa", k=k).decode() == FASTA
    assert round_trip(path, tmp_path / "back.fa", k=k, **TINY).decode() == FASTA


def test_bundled_sample_round_trips_exactly(tmp_path):
    codec = make_codec()
    pieces = list(codec.iter_windows(bundled("yeast_sample.fa.gz"), 512))
    frags = [f for p in pieces for f in p.side["records"]]
    titles = [f for f in frags if "title" in f]
    assert len(titles) == 4 and sum(f["length"] for f in frags) == 230218
    assert titles[0]["title"] == "NC_001133.9:1-60000 Saccharomyces cerevisiae S288C chromosome I, bases 1-60000 of 230218"
    assert all(len(p.windows) <= codec.max_piece_windows for p in pieces)
    assert pieces[0].side["file"] == {"format": "fasta", "k": 1, "newline": "\n"}
    assert pieces[-1].side["final_newline"] is True and "final_newline" not in pieces[0].side
    report = copy_through(codec, bundled("yeast_sample.fa.gz"), 512, tmp_path / "back.fa.gz")  # a .gz name gets gzip
    assert report == {}
    back = (tmp_path / "back.fa.gz").read_bytes()
    assert back[:2] == b"\x1f\x8b" and gzip.decompress(back) == gzip.decompress(bundled("yeast_sample.fa.gz").read_bytes())


def test_gzip_input_reads_like_plain_and_writes_plain_text(tmp_path):
    plain = read(write_file(tmp_path / "a.fa", FASTA), 5)
    packed = read(write_file(tmp_path / "a.fa.gz", FASTA, compress=True), 5)
    assert [w.tolist() for w in plain[0]] == [w.tolist() for w in packed[0]] and plain[1] == packed[1]
    assert round_trip(tmp_path / "a.fa.gz", tmp_path / "back.fasta").decode() == FASTA


def test_windows_line_endings_round_trip(tmp_path):
    crlf = FASTA.replace("\n", "\r\n")
    windows, frags, pieces = read(write_file(tmp_path / "a.fa", crlf), 8)
    assert pieces[0].side["file"]["newline"] == "\r\n" and frags[1]["title"] == "chr2\tsecond, with a tab"
    assert windows[0].tolist() == [1, 2, 3, 4, 1, 2, 3, 4]  # no stray \r in the sequence
    assert round_trip(tmp_path / "a.fa", tmp_path / "back.fa").decode() == crlf
    # a block boundary between the \r and the \n of a line break
    assert round_trip(tmp_path / "a.fa", tmp_path / "back.fa", block=2).decode() == crlf


@pytest.mark.parametrize("text", [
    ">a\nACGT\nAC",  # no final newline
    ">a desc  \nACGT\n\nAC\n\n\n",  # trailing spaces in the header, blank lines inside and after
    ">a\nACGTACGT\nACG\nACGTACGTAC\n",  # irregular line widths
    ">empty\n>b\nAC\n>also empty\n",  # empty records are kept
    ">\nACGT\n",  # an empty header
    ">a\nACGT\n>b",  # a last header without a line break
])
def test_unusual_layouts_round_trip(tmp_path, text):
    path = write_file(tmp_path / "a.fa", text)
    assert round_trip(path, tmp_path / "b.fa").decode() == text
    assert round_trip(path, tmp_path / "b.fa", seq_len=2, **TINY).decode() == text


def test_a_line_longer_than_a_read_block_streams_in_blocks(tmp_path):
    seq = "ACGTTGCAacgtNNNNRY" * 50
    text = f">one line\n{seq}\n>two\n{seq[:77]}"
    path = write_file(tmp_path / "a.fa", text)
    assert round_trip(path, tmp_path / "b.fa", seq_len=16, block=5, windows=3).decode() == text
    windows, _, _ = read(path, 16, block=5, windows=3)
    assert [w.tolist() for w in windows] == reference_windows([seq, seq[:77]], 1, 16)


# ---- pieces: records split over many pieces ------------------------------------------------------
def test_piece_side_information_layout(tmp_path):
    """The layout docs/format.md describes: the file in the first piece, fragments in file order, a line
    continuing into the next fragment, the final newline in the last piece."""
    _, _, pieces = read(write_file(tmp_path / "a.fa", ">r one\nACGTac\nGT\n>e\n"), 4, windows=1)
    assert [p.side for p in pieces] == [
        {"file": {"format": "fasta", "k": 1, "newline": "\n"},
         "records": [{"title": "r one", "length": 4, "lines": [[4, 1]], "open": 1}]},
        {"records": [{"length": 4, "lines": [[2, 2]], "lower": [0, 2, 2]},
                     {"title": "e", "length": 0, "lines": []}],
         "final_newline": True},
    ]
    assert [[w.tolist() for w in p.windows] for p in pieces] == [[[1, 2, 3, 4]], [[1, 2, 3, 4]]]

    _, _, pieces = read(write_file(tmp_path / "a.fq", "@r\nACGTAC\n+r\nIIII\n#!\n"), 4, windows=1)
    assert [p.side["records"] for p in pieces] == [
        [{"title": "r", "length": 4, "lines": [[4, 1]], "open": 1}],
        [{"length": 2, "lines": [[2, 1]], "plus": 1, "quality": "IIII#!", "quality_lines": [[4, 1], [2, 1]]}],
    ]
    assert pieces[0].side["file"] == {"format": "fastq", "k": 1, "newline": "\n"}


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("fastq", [False, True])
def test_a_record_split_over_many_pieces_round_trips_byte_exact(tmp_path, k, fastq):
    rng = np.random.default_rng(k)
    seq = "".join(rng.choice(list("ACGTACGTACGTNRacgtn"), size=1003))
    lines = [seq[i : i + 61] for i in range(0, len(seq), 61)]
    if fastq:
        quality = "".join(rng.choice(list("!#+5@IJ~"), size=len(seq)))
        text = "@long read\n" + "\n".join(lines) + "\n+\n" + "\n".join(quality[i : i + 70] for i in range(0, len(seq), 70))
        text += "\n@short\nACGT\n+short\n@@@@\n"
    else:
        text = ">long record\n" + "\n".join(lines) + "\n>short\nACGT\n"
    path = write_file(tmp_path / "a.fq", text)
    windows, frags, pieces = read(path, 5, k=k, **TINY)
    assert len(pieces) > 60 and all(len(p.windows) <= 1 for p in pieces)
    assert [f["title"] for f in frags if "title" in f] == ["long read" if fastq else "long record", "short"]
    assert "title" in frags[0] and sum("open" in f for f in frags) > 10  # lines of 61 cut at 5 k-base windows
    assert sum(f.get("length", 0) for f in frags) == 1007
    assert [w.tolist() for w in windows] == reference_windows([seq, "ACGT"], k, 5)
    assert [w.tolist() for w in windows] == [w.tolist() for w in read(path, 5, k=k)[0]]  # pieces do not change windows
    if fastq:
        assert "".join(f.get("quality", "") for f in frags) == quality + "@@@@" and sum("quality_open" in f for f in frags) > 10
    assert round_trip(path, tmp_path / "back", seq_len=5, k=k, **TINY).decode() == text
    assert round_trip(path, tmp_path / "back", seq_len=5, k=k).decode() == text


ID_CHARS = string.ascii_letters + string.digits + "._:|-"
DESCRIPTION = st.text(st.characters(blacklist_categories=("Cc", "Cs")) | st.just("\t"), max_size=30)
BASES = "ACGT" * 6 + "N" * 3 + "RYSWKMBDHVU"
LIMITS = st.fixed_dictionaries({"windows": st.sampled_from([1, 2, 64]), "size": st.sampled_from([1, 40, 1 << 20]),
                                "block": st.sampled_from([2, 3, 7, 1 << 20])})


@st.composite
def fasta_records(draw):
    ident = draw(st.text(ID_CHARS, min_size=1, max_size=12))
    description = draw(DESCRIPTION)
    runs = draw(st.lists(st.tuples(st.text(BASES, min_size=1, max_size=40), st.booleans()), max_size=6))
    seq = "".join(part.lower() if lower else part for part, lower in runs)
    width = draw(st.integers(1, 80))
    return (ident + (" " + description if description else "")), seq, width


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(fasta_records(), min_size=1, max_size=5), crlf=st.booleans(), final=st.booleans(),
       k=st.sampled_from([1, 3]), seq_len=st.integers(1, 50), limits=LIMITS)
def test_random_fasta_round_trips_byte_exact(tmp_path, records, crlf, final, k, seq_len, limits):
    if not any(seq for _, seq, _ in records):
        records[0] = (records[0][0], "a", records[0][2])  # a file needs at least one base
    lines = []
    for title, seq, width in records:
        lines.append(">" + title)
        lines += [seq[i : i + width] for i in range(0, len(seq), width)]
    newline = "\r\n" if crlf else "\n"
    text = newline.join(lines) + (newline if final else "")
    path = write_file(tmp_path / "r.fa", text)
    assert round_trip(path, tmp_path / "r_back.fa", seq_len, k=k, **limits).decode("utf-8") == text
    windows, _, _ = read(path, seq_len, k=k, **limits)
    assert [w.tolist() for w in windows] == reference_windows([seq for _, seq, _ in records], k, seq_len)


@st.composite
def fastq_records(draw):
    title = draw(st.text(ID_CHARS, min_size=1, max_size=12)) + draw(st.sampled_from(["", " 1:N:0:ACGT"]))
    seq = draw(st.text(BASES + "acgtn", min_size=1, max_size=60))
    quality = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=len(seq), max_size=len(seq)))
    width = draw(st.sampled_from([len(seq), 7]))  # one line (the norm) or wrapped
    plus = draw(st.sampled_from(["", title]))
    return title, seq, quality, width, plus


def fastq_text(records) -> str:
    lines = []
    for title, seq, quality, width, plus in records:
        lines += ["@" + title, *[seq[i : i + width] for i in range(0, len(seq), width)], "+" + plus,
                  *[quality[i : i + width] for i in range(0, len(quality), width)]]
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(fastq_records(), min_size=1, max_size=4), limits=LIMITS)
def test_random_fastq_round_trips_byte_exact_and_drops_to_fasta(tmp_path, records, limits):
    from Bio.SeqIO.QualityIO import FastqGeneralIterator  # the reference parser ('@' opening a quality line)

    text = fastq_text(records)
    path = write_file(tmp_path / "r.fq", text)
    assert round_trip(path, tmp_path / "r_back.fq", **limits).decode("ascii") == text
    windows, frags, _ = read(path, 7, **limits)
    with path.open() as handle:
        parsed = list(FastqGeneralIterator(handle))
    assert [f["title"] for f in frags if "title" in f] == [title for title, _, _ in parsed]
    assert [w.tolist() for w in windows] == reference_windows([seq for _, seq, _ in parsed], 1, 7)
    assert "".join(f.get("quality", "") for f in frags) == "".join(q for _, _, q in parsed)
    as_fasta = "".join(">" + title + "\n" + "".join(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
                       for title, seq, _, width, _ in records)
    assert round_trip(path, tmp_path / "r_back.fa", qualities="drop", **limits).decode("ascii") == as_fasta


def test_fastq_qualities_are_kept(tmp_path):
    windows, frags, pieces = read(write_file(tmp_path / "a.fq", FASTQ), 4)
    assert [len(w) for w in windows] == [4, 4, 1, 4]
    assert pieces[0].side["file"] == {"format": "fastq", "k": 1, "newline": "\n"}
    assert [(f["plus"], f["quality"], f["quality_lines"]) for f in frags] == [(0, "IIIIH#@@!", [[9, 1]]), (1, "@@@@", [[4, 1]])]
    report = copy_through(make_codec(), tmp_path / "a.fq", 4, tmp_path / "back.fq")
    assert report == {} and (tmp_path / "back.fq").read_text() == FASTQ


def test_drop_qualities_writes_fasta_and_says_so(tmp_path):
    codec = make_codec(qualities="drop")
    _, frags, pieces = read(write_file(tmp_path / "a.fq", FASTQ), 4, qualities="drop")
    assert pieces[0].side["file"] == {"format": "fastq", "k": 1, "newline": "\n", "qualities": "drop"}
    assert not any("quality" in f or "plus" in f for f in frags)
    report = copy_through(codec, tmp_path / "a.fq", 4, tmp_path / "back.fa")
    assert report == {"note": DROPPED_NOTE} and "qualities=drop" in DROPPED_NOTE and "--" not in DROPPED_NOTE
    assert (tmp_path / "back.fa").read_text() == ">read1 lane=1\nACGTNacgt\n>read2\nGGGA\n"
    # the header's encode-time settings alone also drop them (what decode passes on)
    report = copy_through(make_codec(), tmp_path / "a.fq", 4, tmp_path / "back2.fa", {"k": 1, "qualities": "drop"})
    assert report == {"note": DROPPED_NOTE} and (tmp_path / "back2.fa").read_text() == ">read1 lane=1\nACGTNacgt\n>read2\nGGGA\n"


def test_references_are_two_bits_per_base(tmp_path):
    assert make_codec().references(write_file(tmp_path / "a.fa", FASTA), 40) == {"2-bit packing of A/C/G/T": 2.0}


# ---- a model that gets bases wrong -------------------------------------------------------------
def write_pieces(codec: DnaCodec, pieces, windows: list[torch.Tensor], out) -> dict:
    """Write `pieces`' side information with other windows (a model's predictions), as decode does."""
    with out.open("wb") as file:
        writer = codec.open_writer(file, out.name, {"settings": codec.settings.state()})
        start = 0
        for piece in pieces:
            writer.write(windows[start : start + len(piece.windows)], piece.side)
            start += len(piece.windows)
        return writer.close()


@pytest.mark.parametrize("limits", [{}, TINY])
def test_mispredicted_bases_change_only_those_bases_and_keep_their_case(tmp_path, limits):
    text = FASTA + ">chr4 long\n" + ("acgtACGTAC" * 5 + "\n") * 4
    codec = make_codec(**limits)
    pieces = list(codec.iter_windows(write_file(tmp_path / "a.fa", text), 16))
    windows = [w for p in pieces for w in p.windows]
    flat = torch.cat(windows)
    flips = [0, 3, 17, 30, 35, 90, 200, 237]
    assert all(1 <= int(flat[i]) <= 4 for i in flips)  # flip plain A/C/G/T bases only
    predicted = flat.clone()
    predicted[flips] = predicted[flips] % 4 + 1  # A->C, C->G, G->T, T->A
    write_pieces(codec, pieces, list(torch.split(predicted, [len(w) for w in windows])), tmp_path / "back.fa")
    back = (tmp_path / "back.fa").read_text()
    assert [line for line in back.split("\n") if line.startswith(">")] == [h for h in text.split("\n") if h.startswith(">")]
    assert [len(line) for line in back.split("\n")] == [len(line) for line in text.split("\n")]
    before, after = "".join(sequences(text)), "".join(sequences(back))
    assert [i for i, (a, b) in enumerate(zip(before, after)) if a != b] == flips
    expected = list(before)
    for i in flips:
        shifted = {"A": "C", "C": "G", "G": "T", "T": "A"}[before[i].upper()]
        expected[i] = shifted.lower() if before[i].islower() else shifted
    assert after == "".join(expected)


def test_rare_iupac_letters_come_from_side_information_whatever_the_prediction(tmp_path):
    codec = make_codec()
    pieces = list(codec.iter_windows(write_file(tmp_path / "a.fa", ">x\nAkMA\n"), 8))
    write_pieces(codec, pieces, [torch.tensor([1, 1, 1, OTHER_ID])], tmp_path / "b.fa")  # k, M predicted as A; A as OTHER
    assert (tmp_path / "b.fa").read_text() == ">x\nAkMN\n"  # OTHER where no letter is known writes N


def test_writer_refuses_side_information_that_does_not_match(tmp_path):
    codec = make_codec()
    pieces = list(codec.iter_windows(write_file(tmp_path / "a.fa", FASTA), 8))
    (piece,) = pieces

    def write(codec, windows, side):
        with (tmp_path / "b.fa").open("wb") as file:
            writer = codec.open_writer(file, "b.fa", {"settings": codec.settings.state()})
            writer.write(windows, side)
            return writer.close()

    with pytest.raises(FormatError, match="describes 49 bases but 48 tokens were decoded"):
        write(codec, piece.windows[:-1], piece.side)
    with pytest.raises(FormatError, match="k=1 tokens but this dna domain uses k=3"):
        write(make_codec(k=3), piece.windows, piece.side)
    with pytest.raises(FormatError, match="malformed"):
        write(codec, piece.windows, {"records": piece.side["records"]})  # no "file" in the first piece
    with pytest.raises(FormatError, match="line lengths do not add up"):
        write(codec, piece.windows, {**piece.side, "records": [{**piece.side["records"][0], "lines": [[9, 1]]}]
                                                              + piece.side["records"][1:]})
    (fastq,) = codec.iter_windows(write_file(tmp_path / "a.fq", FASTQ), 8)
    first, second = fastq.side["records"]
    with pytest.raises(FormatError, match="qualities do not match the record lengths"):
        write(codec, fastq.windows, {**fastq.side, "records": [{**first, "quality": "II", "quality_lines": [[2, 1]]}, second]})
    with pytest.raises(FormatError, match="malformed"):
        write(codec, fastq.windows, {**fastq.side, "records": [{**first, "quality": "IIIIIIIIé"}, second]})


# ---- format-1 side information ---------------------------------------------------------------------
# The side blocks of tests/data/legacy_v1/input.sqz (FASTA) and input_dna.sqz (FASTQ), as format 1 kept them.
LEGACY_FASTA = {"exact": [[], []], "final_newline": True, "format": "fasta", "k": 1, "lengths": [300, 70],
                "lines": [[[60, 5]], [[70, 1]]], "lower": [[0, 63, 237], []], "newline": "\n",
                "qualities_dropped": False, "source_format": "fasta", "titles": ["rec1 first", "rec2"]}
LEGACY_FASTQ = {"exact": [[], [[4, 1, "R"], [5, 1, "Y"]]], "final_newline": True, "format": "fastq", "k": 1,
                "lengths": [16, 10], "lines": [[[16, 1]], [[10, 1]]], "lower": [[], [0, 4, 6]], "newline": "\n",
                "plus": [0, 1], "qualities": "eNrz9IQBZRDwVIQDAFE1BR0=", "qualities_dropped": False,
                "quality_lines": [[[16, 1]], [[10, 1]]], "source_format": "fastq", "titles": ["r1 first read", "r2"]}
LEGACY = Path(__file__).parent / "data" / "legacy_v1"


def write_legacy(codec: DnaCodec, side: dict, windows: list[torch.Tensor], out) -> dict:
    pieces = list(codec.legacy_pieces(side, [len(w) for w in windows]))
    assert sum(count for count, _ in pieces) == len(windows)
    with out.open("wb") as file:
        writer = codec.open_writer(file, out.name, {"settings": codec.settings.state()})
        start = 0
        for count, piece_side in pieces:
            writer.write(windows[start : start + count], piece_side)
            start += count
        return writer.close()


@pytest.mark.parametrize("side,name,seq_len", [(LEGACY_FASTA, "input.fa", 16), (LEGACY_FASTQ, "input.fastq", 8)])
@pytest.mark.parametrize("max_windows", [1, 3, 64])
def test_format1_side_information_becomes_pieces_the_writer_understands(tmp_path, side, name, seq_len, max_windows):
    source = LEGACY / name
    windows = read(source, seq_len)[0]  # the true tokens: what a perfect model decodes
    codec = make_codec(windows=max_windows)
    pieces = list(codec.legacy_pieces(side, [len(w) for w in windows]))
    assert pieces[0][1]["file"] == {"format": side["format"], "k": 1, "newline": "\n"}
    assert all(count <= max_windows for count, _ in pieces) and pieces[-1][1]["final_newline"] is True
    assert write_legacy(codec, side, windows, tmp_path / name) == {}
    assert (tmp_path / name).read_bytes() == source.read_bytes()


def test_format1_dropped_qualities_still_write_fasta_with_the_note(tmp_path):
    side = {**LEGACY_FASTQ, "format": "fasta", "qualities_dropped": True}
    for key in ("plus", "qualities", "quality_lines"):
        side.pop(key)
    windows = [torch.tensor([1, 2, 3, 4, 1, 2, 3, 4]), torch.tensor([5, 5, 1, 2, 3, 4, 1, 2]),
               torch.tensor([1, 2, 3, 4, 6, 6, 1, 2]), torch.tensor([3, 4])]
    assert write_legacy(make_codec(), side, windows, tmp_path / "b.fa") == {"note": DROPPED_NOTE}
    assert (tmp_path / "b.fa").read_text() == ">r1 first read\nACGTACGTNNACGTAC\n>r2\nacgtRYACGT\n"


def test_format1_side_information_that_does_not_match_is_refused():
    with pytest.raises(FormatError, match="does not match the window lengths"):
        list(make_codec().legacy_pieces(LEGACY_FASTA, [16] * 18 + [12] + [16] * 4 + [5]))
    with pytest.raises(FormatError, match="malformed"):
        list(make_codec().legacy_pieces({**LEGACY_FASTA, "titles": []}, [16] * 18 + [12] + [16] * 4 + [6]))


# ---- bad input -----------------------------------------------------------------------------------
BAD_INPUT = [
    (b"", "is empty"),
    (b"  \n\n", "only whitespace"),
    (b"Just some prose.\nNot a genome.\n", "first line should start with '>' or '@', not 'Just some prose.'"),
    (b"\xef\xbb\xbf>x\nACGT\n", "first line should start with '>' or '@'"),  # a byte-order mark
    (b"\n>x\nACGT\n", "first line should start with '>' or '@', not ''"),
    (b"\x00\x01\x02binary", "binary data"),
    (b">x\nAC\xff\xfeGT\n", "invalid UTF-8 at byte 5"),
    (b">x \xff\nACGT\n", "invalid UTF-8 at byte 3"),
    (b">x\n\n>y\n", "its 2 record\\(s\\) hold no bases"),
    (b">x\nACGT\n1 ACGT\n", r"line 3: '1' in record 'x' is not an IUPAC nucleotide code; numbered"),
    (b">x\nACGT*\n", r"line 2: '\*' in record 'x' .* stop codon"),
    (b">x\nAC--GT\n", "alignment gaps are not supported"),
    (b">x\nACGT\nAC GT\n", r"line 3: ' ' .*spaces or tabs"),
    (b">x\nAC\tGT\n", "spaces or tabs"),
    (b">x\nACGT \n", "spaces or tabs"),
    (b">prot\nMEEPQSDPSV\n", r"'E' in record 'prot' .*protein"),
    (b">x\nACGTXXXX\n", r"'X' in record 'x' is not an IUPAC nucleotide code"),
    (">x\nACGé\n".encode(), r"line 2: 'é' in record 'x' is not an IUPAC nucleotide code; only"),
    (b">x\r\nACGT\nACGT\r\n", "mixes Windows"),
    (b">x\rACGT\r", "carriage return"),
    (b">x\nAC\rGT\n", "carriage return"),
    (b"@r\nACGT\n+\nIII\n", "not valid FASTQ: Lengths of sequence and quality values differs for r \\(4 and 3\\)"),
    (b"@r\nACGT\n+\nIIIII\n@s\nA\n+\nI\n", "not valid FASTQ: Lengths of sequence and quality values differs"),
    (b"@r\nACGT\n+s\nIIII\n", "not valid FASTQ: Sequence and quality captions differ"),
    (b"@r\nACGT\n", "not valid FASTQ: End of file without quality information"),
    (b"@r\n", "not valid FASTQ: Unexpected end of file"),
    (b"@r\nACGT\n+\n", "not valid FASTQ: Unexpected end of file"),
    (b"@r\nACGT\n+\nII I\n", r"line 4: the quality of record 'r' has characters outside"),
    (b"@r\nAC-T\n+\nIIII\n", "alignment gaps"),
    (bz2.compress(b">x\nACGT\n"), "bzip2-compressed"),
    (lzma.compress(b">x\nACGT\n"), "xz-compressed"),
    (b"\x1f\x8b\x08\x00garbage", "damaged gzip"),
    (gzip.compress(b">x\nACGT\n", mtime=0)[:-6], "damaged gzip"),  # truncated
    (gzip.compress(b"", mtime=0), "only whitespace"),
]


@pytest.mark.parametrize("data,message", BAD_INPUT)
def test_bad_input_raises_one_clear_input_error(tmp_path, data, message):
    path = tmp_path / "bad.fa"
    path.write_bytes(data)
    for options in ({}, {"block": 2, "windows": 1, "size": 1}):
        with pytest.raises(InputError, match=message) as info:
            list(make_codec(**options).iter_windows(path, 16))
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_file_directory_and_bad_seq_len_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(make_codec().iter_windows(tmp_path / "nope.fa", 16))
    with pytest.raises(InputError, match="is a directory"):
        list(make_codec().iter_windows(tmp_path, 16))
    with pytest.raises(InputError, match="seq_len must be at least 1"):
        list(make_codec().iter_windows(write_file(tmp_path / "a.fa", FASTA), 0))


# ---- memory --------------------------------------------------------------------------------------
def test_a_20_mbp_fasta_streams_in_bounded_memory(tmp_path):
    """Read and written piece by piece: Python's peak allocation stays far below the file size."""
    rng = np.random.default_rng(0)
    path = tmp_path / "big.fa"
    with path.open("wb") as handle:
        handle.write(b">chrBig generated, soft-masked\n")
        for _ in range(20):  # 1 Mbp at a time in 60-column lines, its first 10 kbp soft-masked
            block = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, size=16_667 * 60)]
            block[:10_000] |= 0x20
            lines = np.concatenate([block.reshape(-1, 60), np.full((len(block) // 60, 1), ord("\n"), np.uint8)], axis=1)
            handle.write(lines.tobytes())
    size = path.stat().st_size
    assert size > 20_000_000
    tracemalloc.start()
    try:
        copy_through(make_codec(), path, 512, tmp_path / "back.fa")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 10, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
    assert filecmp.cmp(path, tmp_path / "back.fa", shallow=False)


# ---- loss and metrics ---------------------------------------------------------------------------
def logits_for(ids: list[list[int]], vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float() * 5.0  # (B, N, V)


def test_metrics_on_a_hand_made_batch():
    objective = DnaDomain(DnaSettings(k=1)).objective
    assert isinstance(objective, DnaObjective) and objective.metric_name == "base_accuracy"
    # A C G T N OTHER | T T (pad)
    target = torch.tensor([[1, 2, 3, 4, 5, 6], [4, 4, 0, 0, 0, 0]])
    mask = target != 0
    output = logits_for([[1, 2, 4, 4, 1, 1], [4, 2, 0, 0, 0, 0]], 7)  # wrong: G->T, N->A, T->C; OTHER->A
    totals = objective.totals(output, target, mask)
    assert totals == {"correct_bases": 5.0, "bases": 8.0, "correct_acgt": 4.0, "acgt": 6.0,
                      "correct_tokens": 4.0, "tokens": 8.0}
    values = objective.values(totals)
    assert values == {"base_accuracy": 5 / 8, "acgt_accuracy": 4 / 6, "token_accuracy": 4 / 8}
    assert objective.prediction(output)[1, 2:].tolist() == [1, 1, 1, 1]  # padding is never predicted as PAD
    loss = objective.loss(output, target, mask)
    assert loss.shape == () and 0 < float(loss) < 6
    accumulator = objective.accumulator()
    accumulator.add(output, target, mask)
    accumulator.add(output, target, mask)
    assert accumulator.values() == values


def test_kmer_metrics_count_bases_within_tokens():
    objective = DnaDomain(DnaSettings(k=3)).objective
    acg, acc, ttt = 2 + 0b000110, 2 + 0b000101, 2 + 0b111111
    target = torch.tensor([[acg, ttt, MIXED_ID]])
    output = logits_for([[acc, MIXED_ID, acg]], 66)  # 2 of 3 bases, 0 of 3, MIXED restored exactly
    values = objective.values(objective.totals(output, target, target != 0))
    assert values == {"base_accuracy": 5 / 9, "acgt_accuracy": 2 / 6, "token_accuracy": 0.0}


def test_render_shows_bases_and_marks_side_information():
    assert DnaDomain(DnaSettings(k=1)).render(torch.tensor([1, 2, 3, 4, 5, OTHER_ID, 1])) == "ACGTN?A"
    assert DnaDomain(DnaSettings(k=3)).render(torch.tensor([2 + 0b000110, MIXED_ID])) == "ACG???"
    assert DnaDomain(DnaSettings(k=1)).render(torch.ones(200, dtype=torch.long), limit=20) == "A" * 17 + "..."


# ---- end to end: train, encode to .sqz, decode ----------------------------------------------------
def test_fit_encode_decode_keeps_the_file_structure(tmp_path):
    from seqcompress.api import fit
    from seqcompress.compress import decode_file, encode_file
    from seqcompress.model import load_model
    from seqcompress.train import TrainOptions

    summary = fit(DnaDomain(DnaSettings(k=1)), [bundled("yeast_sample.fa.gz")], tmp_path / "model", seq_len=64, ratio=0.5,
                  model_options={"d_model": 32, "heads": 2, "layers": 1, "ffn_dim": 64, "latent_dim": 32},
                  options=TrainOptions(epochs=None, max_steps=5))
    assert summary["metric"] == "base_accuracy" and 0 <= summary["value"] <= 1
    assert summary["train_windows"] + summary["held_out_windows"] == 3599  # 3 records of 938 windows of 64, one of 785

    text = FASTA + ">chr4 longer, lower-case start\n" + ("acgtaCGTACGTTGCA" * 4 + "\n") * 3 + "ACG\n"
    source = write_file(tmp_path / "in.fa", text)
    model, meta = load_model(tmp_path / "model")
    domain = DnaDomain.from_state(meta["domain"])
    report = encode_file(model, meta, domain, source, tmp_path / "in.sqz")
    assert report["symbols"] == sum(len(s) for s in sequences(text))
    decode_file(model, meta, domain, tmp_path / "in.sqz", tmp_path / "back.fasta")
    back = (tmp_path / "back.fasta").read_text()
    shape = [line if line.startswith(">") else [c.islower() for c in line] for line in text.split("\n")]
    assert [line if line.startswith(">") else [c.islower() for c in line] for line in back.split("\n")] == shape
    assert set("".join(sequences(back)).upper()) <= set("ACGTNRYKMSW")

    fastq = write_file(tmp_path / "in.fq", FASTQ)
    report = encode_file(model, meta, domain.with_settings(qualities="drop"), fastq, tmp_path / "fq.sqz")
    report = decode_file(model, meta, domain, tmp_path / "fq.sqz", tmp_path / "back.fa")
    assert report["note"] == DROPPED_NOTE
    assert [line for line in (tmp_path / "back.fa").read_text().split("\n") if line.startswith(">")] == [">read1 lane=1", ">read2"]


def test_cli_fit_encode_decode_on_a_fasta_keeps_ids_lengths_and_layout(tmp_path):
    """The issue's headline commands, through the CLI, on the bundled yeast sample."""
    runner = CliRunner()
    fasta = tmp_path / "yeast.fasta"
    fasta.write_bytes(gzip.decompress(bundled("yeast_sample.fa.gz").read_bytes()))
    tiny = ["-D", "k=1", "--seq-len", "64", "--d-model", "32", "--heads", "2", "--layers", "1", "--max-steps", "3"]
    r = runner.invoke(app, ["fit", "--domain", "dna", str(fasta), "-o", str(tmp_path / "m"), *tiny, "--json"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["encode", "-m", str(tmp_path / "m"), str(fasta), "-o", str(tmp_path / "y.sqz"), "--json"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["reference_bits_per_symbol"] == {"2-bit packing of A/C/G/T": 2.0}
    assert report["symbols"] == 230218 and report["side_bytes"] > 0
    r = runner.invoke(app, ["decode", str(tmp_path / "y.sqz"), "-m", str(tmp_path / "m"), "-o", str(tmp_path / "back.fasta")])
    assert r.exit_code == 0, r.stderr
    original = fasta.read_text().splitlines()
    back = (tmp_path / "back.fasta").read_text().splitlines()
    assert [line for line in back if line.startswith(">")] == [line for line in original if line.startswith(">")]
    assert [len(line) for line in back] == [len(line) for line in original]
    r = runner.invoke(app, ["evaluate", "-m", str(tmp_path / "m"), str(fasta), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["metric"] == "base_accuracy"
