"""Text domain: the shipped WordPiece vocabulary, document splitting, streamed windows and pieces, the writer,
format-1 side information, and memory bounded by constants rather than by the file."""

from __future__ import annotations

import io
import random
import tracemalloc
from pathlib import Path

import pytest
import torch

import seqcompress.domains.text as text_module
from seqcompress.domain import copy_through, decode_utf8, split_windows
from seqcompress.domains import get_domain
from seqcompress.domains.text import SEP_ID, TextDomain, TextSettings, detokenize, split_documents, tokenizer
from seqcompress.errors import FormatError, InputError


@pytest.fixture(scope="module")
def text():
    return TextDomain()


@pytest.fixture
def small(monkeypatch):
    """Tiny blocks, batches, pieces and slices, so that small files cross every boundary."""
    for name, value in [("BLOCK_SIZE", 7), ("DOCUMENT_SLICE", 40), ("BATCH_CHARS", 50), ("WINDOWS_PER_PIECE", 3),
                        ("PIECE_TOKENS", 1 << 18), ("WRITER_SLICE", 5), ("_LONG_RUN", 3)]:
        monkeypatch.setattr(text_module, name, value)


# ---- the format-1 implementation, kept here as the reference the streamed code must match ----------------
def whole_file_read(path, seq_len):
    """What `TextDomain.read` returned before streaming: windows of the whole file's stream, document counts."""
    documents = split_documents(decode_utf8(path, path.read_bytes(), "text").removeprefix("\ufeff"))
    ids, counts = [], []
    for doc_ids in tokenizer()(documents, add_special_tokens=False)["input_ids"]:
        ids += [*doc_ids, SEP_ID]
        counts.append(len(doc_ids))
    return split_windows(torch.tensor(ids, dtype=torch.int64), seq_len), counts


def whole_file_write(windows, counts) -> bytes:
    """What `TextDomain.write` wrote before streaming."""
    ids = torch.cat(windows).tolist() if windows else []
    docs, start = [], 0
    for count in counts:
        docs.append(detokenize([t for t in ids[start : start + count] if t not in (SEP_ID, 0, 101)]))
        start += count + 1
    return ("\n\n".join(docs) + "\n").encode("utf-8")


def streamed(text, path, seq_len):
    pieces = list(text.codec.iter_windows(path, seq_len))
    return [w for p in pieces for w in p.windows], [c for p in pieces for c in p.side["documents"]], pieces


def assert_matches_whole_file(text, path, seq_len, tmp_path):
    windows, counts, pieces = streamed(text, path, seq_len)
    old_windows, old_counts = whole_file_read(path, seq_len)
    assert [w.tolist() for w in windows] == [w.tolist() for w in old_windows]
    assert all(w.dtype == torch.int64 for w in windows)
    assert counts == old_counts
    assert all(len(p.windows) <= text_module.WINDOWS_PER_PIECE for p in pieces)
    out = tmp_path / "back.txt"
    assert copy_through(text.codec, path, seq_len, out) == {}
    assert out.read_bytes() == whole_file_write(old_windows, old_counts)
    return windows, counts


def write_pieces(text, pieces) -> bytes:
    buffer = io.BytesIO()
    writer = text.codec.open_writer(buffer, "back.txt", {"settings": text.settings.state()})
    for windows, side, *_ in pieces:
        writer.write(windows, side)
    writer.close()
    return buffer.getvalue()


# ---- vocabulary, documents, settings ----------------------------------------------------------------------
def test_shipped_vocabulary_is_bert_uncased():
    tok = tokenizer()
    assert tok.vocab_size == 30522
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]
    ids = tok("Hello, World! Compression of DNA sequences isn't trivial.")["input_ids"]
    assert ids == [101, 7592, 1010, 2088, 999, 13379, 1997, 6064, 10071, 3475, 1005, 1056, 20610, 1012, 102]


def test_documents_are_split_at_blank_lines():
    assert split_documents("a b\nc\n\n\n  d e  \n \n\nf\n") == ["a b\nc", "d e", "f"]


