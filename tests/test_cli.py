"""The CLI through Typer's CliRunner and as a real subprocess: happy paths and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqcompress.cli.main import app

runner = CliRunner()
TINY = ["--seq-len", "32", "--d-model", "32", "--heads", "2", "--layers", "1", "--batch-size", "4"]


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output + result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny text model fitted through the CLI, with its JSON summary."""
    from seqcompress.domain import bundled

    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(bundled("wiki_sample.txt").read_text(encoding="utf-8").split("\n\n")[:30]), encoding="utf-8")
    result = run("fit", "--domain", "text", corpus, "-o", root / "model", *TINY, "--max-steps", "3", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return root, corpus, json.loads(result.stdout)


def test_fit_json_summary(trained):
    root, corpus, summary = trained
    assert summary["domain"] == "text" and summary["metric"] == "token_accuracy"
    assert 0.0 <= summary["value"] <= 1.0 and summary["steps"] == 3
    assert summary["seq_len"] == 32 and summary["latent_len"] == 16 and summary["ratio"] == 0.5
    assert summary["held_out_windows"] >= 1 and summary["train_windows"] > summary["held_out_windows"]
    assert (root / "model" / "config.json").is_file() and (root / "model" / "model.safetensors").is_file()


def test_evaluate_json_matches_schema(trained):
    root, corpus, _ = trained
    result = run("evaluate", "-m", root / "model", corpus, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"domain", "metric", "value", "ratio", "n_sequences"} <= set(out)
    assert out["domain"] == "text" and out["metric"] == "token_accuracy" and out["ratio"] == 0.5
    assert out["n_sequences"] == len(__import__("seqcompress.domains.text", fromlist=["x"]).TextDomain()
                                     .load_windows([corpus], 32))
    assert 0.0 <= out["value"] <= 1.0


def test_info_shows_the_model(trained):
    root, _, summary = trained
    result = run("info", root / "model", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["domain"] == "text" and out["parameters"] == summary["parameters"] and len(out["fingerprint"]) == 32
    assert out["training"]["steps"] == 3


def test_fit_refuses_to_overwrite_a_model(trained):
    root, corpus, _ = trained
    line = one_error_line(run("fit", corpus, "-o", root / "model", *TINY, "--max-steps", "1"))
    assert "already holds a model" in line


def _killed_at_first_checkpoint(corpus: Path, out: Path) -> None:
    """A real `seqcompress fit` of two epochs, killed (SIGKILL) right after its first checkpoint."""
    env = {**os.environ, "SEQCOMPRESS_KILL_AT": "checkpoint:saved", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "seqcompress", "fit", str(corpus), "-o", str(out), *TINY,
                           "--epochs", "2", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    assert (out / "checkpoint" / "run.json").is_file() and not (out / "config.json").exists()


def test_resume_continues_a_killed_run_from_its_record_alone(trained, tmp_path):
    _, corpus, _ = trained
    _killed_at_first_checkpoint(corpus, tmp_path / "m")
    again = run("fit", "-o", tmp_path / "m", "--resume", "--json")
    assert again.exit_code == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["epochs"] == 2 and summary["domain"] == "text" and summary["seq_len"] == 32
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_resume_refuses_an_option_that_contradicts_the_record(trained, tmp_path):
    _, corpus, _ = trained
    _killed_at_first_checkpoint(corpus, tmp_path / "m")
    line = one_error_line(run("fit", "-o", tmp_path / "m", "--resume", "--epochs", "3", "--seq-len", "32"))
    assert "--epochs (the run recorded 2.0, given 3.0)" in line and "--seq-len" not in line
    assert (tmp_path / "m" / "checkpoint" / "state.json").is_file()  # the refused resume changed nothing


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "directory"])
def test_bad_data_gives_one_clear_line(tmp_path, trained, case):
    root, _, _ = trained
    path = {"missing": tmp_path / "nope.txt", "empty": tmp_path / "empty.txt",
            "binary": tmp_path / "blob.bin", "directory": tmp_path}[case]
    if case == "empty":
        path.write_bytes(b"")
    if case == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    expected = {"missing": "no such file", "empty": "is empty", "binary": "binary", "directory": "is a directory"}[case]
    for args in (["fit", path, "-o", tmp_path / "out", *TINY, "--max-steps", "1"],
                 ["evaluate", "-m", root / "model", path]):
        line = one_error_line(run(*args))
        assert line.startswith("error: ") and expected in line, line


@pytest.mark.parametrize("args,expected", [
    (["--domain", "klingon"], "unknown domain 'klingon'"),
    (["--ratio", "0"], "--ratio must be in (0, 1]"),
    (["--ratio", "1.5"], "--ratio must be in (0, 1]"),
    (["--latent-len", "99"], "--latent-len must be between 1 and seq_len"),
])
def test_bad_fit_options_give_one_clear_line(tmp_path, args, expected):
    line = one_error_line(run("fit", "-o", tmp_path / "out", *TINY, "--max-steps", "1", *args))
    assert expected in line, line
    assert not (tmp_path / "out" / "config.json").exists()


def test_model_dir_that_is_not_a_model(tmp_path, trained):
    _, corpus, _ = trained
    for args in (["evaluate", "-m", tmp_path, corpus], ["info", tmp_path], ["evaluate", "-m", tmp_path / "x", corpus]):
        assert "not a model directory" in one_error_line(run(*args))


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "info", str(tmp_path)])
    assert result.exit_code != 0 and result.exception is not None


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("seqcompress")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "seqcompress.cli.main"]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_real_subprocess_fit_evaluate_and_error(tmp_path, trained):
    _, corpus, _ = trained
    fit = _cli("fit", str(corpus), "-o", "m", *TINY, "--max-steps", "2", "--quiet", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert "held-out token_accuracy" in fit.stderr
    ev = _cli("evaluate", "-m", "m", str(corpus), "--json", cwd=tmp_path)
    assert ev.returncode == 0 and json.loads(ev.stdout)["domain"] == "text"
    bad = _cli("evaluate", "-m", "m", "missing.txt", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == ["error: missing.txt: no such file"]


@pytest.mark.parametrize("command", ["fit", "encode", "decode", "evaluate", "info", "demo"])
def test_help_and_usage_errors_keep_their_own_exit_codes(command):
    shown = runner.invoke(app, [command, "--help"])
    assert shown.exit_code == 0 and "Usage" in shown.output
    assert "internal error" not in shown.output + shown.stderr
    wrong = runner.invoke(app, [command, "--no-such-option"])
    assert wrong.exit_code == 2 and "internal error" not in wrong.output + wrong.stderr


def test_fit_takes_attention_positions_resize_stages_and_options(tmp_path):
    out = tmp_path / "m"
    result = runner.invoke(app, ["fit", "--domain", "dna", "-o", str(out), "--seq-len", "64", "--stages", "1/2,1/2",
                                 "--attention", "local", "-O", "window=4", "--positions", "t5", "--resize", "relative",
                                 "--d-model", "16", "--heads", "2", "--max-steps", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ratio"] == 0.25 and summary["latent_len"] == 16
    config = json.loads((out / "config.json").read_text())["model"]
    assert (config["attention"], config["positions"], config["resize"], config["stages"], config["options"]) == \
        ("local", "t5", "relative", [0.5, 0.5], {"window": 4, "scope": "all", "buckets": 32, "max_distance": 128, "band": 1.0})
    refused = runner.invoke(app, ["fit", "--domain", "dna", "-o", str(tmp_path / "x"), "--attention", "lowrank",
                                  "--positions", "rope", "--max-steps", "1"])
    assert refused.exit_code == 1 and "cannot use 'rope' positions" in refused.output


def test_domains_lists_every_domain_and_its_settings():
    result = runner.invoke(app, ["domains", "--json"])
    assert result.exit_code == 0, result.stderr
    listing = json.loads(result.stdout)
    from seqcompress.domains import REGISTRY

    assert set(listing) == set(REGISTRY)
    dna = {s["key"]: s for s in listing["dna"]["settings"]}
    assert dna["k"]["default"] == "3" and dna["k"]["when"] == "fit" and dna["qualities"]["when"] == "encode"
    table = runner.invoke(app, ["domains"])
    assert table.exit_code == 0 and "qualities" in table.stdout and "patch" in table.stdout


def test_domain_settings_use_one_vocabulary_in_every_command(tmp_path):
    fastq = tmp_path / "r.fastq"
    fastq.write_text("@r1\nACGTACGTAC\n+\nIIIIIIIII#\n@r2\nGGCCAATT\n+\n!!!!!!!!\n")
    model = tmp_path / "m"
    fitted = runner.invoke(app, ["fit", "--domain", "dna", str(fastq), "-o", str(model), "-D", "k=2",
                                 *map(str, TINY), "--max-steps", "1", "--json"])
    assert fitted.exit_code == 0, fitted.stderr
    assert json.loads((model / "config.json").read_text())["domain"]["k"] == 2
    sqz = tmp_path / "r.sqz"
    enc = runner.invoke(app, ["encode", "-m", str(model), str(fastq), "-o", str(sqz), "-D", "qualities=drop",
                              "--no-compare", "--json"])
    assert enc.exit_code == 0, enc.stderr
    back = tmp_path / "back.fa"
    dec = runner.invoke(app, ["decode", "-m", str(model), str(sqz), "-o", str(back)])
    assert dec.exit_code == 0 and "qualities=drop" in dec.stderr and back.read_text().startswith(">r1\n")
    # a model setting cannot change at encode time, an unknown key is refused, each with one line
    for args, expected in ((["-D", "k=3"], "unknown domain option 'k'"), (["-D", "nonsense=1"], "'nonsense'"),
                           (["-D", "k"], "takes KEY=VALUE")):
        bad = runner.invoke(app, ["encode", "-m", str(model), str(fastq), "-o", str(tmp_path / "x.sqz"), *args])
        assert expected in one_error_line(bad)
    assert not (tmp_path / "x.sqz").exists()


def test_tokenizer_flag_chooses_the_text_tokens_and_is_refused_elsewhere(tmp_path):
    data = tmp_path / "in.txt"
    data.write_bytes("Ünïcode line\r\nsecond line\n".encode() * 20)
    result = run("fit", data, "--tokenizer", "bytes", "--seq-len", 16, "--d-model", 32, "--heads", 2, "--layers", 1,
                 "--max-steps", 2, "--device", "cpu", "-o", tmp_path / "m", "--json", "-q")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["domain"]["tokenizer"] == "bytes" and saved["model"]["vocab_size"] == 256
    refused = run("fit", data, "--domain", "dna", "--tokenizer", "bpe", "-o", tmp_path / "d")
    assert refused.exit_code != 0 and "--tokenizer chooses the text domain's tokens" in one_error_line(refused)
    clash = run("fit", data, "--tokenizer", "bpe", "-D", "tokenizer=bytes", "-o", tmp_path / "c")
    assert clash.exit_code != 0 and "disagree" in one_error_line(clash)
