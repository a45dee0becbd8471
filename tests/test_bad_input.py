"""The bad-input matrix: for each command and domain, the expected failures end with a non-zero exit, exactly
one line on stderr and no traceback; nothing new appears in the working folder and every input is
byte-identical afterwards."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqcompress.cli.main import app
from seqcompress.domain import bundled
from seqcompress.domains import get_domain
from seqcompress.model import ModelConfig, build_model

runner = CliRunner()
DOMAINS = ["text", "dna", "timeseries", "audio"]
SEQ_LEN = {"text": 16, "dna": 16, "timeseries": 4, "audio": 4}


def _sample(domain: str, root: Path) -> Path:
    """A small good input file of each domain, from the bundled samples."""
    if domain == "text":
        path = root / "in.txt"
        path.write_text(bundled("wiki_sample.txt").read_text(encoding="utf-8")[:2000], encoding="utf-8")
    elif domain == "dna":
        path = root / "in.fa"
        path.write_bytes(gzip.decompress(bundled("yeast_sample.fa.gz").read_bytes())[:3000] + b"\n")
    elif domain == "timeseries":
        path = root / "in.csv"
        path.write_text("\n".join(bundled("co2_sample.csv").read_text().splitlines()[:200]) + "\n")
    else:
        import soundfile as sf

        audio, rate = sf.read(bundled("speech_sample.flac"), frames=8000)
        path = root / "in.wav"
        sf.write(path, audio, rate)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Per domain: a model (untrained: only its files matter here), a good input and its .sqz."""
    from seqcompress.api import load
    from seqcompress.compress import encode_file

    root = tmp_path_factory.mktemp("bad")
    out = {}
    for name in DOMAINS:
        folder = root / name
        folder.mkdir()
        data = _sample(name, folder)
        domain = get_domain(name).learn([data])
        config = ModelConfig(n_max=SEQ_LEN[name], ratio=0.5, d_model=16, heads=2, layers=1, ffn_dim=32, latent_dim=16,
                             **domain.model_fields())
        build_model(config, seed=0).save(folder / "model", domain=domain.state())
        model, meta, dom = load(folder / "model")
        encode_file(model, meta, dom, data, folder / "good.sqz")
        (folder / "exists.out").write_bytes(b"keep")
        (folder / "garbage.bin").write_bytes(bytes(range(256)) * 8)
        (folder / "empty").write_bytes(b"")
        good = (folder / "good.sqz").read_bytes()
        (folder / "truncated.sqz").write_bytes(good[: len(good) // 2])
        (folder / "notamodel").mkdir()
        (folder / "notamodel" / "config.json").write_text("{}")
        (folder / "notamodel" / "model.safetensors").write_bytes(b"x")
        out[name] = folder
    return out


def _cases(d: str) -> dict[str, list[str]]:
    """{case: argv} with the names F (folder) and friends filled in by the test."""
    m, data, sqz, o = "{F}/model", "{F}/" + {"text": "in.txt", "dna": "in.fa", "timeseries": "in.csv",
                                             "audio": "in.wav"}[d], "{F}/good.sqz", "{F}/new.out"
    return {
        "fit: missing data": ["fit", "-d", d, "{F}/nope", "-o", "{F}/newmodel", "--max-steps", "1"],
        "fit: empty data": ["fit", "-d", d, "{F}/empty", "-o", "{F}/newmodel", "--max-steps", "1"],
        "fit: directory as data": ["fit", "-d", d, "{F}", "-o", "{F}/newmodel", "--max-steps", "1"],
        "fit: seq-len 0": ["fit", "-d", d, data, "-o", "{F}/newmodel", "--seq-len", "0"],
        "fit: ratio 2": ["fit", "-d", d, data, "-o", "{F}/newmodel", "--ratio", "2"],
        "fit: heads 3 of d-model 16": ["fit", "-d", d, data, "-o", "{F}/newmodel", "--d-model", "16", "--heads", "3"],
        "fit: bad resize-init": ["fit", "-d", d, data, "-o", "{F}/newmodel", "--resize-init", "zeros"],
        "fit: cuda without a GPU": ["fit", "-d", d, data, "-o", "{F}/newmodel", "--device", "cuda"],
        "fit: unknown domain option": ["fit", "-d", d, data, "-o", "{F}/newmodel", "-D", "nope=1"],
        "fit: over a model": ["fit", "-d", d, data, "-o", m, "--max-steps", "1"],
        "fit: resume nothing": ["fit", "-o", "{F}/newmodel", "--resume"],
        "encode: missing input": ["encode", "{F}/nope", "-m", m, "-o", o],
        "encode: empty input": ["encode", "{F}/empty", "-m", m, "-o", o],
        "encode: binary garbage": ["encode", "{F}/garbage.bin", "-m", m, "-o", o],
        "encode: another domain's file": ["encode", "{F}/good.sqz", "-m", m, "-o", o],
        "encode: missing model": ["encode", data, "-m", "{F}/nomodel", "-o", o],
        "encode: not a model": ["encode", data, "-m", "{F}/notamodel", "-o", o],
        "encode: output exists": ["encode", data, "-m", m, "-o", "{F}/exists.out"],
        "encode: output is the input": ["encode", data, "-m", m, "-o", data, "--force"],
        "encode: output is the model": ["encode", data, "-m", m, "-o", m + "/model.safetensors", "--force"],
        "encode: output in a missing folder": ["encode", data, "-m", m, "-o", "{F}/nodir/x.sqz"],
        "encode: bad dtype": ["encode", data, "-m", m, "-o", o, "--dtype", "float8"],
        "encode: batch-size 0": ["encode", data, "-m", m, "-o", o, "--batch-size", "0"],
        "encode: json and stdout": ["encode", data, "-m", m, "-o", "-", "--json"],
        "decode: garbage": ["decode", "{F}/garbage.bin", "-m", m, "-o", o],
        "decode: truncated": ["decode", "{F}/truncated.sqz", "-m", m, "-o", o],
        "decode: missing": ["decode", "{F}/nope.sqz", "-m", m, "-o", o],
        "decode: output exists": ["decode", sqz, "-m", m, "-o", "{F}/exists.out"],
        "decode: output is the model": ["decode", sqz, "-m", m, "-o", m + "/model.safetensors", "--force"],
        "decode: output is the input": ["decode", sqz, "-m", m, "-o", sqz, "--force"],
        "decode: not a model": ["decode", sqz, "-m", "{F}/notamodel", "-o", o],
        "evaluate: missing data": ["evaluate", "-m", m, "{F}/nope"],
        "evaluate: garbage model": ["evaluate", "-m", "{F}/notamodel", data],
        "evaluate: bad dtype": ["evaluate", "-m", m, data, "--dtype", "x"],
        "evaluate: binary garbage": ["evaluate", "-m", m, "{F}/garbage.bin"],
        "info: garbage": ["info", "{F}/garbage.bin"],
        "info: truncated sqz": ["info", "{F}/truncated.sqz"],
        "info: missing": ["info", "{F}/nope"],
    }


CASES = [(d, case) for d in DOMAINS for case in _cases(d)]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("domain, case", CASES, ids=[f"{d}-{c}" for d, c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(world, domain, case):
    folder = world[domain]
    args = [a.replace("{F}", str(folder)) for a in _cases(domain)[case]]
    before = _snapshot(folder)
    result = runner.invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith(("error:", "Usage", "Error")), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "internal error" not in result.stderr
    assert _snapshot(folder) == before  # nothing new, nothing changed
    assert not list(folder.parent.glob(".*"))