def test_settings_keep_the_keys_of_models_saved_before(text):
    assert text.state() == {"name": "text", "tokenizer": "bert-base-uncased-wordpiece", "vocab_size": 30522}
    old = {"name": "text", "tokenizer": "bert-base-uncased-wordpiece", "vocab_size": 30522, "training": {"steps": 2}}
    assert get_domain("text", old).settings == TextSettings()
    # the tokenizer is a user option since bpe and bytes (tests/test_text_tokenizers.py); bert stays the default
    assert TextSettings.names() == ["tokenizer", "bpe_vocab"] and text.model_fields() == {"vocab_size": 30522}
    with pytest.raises(InputError, match="^vocab_size must be 30522"):
        TextSettings.from_state({"vocab_size": 50000})
    with pytest.raises(InputError, match="^tokenizer must be"):
        TextSettings(tokenizer="gpt2")


# ---- windows and pieces -------------------------------------------------------------------------------
def test_windows_pack_documents_and_the_last_is_shorter(text, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one two three four five six seven\n\nalpha beta gamma\n", encoding="utf-8")
    windows, counts, _ = streamed(text, path, 4)
    ids = torch.cat(windows).tolist()
    assert counts == [7, 3] and len(ids) == 12
    assert ids.count(SEP_ID) == 2 and ids[7] == SEP_ID and ids[-1] == SEP_ID
    assert [len(w) for w in windows] == [4, 4, 4]
    windows = text.load_windows([path], 5)
    assert [len(w) for w in windows] == [5, 5, 2] and torch.cat(windows).tolist() == ids


@pytest.mark.parametrize("seq_len", [512, 37])
def test_streamed_windows_equal_the_whole_file_windows_on_the_sample(text, tmp_path, seq_len):
    windows, counts = assert_matches_whole_file(text, text.default_data()[0], seq_len, tmp_path)
    assert len(counts) == 702 and sum(c + 1 for c in counts) == sum(len(w) for w in windows) == 72215


def test_documents_straddling_blocks_batches_and_pieces(text, tmp_path, small):
    """With 7-byte blocks every document (and "Zürich" and its 2-byte ü) is cut between blocks; 40-character
    slices cut long documents; three-window pieces cut documents between pieces."""
    docs = text.default_data()[0].read_text(encoding="utf-8").split("\n\n")[:12]
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(docs) + "\n\n\n Zürich, naïve café 東京 \n  \n" + "x" * 120 + " end", encoding="utf-8")
    windows, counts = assert_matches_whole_file(text, path, 16, tmp_path)
    assert len(counts) == 14 and counts[-1] == 2  # "xxx..." is one [UNK] (over 100 characters), "end"
    _, _, pieces = streamed(text, path, 16)
    assert max(len(p.windows) for p in pieces) == 3 and any(p.side["documents"] == [] for p in pieces)


def test_random_text_splits_and_tokenizes_as_the_whole_file(text, tmp_path, small):
    """Words, punctuation and every kind of whitespace (blank lines, CRLF, \\f, \\v, \\x1c, \\x85, U+2028, U+3000),
    runs long enough to be shortened, documents long enough to be sliced."""
    pieces = ["dog", "cat", "a", "n", "'", "t", ".", ",", "ü", "東", "😀", " ", " ", "\n", "\n", "\r\n", "\t", "\f", "\v",
              "\x1c", "\x85", "\u2028", "\xa0", "\u3000", "\u200b", "\n\n", " \n \t\n"]
    rng = random.Random(0)
    for trial in range(12):
        path = tmp_path / f"r{trial}.txt"
        path.write_text("dog " + "".join(rng.choice(pieces) for _ in range(rng.randrange(20, 400))), encoding="utf-8")
        assert_matches_whole_file(text, path, rng.choice([1, 3, 16]), tmp_path)


def test_long_whitespace_runs_are_shortened_without_changing_documents(text, tmp_path, small):
    runs = [" \t" * 50, "\n" + " " * 60 + "\n", "\n" + "\t" * 60, "\x1c" * 30, "\x1c\f\v" * 20, " \n\x85" * 20]
    path = tmp_path / "runs.txt"
    path.write_text("".join(f"w{i}" + run for i, run in enumerate(runs)) + "\nend" + " \n" * 40, encoding="utf-8")
    _, counts = assert_matches_whole_file(text, path, 8, tmp_path)
    assert len(counts) == 2  # the only blank line is in the second run
    assert text_module._short_run("a\n \n b") == "\n\n" and text_module._short_run(" \n\t ") == "\n"
    assert text_module._short_run(" \x1c\n\x1c ") == "\x1c "  # no line break left to start a blank line


