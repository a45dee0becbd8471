"""The text domain's byte-exact tokenizers, bpe and bytes: files round-trip byte for byte, streaming gives the
tokens of the whole file, bpe learns only from its share of the data, and its saved state is checked on load."""

from __future__ import annotations

import base64
import io
import json
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import seqcompress
import seqcompress.domains.text_bytes as text_bytes
from seqcompress.domain import bundled, copy_through
from seqcompress.domains import get_domain, make_domain
from seqcompress.domains.text import TextDomain, TextSettings
from seqcompress.domains.text_bpe import MAX_TOKEN_BYTES, Vocabulary, byte_alphabet, is_cut, pack, vocabulary
from seqcompress.domains.text_bytes import training_texts
from seqcompress.errors import FormatError, InputError

pytestmark = pytest.mark.usefixtures("one_thread")

TRICKY = ("It's the cat's toy; they'll see.  Two  spaces\tand tabs\r\nCRLF line\r\n\r\nCafé naïve Ærø, 日本語のテキスト。"
          "中文，标点。 Emoji 😀👍🏽 and 12,345.67 numbers\n\n\n   indented 'quoted' x=y+z; a_b-c/d\n")

EXACT_FILES = {
    "ascii": b"Hello world.\nThe quick brown fox jumps over the lazy dog.\n",
    "non-ascii": "Café crème, naïve Ærø; 日本語のテキスト。中文，标点。 😀👍🏽 done\n".encode(),
    "crlf": b"first line\r\nsecond line\r\n\r\nafter a blank CRLF line\r\n",
    "bom": "\ufeffa file that starts with a byte order mark\n".encode(),
    "no final newline": b"the last line has no line end",
    "blank-line runs": b"\n\n\npara one\n\n\n\n\npara two  \n \n\t\n\n",
    "whitespace only": b"  \n\t\r\n   \n",
    "not utf-8": bytes(range(256)) + b"latin-1 caf\xe9 \xff\xfe cut \xe6\x97",
}


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> TextDomain:
    """A bpe domain learned from the start of the bundled sample and the tricky text (a small vocabulary)."""
    corpus = tmp_path_factory.mktemp("bpe") / "corpus.txt"
    corpus.write_bytes(bundled("wiki_sample.txt").read_bytes()[:60000] + TRICKY.encode() * 20)
    return make_domain("text", {"tokenizer": "bpe", "bpe_vocab": "700"}).learn([corpus])


@pytest.fixture(scope="module")
def bytes_domain() -> TextDomain:
    return make_domain("text", {"tokenizer": "bytes"})


@pytest.fixture(params=["bytes", "bpe"])
def exact(request, bpe, bytes_domain) -> TextDomain:
    return bpe if request.param == "bpe" else bytes_domain


def tokens(domain: TextDomain, path: Path, seq_len: int = 8) -> list[int]:
    return torch.cat(domain.load_windows([path], seq_len)).tolist()


# ---- round trips ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXACT_FILES))
def test_a_perfect_decode_gives_the_file_byte_for_byte(exact, tmp_path, name):
    path = tmp_path / "in.txt"
    path.write_bytes(EXACT_FILES[name])
    out = tmp_path / "out.txt"
    report = copy_through(exact.codec, path, 8, out)
    assert out.read_bytes() == EXACT_FILES[name]
    assert report == {"note": "byte-exact: every piece matches the input's CRC-32"}
    ids = tokens(exact, path)
    assert all(0 <= i < exact.model_fields()["vocab_size"] for i in ids)
    if exact.settings.tokenizer == "bytes":
        assert ids == list(EXACT_FILES[name])


