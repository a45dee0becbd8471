"""Models and latent files written before the attention seam still load, keep their fingerprint and decode
to exactly what they decoded to then (tests/data/legacy_v1, written by commit ca0e5a4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from seqcompress.compress import decode_file
from seqcompress.domains import get_domain
from seqcompress.model import load_model

LEGACY = Path(__file__).parent / "data" / "legacy_v1"


@pytest.mark.parametrize("model_dir,sqz,expected", [("model", "input.sqz", "expected.fa"),
                                                     ("model_linformer", "input_linformer.sqz", "expected_linformer.fa")])
def test_model_and_sqz_from_before_the_seam_decode_unchanged(tmp_path, model_dir, sqz, expected):
    model, meta = load_model(LEGACY / model_dir)
    saved = json.loads((LEGACY / model_dir / "config.json").read_text())["fingerprint"]
    assert meta.get("fingerprint_scheme", 1) == 1 and model.fingerprint(1) == saved
    out = tmp_path / "back.fa"
    decode_file(model, meta, get_domain(meta["domain"]["name"], meta["domain"]), LEGACY / sqz, out)
    assert out.read_bytes() == (LEGACY / expected).read_bytes()


@pytest.mark.parametrize("name,inp,suffix", [("text", "input.txt", ".txt"), ("dna", "input.fastq", ".fastq"),
                                             ("timeseries", "input.csv", ".csv"), ("audio", "input.wav", ".wav")])
def test_format1_files_of_every_domain_decode_unchanged(tmp_path, name, inp, suffix):
    model, meta = load_model(LEGACY / f"model_{name}")
    out = tmp_path / f"back{suffix}"
    decode_file(model, meta, get_domain(meta["domain"]["name"], meta["domain"]), LEGACY / f"input_{name}.sqz", out)
    expected = LEGACY / f"expected_{name}{suffix}"
    if name != "audio":
        assert out.read_bytes() == expected.read_bytes()
        return
    # Audio is float arithmetic rounded to int16 at the end: another CPU's vector unit may round a sample that
    # falls next to a step the other way (seen: 1 of 10,000 samples, by 1). The file is otherwise the same.
    got, want = sf.read(out, dtype="int16"), sf.read(expected, dtype="int16")
    assert (sf.info(out).samplerate, sf.info(out).channels, sf.info(out).subtype, sf.info(out).frames) == \
        (sf.info(expected).samplerate, sf.info(expected).channels, sf.info(expected).subtype, sf.info(expected).frames)
    assert got[1] == want[1] and got[0].shape == want[0].shape
    diff = np.abs(got[0].astype(np.int32) - want[0].astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert out.stat().st_size == expected.stat().st_size