def test_crlf_bom_and_non_ascii_text(text, tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes("\ufeffThe Café\r\nsecond line\r\n\r\nZürich — naïve 東京 😀\r\n\r\n\r\nlast\r\n".encode())
    windows, counts = assert_matches_whole_file(text, path, 6, tmp_path)
    assert len(counts) == 3
    out = tmp_path / "back.txt"
    copy_through(text.codec, path, 6, out)
    assert out.read_text(encoding="utf-8") == "the cafe second line\n\nzurich — naive 東 京 [UNK]\n\nlast\n"


def test_empty_documents_keep_their_place(text, tmp_path):
    """Runs of blank lines make no documents; a document that tokenizes to nothing (a zero-width space) keeps a
    count of 0 and its place between blank lines."""
    path = tmp_path / "e.txt"
    path.write_text("\n\n  \n\nfirst\n\n\n\n\u200b\n \n\nthird\n\n\n", encoding="utf-8")
    windows, counts = assert_matches_whole_file(text, path, 3, tmp_path)
    assert counts == [1, 0, 1]
    out = tmp_path / "back.txt"
    copy_through(text.codec, path, 3, out)
    assert out.read_bytes() == b"first\n\n\n\nthird\n"


def test_a_long_document_is_read_and_written_in_slices(text, tmp_path, monkeypatch):
    """One document of 60,000 characters without a blank line: tokenized in 1,000-character slices, written in
    slices of about 300 tokens, to the same tokens and bytes as the whole."""
    monkeypatch.setattr(text_module, "DOCUMENT_SLICE", 1000)
    monkeypatch.setattr(text_module, "WRITER_SLICE", 300)
    sample = text.default_data()[0].read_text(encoding="utf-8").replace("\n\n", "\n")
    path = tmp_path / "one.txt"
    path.write_text(sample[:60_000], encoding="utf-8")
    _, counts = assert_matches_whole_file(text, path, 128, tmp_path)
    assert len(counts) == 1 and counts[0] > 10_000


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"\x00\x01\x02binary", "binary"),
                                             (b"\xff\xfe\xfa not utf8", "invalid UTF-8 at byte 0$"),
                                             (b"  \n\n ", "holds no text"), (b"\xef\xbb\xbf \n\t\n", "holds no text")])
def test_bad_text_files_are_refused(text, tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        text.load_windows([path], 16)


@pytest.mark.parametrize("content", [b"abc de\xc3\xbcf \xe2\x82", b"x" * 20 + b"\xc3\x28 y", "ab €".encode() + b"\x80"])
def test_invalid_utf8_is_reported_at_its_byte_in_the_file(text, tmp_path, monkeypatch, content):
    monkeypatch.setattr(text_module, "BLOCK_SIZE", 3)
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UnicodeDecodeError) as whole:
        content.decode("utf-8")
    with pytest.raises(InputError, match=f"invalid UTF-8 at byte {whole.value.start}$"):
        text.load_windows([path], 16)