def test_bpe_tokens_are_fewer_than_bytes_and_invalid_bytes_are_their_own_tokens(bpe, tmp_path):
    path = tmp_path / "in.txt"
    sample = bundled("wiki_sample.txt").read_bytes()[:5000]  # text like the text it learned from
    path.write_bytes(sample)
    assert len(tokens(bpe, path)) < len(sample) // 2
    path.write_bytes(b"ok \xff\xfe ok")
    vocab = vocabulary(bpe.settings.bpe_merges)
    assert tokens(bpe, path) == [*vocab.encode("ok "), 0xFF, 0xFE, *vocab.encode(" ok")]


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_streaming_in_small_blocks_gives_the_tokens_of_the_whole_file(bpe, bytes_domain, tmp_path, monkeypatch,
                                                                       tokenizer):
    domain = bpe if tokenizer == "bpe" else bytes_domain
    data = ("abcdef" + "é" + TRICKY + "日本語" * 30 + "xyz" * 40 + TRICKY).encode() * 3
    assert data[6:8] == "é".encode()  # a block of 7 bytes ends inside this character
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    whole = tokens(domain, path)
    monkeypatch.setattr(text_bytes, "BLOCK_SIZE", 7)
    monkeypatch.setattr(text_bytes, "WINDOWS_PER_PIECE", 3)  # many pieces, each with its own CRC-32
    streamed = tokens(domain, path)
    assert streamed == whole
    if tokenizer == "bpe":
        encoding = vocabulary(bpe.settings.bpe_merges).tokenizer.encode(data.decode(), add_special_tokens=False)
        assert streamed == encoding.ids
    else:
        assert streamed == list(data)
    pieces = list(domain.codec.iter_windows(path, 8))
    assert len(pieces) > 10 and all(len(p.windows) <= 3 for p in pieces)
    out = tmp_path / "out.txt"
    assert copy_through(domain.codec, path, 8, out)["note"].startswith("byte-exact")
    assert out.read_bytes() == data


def test_the_pre_tokenizer_splits_wherever_is_cut_says_it_does(bpe):
    """Tokenizing text[:i] and text[i:] gives the tokens of text at every i that `is_cut` allows."""
    vocab = vocabulary(bpe.settings.bpe_merges)
    alphabet = ["a", "b", "Z", "9", "0", "'", "'s", "'ll", ".", ",", "-", "_", " ", "  ", "\n", "\r\n", "\t", "\x0b",
                "\x0c", "\x85", "\xa0", "\u3000", "\u200b", "é", "日", "。", "😀", "\udcff", "the", " the", "\n\n"]
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 30)))
        whole = vocab.encode(text).tolist()
        for i in range(1, len(text)):
            if is_cut(text[i - 1], text[i]):
                assert vocab.encode(text[:i]).tolist() + vocab.encode(text[i:]).tolist() == whole, (text, i)
                checked += 1
    assert checked > 1000


# ---- the learned vocabulary ----------------------------------------------------------------------------------
def test_bpe_learns_from_the_first_share_of_each_file_only(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"abab abab cdcd " * 200 + b"wxwx yzyz wxwx " * 200)  # the second half: other letters
    learned = {}
    for share in (0.5, 1.0):
        domain = make_domain("text", {"tokenizer": "bpe", "bpe_vocab": "300"}).learn([path], share=share)
        learned[share] = [t for t in vocabulary(domain.settings.bpe_merges).spelling[256:]]
    assert learned[0.5] and all(set(t) <= set(b"abcd ") for t in learned[0.5])
    assert any(b"wx" in t for t in learned[1.0])
    assert sum(len(t.encode("utf-8", "surrogateescape")) for t in training_texts([path], 0.5)) == 3000


def test_bpe_respects_its_vocabulary_size_and_the_learned_state_is_compact(bpe):
    settings = bpe.settings
    assert 256 < settings.vocab_size <= 700 and bpe.model_fields() == {"vocab_size": settings.vocab_size}
    assert set(bpe.state()) == {"name", "tokenizer", "vocab_size", "bpe_vocab", "bpe_merges"}
    assert len(base64.b64decode(settings.bpe_merges)) == 4 * len(vocabulary(settings.bpe_merges).pairs)
    assert max(len(t) for t in vocabulary(settings.bpe_merges).spelling) <= MAX_TOKEN_BYTES


def test_the_byte_alphabet_is_the_byte_level_pre_tokenizers():
    from tokenizers import pre_tokenizers

    alphabet = byte_alphabet()
    assert sorted(alphabet) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert alphabet[ord(" ")] == "Ġ" and alphabet[ord("\n")] == "Ċ" and alphabet[ord("a")] == "a"


def test_saved_settings_reload_and_keep_their_state(bpe, bytes_domain):
    for domain in (bpe, bytes_domain):
        state = json.loads(json.dumps(domain.state()))  # as config.json holds it
        again = get_domain("text", {**state, "training": {"steps": 1}})
        assert again.settings == domain.settings and again.state() == domain.state()
    assert bytes_domain.state() == {"name": "text", "tokenizer": "bytes", "vocab_size": 256}
    assert make_domain("text", {"tokenizer": "bert"}).state() == get_domain("text").state()


