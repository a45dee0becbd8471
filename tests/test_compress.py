"""Compression API and encode/decode commands: round trips, honest metrics, safe failures."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from seqcompress.api import evaluate_files, fit
from seqcompress.cli.main import app
from seqcompress.compress import decode, decode_rows, encode, evaluate_quantized
from seqcompress.domain import bundled
from seqcompress.domains.text import SEP_ID, TextDomain
from seqcompress.format import LatentReader
from seqcompress.model import build_model, load_model
from seqcompress.train import TrainOptions, train
from tests.conftest import tiny_config
from tests.test_train import OBJECTIVE, _windows

runner = CliRunner()
TINY_MODEL = {"d_model": 32, "heads": 2, "layers": 1, "ffn_dim": 64, "latent_dim": 32}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(bundled("wiki_sample.txt").read_text(encoding="utf-8").split("\n\n")[:25]) + "\n", encoding="utf-8")
    fit(TextDomain(), [corpus], root / "model", seq_len=32, ratio=0.5, model_options=TINY_MODEL,
        options=TrainOptions(epochs=None, max_steps=30, batch_size=8, lr=3e-3))
    return root, corpus


@pytest.fixture(scope="module")
def trained_tokens():
    model = build_model(tiny_config(d_model=64, ffn_dim=128, latent_dim=64), seed=0)
    windows = _windows(64)
    train(model, OBJECTIVE, windows, TrainOptions(epochs=None, max_steps=200, batch_size=8, lr=3e-3, lr_end=1e-3))
    return model.eval(), windows


def test_in_memory_encode_decode_matches_forward(trained_tokens):
    model, windows = trained_tokens
    latents = encode(model, windows[:10], batch_size=3)
    assert [z.shape for z in latents] == [(model.config.latent_length(len(w)), 64) for w in windows[:10]]
    out = decode(model, latents, [len(w) for w in windows[:10]], batch_size=4, prediction=lambda o: o.argmax(-1))
    for w, pred in zip(windows[:10], out):
        with torch.no_grad():
            ref = model(w[None], torch.tensor([len(w)]))[0][0].argmax(-1)
        assert torch.equal(pred, ref)


def test_int8_latents_decode_within_tolerance_of_float32(trained_tokens):
    model, windows = trained_tokens
    domain = OBJECTIVE
    f32 = evaluate_quantized(model, domain, windows, "float32")["token_accuracy"]
    f16 = evaluate_quantized(model, domain, windows, "float16")["token_accuracy"]
    i8 = evaluate_quantized(model, domain, windows, "int8")["token_accuracy"]
    assert f32 > 0.5
    assert abs(f16 - f32) <= 0.005 and abs(i8 - f32) <= 0.02, (f32, f16, i8)


def test_encode_then_decode_equals_evaluate_and_keeps_documents(text_model, tmp_path):
    root, corpus = text_model
    for dtype in ("float32", "int8"):
        sqz = tmp_path / f"c-{dtype}.sqz"
        back = tmp_path / f"back-{dtype}.txt"
        r = runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(sqz), "--dtype", dtype,
                                "--json", "--no-compare"])
        assert r.exit_code == 0, r.stderr
        r = runner.invoke(app, ["decode", str(sqz), "-m", str(root / "model"), "-o", str(back)])
        assert r.exit_code == 0, r.stderr
        # The token accuracy of what decode reconstructs equals what evaluate reports for the same dtype.
        model, meta = load_model(root / "model")
        domain = TextDomain()
        windows = domain.load_windows([corpus], 32)
        reader = LatentReader(sqz)
        assert reader.version == 2 and reader.windows == len(windows)
        preds = []
        for chunk in reader.chunks():
            preds += decode_rows(model, chunk.latents, chunk.lengths, 8, domain.objective.prediction)
        original, decoded = torch.cat(windows), torch.cat(preds)
        accuracy = int((original == decoded).sum()) / original.numel()
        reported = evaluate_files(root / "model", [corpus], dtype=dtype)["value"]
        assert accuracy == pytest.approx(reported, abs=1e-12)
        # Document boundaries survive whatever the model predicts at [SEP] positions.
        documents = corpus.read_text(encoding="utf-8").count("\n\n") + 1
        assert back.read_text(encoding="utf-8").count("\n\n") == documents - 1
        assert int((original == SEP_ID).sum()) == documents


def test_encode_is_byte_identical_across_runs(text_model, tmp_path):
    root, corpus = text_model
    outs = []
    for name in ("a.sqz", "b.sqz"):
        r = runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(tmp_path / name),
                                "--no-compare", "--json"])
        assert r.exit_code == 0, r.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]


def test_encode_reports_sizes_and_classical_baselines(text_model, tmp_path):
    root, corpus = text_model
    r = runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(tmp_path / "x.sqz"), "--json", "--compare"])
    report = json.loads(r.stdout)
    assert report["sqz_bytes"] == (tmp_path / "x.sqz").stat().st_size
    assert report["input_bytes"] == corpus.stat().st_size
    assert set(report["classical_bytes"]) == {"gzip-9", "bz2-9", "xz-9"}
    assert all(0 < v < report["input_bytes"] for v in report["classical_bytes"].values())
    assert report["sqz_bits_per_symbol"] == pytest.approx(8 * report["sqz_bytes"] / report["symbols"])


def test_existing_output_is_not_overwritten_without_force(text_model, tmp_path):
    root, corpus = text_model
    out = tmp_path / "x.sqz"
    out.write_bytes(b"keep me")
    r = runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(out)])
    assert r.exit_code == 1 and "already exists" in r.stderr and out.read_bytes() == b"keep me"
    r = runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(corpus), "--force"])
    assert r.exit_code == 1 and "is an input of this command" in r.stderr


def test_decode_of_a_corrupted_file_fails_cleanly_and_writes_nothing(text_model, tmp_path):
    root, corpus = text_model
    sqz = tmp_path / "c.sqz"
    assert runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(sqz), "--no-compare"]).exit_code == 0
    data = bytearray(sqz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sqz.write_bytes(bytes(data))
    before = sorted(p.name for p in tmp_path.iterdir())
    r = runner.invoke(app, ["decode", str(sqz), "-m", str(root / "model"), "-o", str(tmp_path / "out.txt")])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [f"error: {sqz} is corrupted or truncated: checksum mismatch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_file_from_another_model_is_refused_unless_forced(text_model, tmp_path):
    root, corpus = text_model
    other = tmp_path / "other"
    fit(TextDomain(), [corpus], other, seq_len=32, ratio=0.5, model_options=TINY_MODEL,
        options=TrainOptions(epochs=None, max_steps=1, seed=7))
    sqz = tmp_path / "c.sqz"
    assert runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(sqz), "--no-compare"]).exit_code == 0
    r = runner.invoke(app, ["decode", str(sqz), "-m", str(other), "-o", str(tmp_path / "o.txt")])
    assert r.exit_code == 1 and "force_model" in r.stderr and not (tmp_path / "o.txt").exists()
    r = runner.invoke(app, ["decode", str(sqz), "-m", str(other), "-o", str(tmp_path / "o.txt"), "--force-model"])
    assert r.exit_code == 0 and (tmp_path / "o.txt").exists()


def test_info_on_a_latent_file(text_model, tmp_path):
    root, corpus = text_model
    sqz = tmp_path / "c.sqz"
    runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(sqz), "--dtype", "int8", "--no-compare"])
    r = runner.invoke(app, ["info", str(sqz), "--json"])
    header = json.loads(r.stdout)
    assert header["payload"]["dtype"] == "int8" and header["source"]["name"] == "corpus.txt"
    assert header["model"]["n_max"] == 32 and header["domain"] == "text" and header["format_version"] == 2
    assert header["windows"] == LatentReader(sqz).windows > 1 and header["settings"]["name"] == "text"
    table = runner.invoke(app, ["info", str(sqz)])  # the result of info goes to stdout, so it can be grepped
    assert table.exit_code == 0 and "payload.dtype" in table.stdout and "int8" in table.stdout


def test_streams_stdin_to_stdout_and_back(text_model, tmp_path):
    """`cat corpus | seqcompress encode -m M - -o - > c.sqz`, then the same for decode, in real processes."""
    import subprocess
    import sys

    root, corpus = text_model
    cli = [sys.executable, "-m", "seqcompress.cli.main"]
    with open(corpus, "rb") as source:
        enc = subprocess.run(cli + ["encode", "-m", str(root / "model"), "-", "-o", "-"], stdin=source,
                             capture_output=True, timeout=300)
    assert enc.returncode == 0, enc.stderr.decode()
    direct = tmp_path / "direct.sqz"
    assert runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(direct),
                               "--no-compare"]).exit_code == 0
    # The same bytes but the source name ("-") in the trailer.
    piped = tmp_path / "piped.sqz"
    piped.write_bytes(enc.stdout)
    assert LatentReader(piped).source["sha256"] == LatentReader(direct).source["sha256"]
    assert LatentReader(piped).source["name"] == "-"
    dec = subprocess.run(cli + ["decode", "-m", str(root / "model"), "-", "-o", "-"], input=enc.stdout,
                         capture_output=True, timeout=300)
    assert dec.returncode == 0, dec.stderr.decode()
    back = tmp_path / "back.txt"
    assert runner.invoke(app, ["decode", str(direct), "-m", str(root / "model"), "-o", str(back)]).exit_code == 0
    assert dec.stdout == back.read_bytes() and len(dec.stdout) > 1000


def test_the_public_api_load_encode_decode(text_model, tmp_path):
    import seqcompress

    root, corpus = text_model
    c = seqcompress.load(root / "model")
    report = c.encode_file(corpus, tmp_path / "api.sqz")
    cli = tmp_path / "cli.sqz"
    assert runner.invoke(app, ["encode", "-m", str(root / "model"), str(corpus), "-o", str(cli), "--no-compare"]).exit_code == 0
    assert (tmp_path / "api.sqz").read_bytes() == cli.read_bytes() and report["windows"] == LatentReader(cli).windows
    c.decode_file(tmp_path / "api.sqz", tmp_path / "back.txt")
    windows = c.windows(corpus)
    ids = c.decode(c.encode(windows), [len(w) for w in windows])
    assert [len(i) for i in ids] == [len(w) for w in windows]
    accuracy = float((torch.cat(ids) == torch.cat(windows)).float().mean())
    assert accuracy == pytest.approx(c.evaluate([corpus], dtype="float32")["token_accuracy"], abs=1e-9)


def test_the_public_api_fit(tmp_path):
    import seqcompress

    fasta = tmp_path / "g.fa"
    fasta.write_text(">a\n" + "ACGT" * 40 + "\n")
    summary = seqcompress.fit("dna", [fasta], tmp_path / "m", settings={"k": 2}, seq_len=16, ratio=0.5,
                              model={"d_model": 16, "heads": 2, "layers": 1, "ffn_dim": 32, "latent_dim": 16},
                              max_steps=2)
    assert summary["steps"] == 2 and seqcompress.load(tmp_path / "m").domain.settings.k == 2