def test_missing_file_directory_and_bad_seq_len_are_refused(text, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        text.load_windows([tmp_path / "nope.txt"], 16)
    with pytest.raises(InputError, match="is a directory"):
        text.load_windows([tmp_path], 16)
    with pytest.raises(InputError, match="seq_len must be at least 1"):
        list(text.codec.iter_windows(text.default_data()[0], 0))


def test_unknown_domain_is_refused():
    with pytest.raises(InputError, match="unknown domain 'klingon'"):
        get_domain("klingon")


# ---- writer ----------------------------------------------------------------------------------------------
def test_round_trip_gives_lowercased_text_and_boundaries_come_from_counts(text, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox jumps.\n\nSecond document, here!\n", encoding="utf-8")
    (windows,), counts, _ = streamed(text, path, 64)
    assert counts == [6, 5] and int((windows == SEP_ID).sum()) == 2
    assert write_pieces(text, [([windows], {"documents": counts})]) == b"the quick brown fox jumps.\n\nsecond document, here!\n"
    # A model that predicts [SEP] elsewhere, or no [SEP] at all, does not move the document boundary.
    wrong = windows.clone()
    wrong[6], wrong[2] = 7592, SEP_ID  # "hello" at the [SEP] position, [SEP] inside the first document
    assert write_pieces(text, [([wrong], {"documents": counts})]) == b"the quick fox jumps.\n\nsecond document, here!\n"


def test_writer_refuses_side_information_that_does_not_match_the_tokens(text):
    ids = torch.tensor([7592, 2088, SEP_ID, 7592, SEP_ID])
    with pytest.raises(FormatError, match="does not match"):
        write_pieces(text, [([ids], {"documents": [2, 2]})])  # the second [SEP] would lie past the piece
    with pytest.raises(FormatError, match="does not match"):
        write_pieces(text, [([ids], {"documents": [2]})])  # tokens left after the last document
    with pytest.raises(FormatError, match="token count of each document"):
        write_pieces(text, [([ids], {"documents": [2, -1]})])
    with pytest.raises(FormatError, match="token count of each document"):
        write_pieces(text, [([ids], {})])


def test_slices_between_words_detokenize_as_the_whole(text, monkeypatch):
    """Token soup with the tokens clean-up rules join (" .", " ' ", "n", "'", "t", "##s", [UNK], "do", "not"),
    written in slices of at most a few tokens, gives the bytes of detokenizing it whole."""
    monkeypatch.setattr(text_module, "WRITER_SLICE", 2)
    tok = tokenizer()
    pool = tok.convert_tokens_to_ids(["the", "n", "'", "t", "s", "m", "ve", "re", ".", ",", "?", "!", "do", "not", "##s",
                                      "##n", "[UNK]", "[MASK]", "a", "1", "東", "é", "#", "##", "isn", "don"])
    fixed = [["dog", "n", "'", "t", "go"], ["dog", "'", "s", "cat"], ["a", "'", "ve", "."], ["do", "not", "##s", "x"]]
    rng = random.Random(1)
    soups = [tok.convert_tokens_to_ids(tokens) for tokens in fixed]
    soups += [[rng.choice(pool) for _ in range(rng.randrange(1, 40))] for _ in range(200)]
    for soup in soups:
        ids = torch.tensor(soup)
        whole = detokenize(ids.tolist()) + "\n"
        pieces = [([ids[i : i + 3]], {"documents": []}) for i in range(0, len(ids), 3)]
        pieces.append(([torch.tensor([SEP_ID])], {"documents": [len(ids)]}))
        assert write_pieces(text, pieces).decode("utf-8") == whole


# ---- format 1 ---------------------------------------------------------------------------------------------
LEGACY = Path(__file__).parent / "data" / "legacy_v1"


@pytest.mark.parametrize("per_piece", [64, 1])
def test_format1_side_becomes_pieces_the_writer_understands(text, tmp_path, monkeypatch, per_piece):
    """tests/data/legacy_v1/input_text.sqz kept {"documents": [21, 9, 3]} for windows of 16, 16 and 4 tokens."""
    monkeypatch.setattr(text_module, "WINDOWS_PER_PIECE", per_piece)
    windows, counts, _ = streamed(text, LEGACY / "input.txt", 16)
    assert counts == [21, 9, 3] and [len(w) for w in windows] == [16, 16, 4]
    pieces = list(text.codec.legacy_pieces({"documents": [21, 9, 3]}, [16, 16, 4]))
    assert pieces == ([(3, {"documents": [21, 9, 3]})] if per_piece == 64 else
                      [(1, {"documents": []}), (1, {"documents": [21, 9]}), (1, {"documents": [3]})])
    groups, first = [], 0
    for n, side in pieces:
        groups.append((windows[first : first + n], side))
        first += n
    expected = whole_file_write(windows, counts)
    assert write_pieces(text, groups) == expected
    assert expected == "the quick brown fox jumps over the lazy dog. second line of the first document, 20th - century.\n\n" \
                       "a second document : zurich, naive cafe.\n\nthird one.\n".encode()


def test_format1_side_that_does_not_match_fails_in_the_writer(text, monkeypatch):
    monkeypatch.setattr(text_module, "WINDOWS_PER_PIECE", 1)
    pieces = list(text.codec.legacy_pieces({"documents": [3, 9]}, [4, 4]))
    assert pieces == [(1, {"documents": [3]}), (1, {"documents": [9]})]  # the last piece takes what is left
    ids = torch.tensor([7592, 2088, 7592, SEP_ID, 7592, 2088, 7592, SEP_ID])
    with pytest.raises(FormatError, match="does not match"):
        write_pieces(text, [([ids[:4]], pieces[0][1]), ([ids[4:]], pieces[1][1])])
    assert list(text.codec.legacy_pieces({"documents": []}, [])) == [(0, {"documents": []})]
    assert write_pieces(text, [([], {"documents": []})]) == b"\n"  # what format 1 wrote for no documents


# ---- objective, render ----------------------------------------------------------------------------------
def test_metric_counts_only_real_tokens(text):
    logits = torch.full((1, 4, 30522), -10.0)
    target = torch.tensor([[5, 6, 7, 0]])
    for i, t in enumerate([5, 6, 9, 0]):
        logits[0, i, t] = 10.0
    mask = torch.tensor([[True, True, True, False]])
    objective = text.objective
    totals = objective.totals(logits, target, mask)
    assert totals == {"correct_tokens": 2.0, "tokens": 3.0}
    assert objective.values(totals)["token_accuracy"] == pytest.approx(2 / 3)
    assert text.metric_name == "token_accuracy" and objective.prediction(logits).tolist() == [[5, 6, 9, 0]]
    assert objective.loss(logits, target, mask).item() == pytest.approx(20 / 3, rel=1e-4)


def test_render_shows_documents_of_a_window(text):
    ids = tokenizer()(["The quick brown fox.", "Second"], add_special_tokens=False)["input_ids"]
    window = torch.tensor([*ids[0], SEP_ID, *ids[1], 0, 0])
    assert text.render(window) == "the quick brown fox. | second"
    assert text.render(window, limit=10) == "the qui..."


# ---- memory ---------------------------------------------------------------------------------------------
def test_reading_and_writing_hold_a_block_a_batch_and_a_piece_not_the_file(text, tmp_path, monkeypatch):
    """Python memory while copying a file through the codec (reader and writer) does not grow with the file: a
    5.6 MB file peaks about where a quarter of it does, at a fraction of either. The constants that bound it are made
    smaller here so that files the tokenizer reads in seconds dwarf them. Half of each file is ordinary documents,
    the other half one document without a blank line."""
    for name, value in [("BLOCK_SIZE", 1 << 12), ("DOCUMENT_SLICE", 1 << 12), ("BATCH_CHARS", 1 << 12),
                        ("WRITER_SLICE", 1 << 11), ("WINDOWS_PER_PIECE", 4)]:
        monkeypatch.setattr(text_module, name, value)
    sample = text.default_data()[0].read_text(encoding="utf-8")
    text_module._cut_tables()  # built once per process, not per file

    def copy_peak(copies: int) -> tuple[int, int]:
        path, out = tmp_path / f"big{copies}.txt", tmp_path / f"back{copies}.txt"
        with path.open("w", encoding="utf-8") as file:
            for _ in range(copies):
                file.write(sample + "\n")
            for _ in range(copies):
                file.write(sample.replace("\n\n", "\n"))
        tracemalloc.start()
        try:
            copy_through(text.codec, path, 512, out)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert out.read_text(encoding="utf-8").count("\n\n") == copies * 702  # the documents and the long one
        return path.stat().st_size, peak

    quarter_size, quarter_peak = copy_peak(2)
    size, peak = copy_peak(8)
    assert size > 5_500_000 and quarter_size < 1_500_000
    # The peak moves a little with where blocks, batches and pieces fall (0.4-0.65 MB here); memory that grew
    # with the file would be four times the quarter's.
    assert peak < 2 * quarter_peak and peak < size / 5, f"{peak / 1e6:.2f} MB for {size / 1e6:.1f} MB, " \
                                                        f"{quarter_peak / 1e6:.2f} MB for {quarter_size / 1e6:.1f} MB"
