"""DNA domain: exact FASTA/FASTQ round trips, windows per record, side information, bad input, metrics."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from typer.testing import CliRunner

from seqcompress.cli.main import app
from seqcompress.domains.dna import MIXED_ID, OTHER_ID, DnaDomain, sample_path
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


def write_file(path, text: str, compress: bool = False):
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def round_trip(domain: DnaDomain, path, out, seq_len: int = 7) -> bytes:
    """What `write` makes of the true token windows (a perfect model)."""
    windows, side = domain.read(path, seq_len)
    domain.write(out, windows, side)
    return out.read_bytes()


def sequences(text: str) -> list[str]:
    """The sequence of each FASTA record, line breaks removed."""
    return ["".join(block.split("\n")[1:]) for block in text.split(">")[1:]]


# ---- tokens and windows ---------------------------------------------------------------------
def test_single_nucleotide_tokens_fold_case_and_lump_rare_iupac(tmp_path):
    windows, side = DnaDomain().read(write_file(tmp_path / "a.fa", ">x\nACGTNRacgtnyU\n"), 64)
    assert windows[0].tolist() == [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 6]
    assert windows[0].dtype == torch.long
    assert side["exact"] == [[[5, 1, "R"], [11, 1, "Y"], [12, 1, "U"]]]
    assert side["lower"] == [[6, 6, 1]]  # ACGTNR upper, acgtny lower, U upper


def test_case_runs_start_with_an_upper_case_run(tmp_path):
    _, side = DnaDomain().read(write_file(tmp_path / "a.fa", ">x\nacGTa\n>y\nACGT\n"), 64)
    assert side["lower"] == [[0, 2, 2, 1], []]


def test_windows_never_cross_records_and_the_last_of_each_is_shorter(tmp_path):
    text = "".join(f">{name}\n{base * n}\n" for name, base, n in [("a", "A", 10), ("b", "C", 25), ("c", "G", 7), ("d", "T", 16)])
    path = write_file(tmp_path / "a.fa", text)
    windows, side = DnaDomain().read(path, 8)
    assert [len(w) for w in windows] == [8, 2, 8, 8, 8, 1, 7, 8, 8]
    assert [set(w.tolist()) for w in windows] == [{1}] * 2 + [{2}] * 4 + [{3}] + [{4}] * 2
    assert side["lengths"] == [10, 25, 7, 16]


def test_kmer_windows_count_tokens_and_keep_the_partial_last_kmer(tmp_path):
    domain = DnaDomain(k=3)
    windows, side = domain.read(write_file(tmp_path / "a.fa", ">a\nACGTA\n>b\nAAANAAATTT\n"), 2)
    acg, aaa, att = 2 + 0b000110, 2 + 0, 2 + 0b001111  # base-4 digits A=0 C=1 G=2 T=3, first base first
    assert [w.tolist() for w in windows] == [[acg, MIXED_ID], [aaa, MIXED_ID], [att, MIXED_ID]]
    assert side["exact"] == [[[3, 1, "TA"]], [[3, 1, "NAA"], [9, 1, "T"]]]
    assert domain.model_fields() == {"vocab_size": 2 + 64}


def test_state_restores_the_tokenization():
    domain = DnaDomain.from_state({**DnaDomain(k=6).state(), "training": {"seed": 0}})
    assert (domain.k, domain.vocab_size, domain.drop_qualities) == (6, 4098, False)
    assert DnaDomain().state() == {"name": "dna", "k": 1, "vocab_size": 7, "tokens": "PAD A C G T N OTHER"}
    with pytest.raises(InputError, match="k-mer size"):
        DnaDomain(k=7)


# ---- exact round trips with a perfect model ---------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_round_trip_is_byte_exact(tmp_path, k):
    path = write_file(tmp_path / "a.fa", FASTA)
    assert round_trip(DnaDomain(k=k), path, tmp_path / "back.fa").decode() == FASTA


def test_bundled_sample_round_trips_exactly(tmp_path):
    domain = DnaDomain()
    windows, side = domain.read(sample_path(), 512)
    assert len(windows) == 453 and side["lengths"] == [60000, 60000, 60000, 50218]
    assert side["titles"][0] == "NC_001133.9:1-60000 Saccharomyces cerevisiae S288C chromosome I, bases 1-60000 of 230218"
    assert side["lines"][3] == [[60, 836], [58, 1]]
    domain.write(tmp_path / "back.fa.gz", windows, side)  # a .gz output name gets gzip
    assert gzip.decompress((tmp_path / "back.fa.gz").read_bytes()) == gzip.decompress(sample_path().read_bytes())


def test_gzip_input_reads_like_plain_and_writes_plain_text(tmp_path):
    domain = DnaDomain()
    plain = domain.read(write_file(tmp_path / "a.fa", FASTA), 5)
    packed = domain.read(write_file(tmp_path / "a.fa.gz", FASTA, compress=True), 5)
    assert [w.tolist() for w in plain[0]] == [w.tolist() for w in packed[0]] and plain[1] == packed[1]
    assert round_trip(domain, tmp_path / "a.fa.gz", tmp_path / "back.fasta").decode() == FASTA


def test_windows_line_endings_round_trip(tmp_path):
    crlf = FASTA.replace("\n", "\r\n")
    windows, side = DnaDomain().read(write_file(tmp_path / "a.fa", crlf), 8)
    assert side["newline"] == "\r\n" and side["titles"][1] == "chr2\tsecond, with a tab"
    assert windows[0].tolist() == [1, 2, 3, 4, 1, 2, 3, 4]  # no stray \r in the sequence
    assert round_trip(DnaDomain(), tmp_path / "a.fa", tmp_path / "back.fa").decode() == crlf


@pytest.mark.parametrize("text", [
    ">a\nACGT\nAC",  # no final newline
    ">a desc  \nACGT\n\nAC\n\n\n",  # trailing spaces in the header, blank lines inside and after
    ">a\nACGTACGT\nACG\nACGTACGTAC\n",  # irregular line widths
    ">empty\n>b\nAC\n>also empty\n",  # empty records are kept
    ">\nACGT\n",  # an empty header
])
def test_unusual_layouts_round_trip(tmp_path, text):
    assert round_trip(DnaDomain(), write_file(tmp_path / "a.fa", text), tmp_path / "b.fa").decode() == text


ID_CHARS = string.ascii_letters + string.digits + "._:|-"
DESCRIPTION = st.text(st.characters(blacklist_categories=("Cc", "Cs")) | st.just("\t"), max_size=30)
BASES = "ACGT" * 6 + "N" * 3 + "RYSWKMBDHVU"


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
       k=st.sampled_from([1, 3]), seq_len=st.integers(1, 50))
def test_random_fasta_round_trips_byte_exact(tmp_path, records, crlf, final, k, seq_len):
    if not any(seq for _, seq, _ in records):
        records[0] = (records[0][0], "a", records[0][2])  # a file needs at least one base
    lines = []
    for title, seq, width in records:
        lines.append(">" + title)
        lines += [seq[i : i + width] for i in range(0, len(seq), width)]
    newline = "\r\n" if crlf else "\n"
    text = newline.join(lines) + (newline if final else "")
    path = write_file(tmp_path / "r.fa", text)
    assert round_trip(DnaDomain(k=k), path, tmp_path / "r_back.fa", seq_len).decode("utf-8") == text


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
@given(records=st.lists(fastq_records(), min_size=1, max_size=4))
def test_random_fastq_round_trips_byte_exact_and_drops_to_fasta(tmp_path, records):
    text = fastq_text(records)
    path = write_file(tmp_path / "r.fq", text)
    assert round_trip(DnaDomain(), path, tmp_path / "r_back.fq").decode("ascii") == text
    as_fasta = "".join(">" + title + "\n" + "".join(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
                       for title, seq, _, width, _ in records)
    assert round_trip(DnaDomain(drop_qualities=True), path, tmp_path / "r_back.fa").decode("ascii") == as_fasta


def test_fastq_qualities_are_kept_compressed(tmp_path):
    domain = DnaDomain()
    windows, side = domain.read(write_file(tmp_path / "a.fq", FASTQ), 4)
    assert [len(w) for w in windows] == [4, 4, 1, 4]
    assert side["format"] == "fastq" and side["plus"] == [0, 1] and side["quality_lines"] == [[[9, 1]], [[4, 1]]]
    assert isinstance(side["qualities"], str)
    domain.write(tmp_path / "back.fq", windows, side)
    assert (tmp_path / "back.fq").read_text() == FASTQ


def test_drop_qualities_writes_fasta_and_says_so(tmp_path):
    domain = DnaDomain(drop_qualities=True)
    windows, side = domain.read(write_file(tmp_path / "a.fq", FASTQ), 4)
    assert (side["format"], side["source_format"], side["qualities_dropped"]) == ("fasta", "fastq", True)
    assert "qualities" not in side
    domain.write(tmp_path / "back.fa", windows, side)
    assert (tmp_path / "back.fa").read_text() == ">read1 lane=1\nACGTNacgt\n>read2\nGGGA\n"


# ---- a model that gets bases wrong -------------------------------------------------------------
def test_mispredicted_bases_change_only_those_bases_and_keep_their_case(tmp_path):
    text = FASTA + ">chr4 long\n" + ("acgtACGTAC" * 5 + "\n") * 4
    domain = DnaDomain()
    windows, side = domain.read(write_file(tmp_path / "a.fa", text), 16)
    flat = torch.cat(windows)
    flips = [0, 3, 17, 30, 35, 90, 200, 237]
    assert all(1 <= int(flat[i]) <= 4 for i in flips)  # flip plain A/C/G/T bases only
    predicted = flat.clone()
    predicted[flips] = predicted[flips] % 4 + 1  # A->C, C->G, G->T, T->A
    domain.write(tmp_path / "back.fa", list(torch.split(predicted, [len(w) for w in windows])), side)
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
    domain = DnaDomain()
    windows, side = domain.read(write_file(tmp_path / "a.fa", ">x\nAkMA\n"), 8)
    domain.write(tmp_path / "b.fa", [torch.tensor([1, 1, 1, OTHER_ID])], side)  # k, M predicted as A; A as OTHER
    assert (tmp_path / "b.fa").read_text() == ">x\nAkMN\n"  # OTHER where no letter is known writes N


def test_write_refuses_side_information_that_does_not_match(tmp_path):
    domain = DnaDomain()
    windows, side = domain.read(write_file(tmp_path / "a.fa", FASTA), 8)
    with pytest.raises(FormatError, match="tokens were decoded"):
        domain.write(tmp_path / "b.fa", windows[:-1], side)
    with pytest.raises(FormatError, match="k=1 tokens but this dna domain uses k=3"):
        DnaDomain(k=3).write(tmp_path / "b.fa", windows, side)
    with pytest.raises(FormatError, match="malformed"):
        domain.write(tmp_path / "b.fa", windows, {**side, "titles": []})
    assert not (tmp_path / "b.fa").exists()


# ---- bad input -----------------------------------------------------------------------------------
BAD_INPUT = [
    (b"", "is empty"),
    (b"  \n\n", "only whitespace"),
    (b"Just some prose.\nNot a genome.\n", "first line should start with '>' or '@'"),
    (b"\xef\xbb\xbf>x\nACGT\n", "first line should start with '>' or '@'"),  # a byte-order mark
    (b"\n>x\nACGT\n", "first line should start with '>' or '@'"),
    (b"\x00\x01\x02binary", "binary data"),
    (b">x\nAC\xff\xfeGT\n", "invalid UTF-8"),
    (b">x\n\n>y\n", "hold no bases"),
    (b">x\nACGT\n1 ACGT\n", r"line 3: '1' in record 'x' is not an IUPAC nucleotide code; numbered"),
    (b">x\nACGT*\n", r"line 2: '\*' in record 'x' .* stop codon"),
    (b">x\nAC--GT\n", "alignment gaps are not supported"),
    (b">x\nACGT\nAC GT\n", r"line 3: ' ' .*spaces or tabs"),
    (b">x\nAC\tGT\n", "spaces or tabs"),
    (b">prot\nMEEPQSDPSV\n", r"'E' in record 'prot' .*protein"),
    (b">x\nACGTXXXX\n", r"'X' in record 'x' is not an IUPAC nucleotide code"),
    (b">x\r\nACGT\nACGT\r\n", "mixes Windows"),
    (b">x\rACGT\r", "carriage return"),
    (b"@r\nACGT\n+\nIII\n", "not valid FASTQ: Lengths of sequence and quality values differs"),
    (b"@r\nACGT\n+s\nIIII\n", "not valid FASTQ: Sequence and quality captions differ"),
    (b"@r\nACGT\n", "not valid FASTQ: End of file without quality information"),
    (b"@r\nACGT\n+\nII I\n", r"line 4: the quality of record 'r' has characters outside"),
    (b"@r\nAC-T\n+\nIIII\n", "alignment gaps"),
    (bz2.compress(b">x\nACGT\n"), "bzip2-compressed"),
    (lzma.compress(b">x\nACGT\n"), "xz-compressed"),
    (b"\x1f\x8b\x08\x00garbage", "damaged gzip"),
]


@pytest.mark.parametrize("data,message", BAD_INPUT)
def test_bad_input_raises_one_clear_input_error(tmp_path, data, message):
    path = tmp_path / "bad.fa"
    path.write_bytes(data)
    with pytest.raises(InputError, match=message) as info:
        DnaDomain().read(path, 16)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_file_and_directory_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        DnaDomain().read(tmp_path / "nope.fa", 16)
    with pytest.raises(InputError, match="is a directory"):
        DnaDomain().read(tmp_path, 16)


# ---- loss and metrics ---------------------------------------------------------------------------
def logits_for(ids: list[list[int]], vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float() * 5.0  # (B, N, V)


def test_metrics_on_a_hand_made_batch():
    domain = DnaDomain()
    # A C G T N OTHER | T T (pad)
    target = torch.tensor([[1, 2, 3, 4, 5, 6], [4, 4, 0, 0, 0, 0]])
    mask = target != 0
    output = logits_for([[1, 2, 4, 4, 1, 1], [4, 2, 0, 0, 0, 0]], 7)  # wrong: G->T, N->A, T->C; OTHER->A
    totals = domain.metric_totals(output, target, mask)
    assert totals == {"correct_bases": 5.0, "bases": 8.0, "correct_acgt": 4.0, "acgt": 6.0,
                      "correct_tokens": 4.0, "tokens": 8.0}
    values = domain.metric_values(totals)
    assert values == {"base_accuracy": 5 / 8, "acgt_accuracy": 4 / 6, "token_accuracy": 4 / 8}
    assert domain.prediction(output)[1, 2:].tolist() == [1, 1, 1, 1]  # padding is never predicted as PAD
    loss = domain.loss(output, target, mask)
    assert loss.shape == () and 0 < float(loss) < 6


def test_kmer_metrics_count_bases_within_tokens():
    domain = DnaDomain(k=3)
    acg, acc, ttt = 2 + 0b000110, 2 + 0b000101, 2 + 0b111111
    target = torch.tensor([[acg, ttt, MIXED_ID]])
    output = logits_for([[acc, MIXED_ID, acg]], domain.vocab_size)  # 2 of 3 bases, 0 of 3, MIXED restored exactly
    values = domain.metric_values(domain.metric_totals(output, target, target != 0))
    assert values == {"base_accuracy": 5 / 9, "acgt_accuracy": 2 / 6, "token_accuracy": 0.0}


def test_render_shows_bases_and_marks_side_information():
    assert DnaDomain().render(torch.tensor([1, 2, 3, 4, 5, OTHER_ID, 1])) == "ACGTN?A"
    assert DnaDomain(k=3).render(torch.tensor([2 + 0b000110, MIXED_ID])) == "ACG???"
    assert DnaDomain().render(torch.ones(200, dtype=torch.long), limit=20) == "A" * 17 + "..."


# ---- end to end: train, encode to .sqz, decode ----------------------------------------------------
def test_fit_encode_decode_keeps_the_file_structure(tmp_path):
    from seqcompress.api import fit
    from seqcompress.compress import decode_file, encode_file
    from seqcompress.model import load_model
    from seqcompress.train import TrainOptions

    summary = fit(DnaDomain(), [sample_path()], tmp_path / "model", seq_len=64, ratio=0.5,
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


def test_cli_fit_encode_decode_on_a_fasta_keeps_ids_lengths_and_layout(tmp_path):
    """The issue's headline commands, through the CLI, on the bundled yeast sample."""
    runner = CliRunner()
    fasta = tmp_path / "yeast.fasta"
    fasta.write_bytes(gzip.decompress(sample_path().read_bytes()))
    tiny = ["--seq-len", "64", "--d-model", "32", "--heads", "2", "--layers", "1", "--max-steps", "3"]
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