def test_options_are_checked_with_one_clear_line():
    assert TextSettings.parse({"tokenizer": "bpe", "bpe_vocab": "4096"}) == {"tokenizer": "bpe", "bpe_vocab": 4096}
    cases = {
        (("tokenizer", "gpt2"),): "tokenizer must be one of bert, bpe, bytes, got 'gpt2'",
        (("tokenizer", "bpe"), ("bpe_vocab", "100")): "bpe_vocab must be a whole number from 257 to 32768, got 100",
        (("bpe_vocab", "4096"),): "bpe_vocab is an option of tokenizer bpe, not bert; set tokenizer=bpe too",
        (("bpe_merges", "AAAA"),): "unknown domain option 'bpe_merges'",
    }
    for items, message in cases.items():
        with pytest.raises(InputError) as info:
            make_domain("text", dict(items))
        assert message in str(info.value) and "\n" not in str(info.value)
    unlearned = make_domain("text", {"tokenizer": "bpe"})
    for call in (unlearned.model_fields, lambda: unlearned.codec):
        with pytest.raises(InputError, match="learned from the training files"):
            call()


def _state(pairs=None, packed=None, **extra) -> dict:
    return {"name": "text", "tokenizer": "bpe", "bpe_vocab": 32768,
            "bpe_merges": packed if packed is not None else pack(pairs), **extra}


@pytest.mark.parametrize("state,message", [
    (_state(packed="not base64!"), "bpe_merges is malformed: it is not base64 text"),
    (_state(packed=base64.b64encode(b"\x00\x00").decode()), "not a whole number of (left, right) pairs"),
    (_state(packed=["AAAA"]), "bpe_merges must be base64 text, got list"),
    (_state(packed="A" * 400_000), "expected base64 text of at most"),
    (_state([(97, 98), (300, 97)]), "merge 1 joins token 300, which does not exist before it"),
    (_state([(97, 98), (97, 98)]), "merge 1 repeats the pair (97, 98)"),
    (_state([(97, 97)] + [(256 + i, 256 + i) for i in range(10)]), "makes a token of 256 bytes, more than 128"),
    (_state([(97, 98)], vocab_size=300), "vocab_size must be 257 (the size of the learned bpe vocabulary), got 300"),
    ({"tokenizer": "bpe", "bpe_vocab": 257, "bpe_merges": pack([(97, 98), (98, 99)])},
     "bpe_merges make 258 tokens, more than bpe_vocab (257)"),
    ({"tokenizer": "bytes", "vocab_size": 256, "bpe_merges": pack([(97, 98)])}, "bpe_merges belong to tokenizer bpe"),
    ({"tokenizer": "bpe", "vocab_size": 300}, "vocab_size is learned with the bpe merges"),
    ({"tokenizer": "bytes", "vocab_size": 30522}, "vocab_size must be 256 (the size of bytes), got 30522"),
    ({"tokenizer": "bytes", "vocab_size": 256.0}, "vocab_size must be 256 (the size of bytes), got 256.0"),
])
def test_a_hostile_saved_state_is_refused_with_one_line(state, message):
    with pytest.raises(InputError) as info:
        get_domain("text", state)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_merges_that_repeat_a_token_reuse_its_id():
    """The trainer makes such merges ("a"+"bc" after "ab"+"c"): the result keeps its first id."""
    vocab = Vocabulary(pack([(97, 98), (98, 99), (256, 99), (97, 257)]))
    assert vocab.size == 259 and vocab.spelling[256:] == [b"ab", b"bc", b"abc"]
    assert vocab.encode("abc").tolist() == [258]


# ---- writer, objective, render -----------------------------------------------------------------------------
def test_invalid_predicted_ids_write_nothing_and_are_counted(exact):
    buffer = io.BytesIO()
    writer = exact.codec.open_writer(buffer, "out.txt", {"settings": exact.settings.state()})
    writer.write([torch.tensor([72, 105, -1, 10**9]), torch.tensor([33])], {"crc32": zlib.crc32(b"Hi!")})
    writer.write([torch.tensor([72, 10**9])], {"crc32": zlib.crc32(b"Ho")})
    assert buffer.getvalue() == b"Hi!H"
    vocab = exact.settings.vocab_size
    assert writer.close() == {"note": f"not byte-exact: 1 of 2 pieces differ from the input (CRC-32); 3 predicted "
                                      f"ids outside the vocabulary of {vocab:,} were skipped"}


@pytest.mark.parametrize("side,message", [({}, "'crc32' is missing"), ({"crc32": -1}, "CRC-32 is -1"),
                                          ({"crc32": "x"}, "must be a whole number"), ([], "expected a JSON object")])
def test_malformed_side_information_is_a_format_error(bytes_domain, side, message):
    writer = bytes_domain.codec.open_writer(io.BytesIO(), "out.txt", {})
    with pytest.raises(FormatError, match="^text side information is malformed") as info:
        writer.write([torch.tensor([65])], side)
    assert message in str(info.value)


