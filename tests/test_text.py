"""Text domain: the shipped WordPiece vocabulary, document packing, windows, decoding."""

from __future__ import annotations

import pytest
import torch

from seqcompress.domains import get_domain
from seqcompress.domains.text import SEP_ID, TextDomain, split_documents
from seqcompress.errors import InputError


@pytest.fixture(scope="module")
def text():
    return TextDomain()


def test_shipped_vocabulary_is_bert_uncased(text):
    tok = text.tokenizer
    assert tok.vocab_size == 30522
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]
    ids = tok("Hello, World! Compression of DNA sequences isn't trivial.")["input_ids"]
    assert ids == [101, 7592, 1010, 2088, 999, 13379, 1997, 6064, 10071, 3475, 1005, 1056, 20610, 1012, 102]


def test_documents_are_split_at_blank_lines():
    assert split_documents("a b\nc\n\n\n  d e  \n \n\nf\n") == ["a b\nc", "d e", "f"]


def test_windows_pack_documents_and_the_last_is_shorter(text, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one two three four five six seven\n\nalpha beta gamma\n", encoding="utf-8")
    ids = torch.cat(text.read(path, 4)[0]).tolist()
    assert ids.count(SEP_ID) == 2 and ids[-1] == SEP_ID
    windows = text.load_windows([path], 4)
    assert [len(w) for w in windows] == [4] * (len(ids) // 4) + ([len(ids) % 4] if len(ids) % 4 else [])
    assert torch.equal(torch.cat(windows), torch.tensor(ids))


def test_decode_documents_round_trips_lowercased_text(text):
    docs = ["the quick brown fox jumps.", "second document, here!"]
    ids, counts = text.encode_documents(docs)
    assert counts == [6, 5] and int((ids == SEP_ID).sum()) == 2
    assert text.decode_documents(ids.tolist()) == docs


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"\x00\x01\x02binary", "binary"),
                                             (b"\xff\xfe\xfa not utf8", "invalid UTF-8"), (b"  \n\n ", "holds no text")])
def test_bad_text_files_are_refused(text, tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        text.load_windows([path], 16)


def test_missing_file_and_directory_are_refused(text, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        text.load_windows([tmp_path / "nope.txt"], 16)
    with pytest.raises(InputError, match="is a directory"):
        text.load_windows([tmp_path], 16)


def test_unknown_domain_is_refused():
    with pytest.raises(InputError, match="unknown domain 'klingon'"):
        get_domain("klingon")


def test_metric_counts_only_real_tokens(text):
    logits = torch.full((1, 4, 30522), -10.0)
    target = torch.tensor([[5, 6, 7, 0]])
    for i, t in enumerate([5, 6, 9, 0]):
        logits[0, i, t] = 10.0
    mask = torch.tensor([[True, True, True, False]])
    totals = text.metric_totals(logits, target, mask)
    assert totals == {"correct": 2.0, "tokens": 3.0}
    assert text.metric_values(totals)["token_accuracy"] == pytest.approx(2 / 3)