def test_the_objective_counts_windows_that_decode_exactly(bytes_domain):
    objective = bytes_domain.objective
    target = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])  # the last row: padding
    predicted = torch.tensor([[1, 2, 3], [4, 9, 7], [8, 8, 8]])
    output = torch.nn.functional.one_hot(predicted, 256).float()
    values = objective.values(objective.totals(output, target, mask))
    assert values == {"token_accuracy": 4 / 5, "exact_windows": 0.5, "byte_exact": 0.0}
    values = objective.values(objective.totals(torch.nn.functional.one_hot(target, 256).float(), target, mask))
    assert values == {"token_accuracy": 1.0, "exact_windows": 1.0, "byte_exact": 1.0}


def test_render_shows_the_bytes_as_text(exact, tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("Café\r\n\tdone 😀".encode())
    window = exact.load_windows([path], 64)[0]
    assert exact.render(window) == "Café\\r\\n\\tdone 😀"
    assert exact.render(window, limit=6) == "Caf..."
    assert exact.render(torch.tensor([67, -5, 10**9])) == "C"


# ---- through a fitted model ---------------------------------------------------------------------------------
def test_a_fitted_bytes_model_encodes_and_decodes_a_file_byte_for_byte(tmp_path):
    data = "Café\r\n日 😀\n\nend".encode()
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    seqcompress.fit("text", [path], tmp_path / "model", settings={"tokenizer": "bytes"}, seq_len=16, ratio=0.5,
                    model={"d_model": 64, "heads": 2, "layers": 1}, max_steps=100, lr=1e-2, lr_end=1e-2,
                    batch_size=4, val_fraction=0.0, device="cpu")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert {k: v for k, v in saved["domain"].items() if k != "training"} == {
        "name": "text", "tokenizer": "bytes", "vocab_size": 256}
    c = seqcompress.load(tmp_path / "model", device="cpu")
    assert c.config.vocab_size == 256 and c.domain.settings.tokenizer == "bytes"
    c.encode_file(path, tmp_path / "in.sqz")
    report = c.decode_file(tmp_path / "in.sqz", tmp_path / "out.txt")
    metrics = c.evaluate([path])
    assert metrics == {"token_accuracy": 1.0, "exact_windows": 1.0, "byte_exact": 1.0}
    assert report["note"] == "byte-exact: every piece matches the input's CRC-32"
    assert (tmp_path / "out.txt").read_bytes() == data


def test_a_saved_bpe_model_loads_with_its_vocabulary(bpe, tmp_path):
    from seqcompress.api import load
    from seqcompress.model import ModelConfig, build_model

    config = ModelConfig(n_max=16, ratio=0.5, d_model=32, heads=2, layers=1, ffn_dim=64, latent_dim=32,
                         **bpe.model_fields())
    build_model(config).save(tmp_path / "model", domain=bpe.state())
    model, meta, domain = load(tmp_path / "model", device="cpu")
    assert domain.settings == bpe.settings and model.config.vocab_size == bpe.settings.vocab_size
    np.testing.assert_array_equal(domain.codec.spelling.lengths, bpe.codec.spelling.lengths)


def test_a_sqz_of_a_bpe_model_keeps_a_digest_of_the_vocabulary_not_the_vocabulary(bpe, tmp_path):
    from seqcompress.api import load
    from seqcompress.compress import decode_file, encode_file
    from seqcompress.format import LatentReader
    from seqcompress.model import ModelConfig, build_model

    config = ModelConfig(n_max=16, ratio=0.5, d_model=32, heads=2, layers=1, ffn_dim=64, latent_dim=32,
                         **bpe.model_fields())
    build_model(config).save(tmp_path / "model", domain=bpe.state())
    model, meta, domain = load(tmp_path / "model", device="cpu")
    path = tmp_path / "in.txt"
    path.write_bytes(b"a small file\n")
    encode_file(model, meta, domain, path, tmp_path / "in.sqz")
    assert (tmp_path / "in.sqz").stat().st_size < 4096  # the merges are tens of KB
    settings = LatentReader(tmp_path / "in.sqz").header["settings"]
    assert settings["bpe_merges"].startswith("sha256:") and settings["tokenizer"] == "bpe"
    # the digest matches the model's (an untrained model: the bytes are not the input's, the decode works)
    decode_file(model, meta, domain, tmp_path / "in.sqz", tmp_path / "out.txt")
    assert (tmp_path / "out.txt").is_file()
