"""Models and latent files written before the attention seam still load, keep their fingerprint and decode
to exactly what they decoded to then (tests/data/legacy_v1, written by commit ca0e5a4). Audio is the one
exception: its decode resamples, and the resampler changed (to libsoxr) since, so it decodes to the same
layout and, where both resamplers are flat, the same signal (see the audio tests)."""

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
    # The audio decode resamples the model's 16 kHz back to the file's 22.05 kHz. expected_audio.wav is this
    # decode since the resampler became libsoxr's; expected_audio_sinc.wav is what commit cfac2ee's own
    # windowed-sinc resampler made of the same latents (test_format1_audio_decodes_close_to_what_it_decoded_to).
    # Audio is float arithmetic rounded to int16 at the end: another CPU's vector unit may round a sample that
    # falls next to a step the other way (seen: 1 of 10,000 samples, by 1). The file is otherwise the same.
    got, want = sf.read(out, dtype="int16"), sf.read(expected, dtype="int16")
    assert _layout(out) == _layout(expected) == _layout(LEGACY / inp) == (22050, 2, "PCM_16", 5000)
    assert got[1] == want[1] and got[0].shape == want[0].shape
    diff = np.abs(got[0].astype(np.int32) - want[0].astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert out.stat().st_size == expected.stat().st_size


def _layout(path: Path) -> tuple:
    info = sf.info(str(path))
    return info.samplerate, info.channels, info.subtype, info.frames


def _snr_db(got: np.ndarray, want: np.ndarray, below_hz: float | None = None, rate: int = 22050) -> np.ndarray:
    """Per channel 10 log10(|want|^2 / |got - want|^2) of (T, C) signals, over the band below `below_hz`."""
    if below_hz is not None:
        keep = np.fft.rfftfreq(len(want), 1 / rate) < below_hz
        got, want = (np.fft.irfft(np.fft.rfft(x, axis=0) * keep[:, None], len(x), axis=0) for x in (got, want))
    return 10 * np.log10(np.square(want).sum(0) / np.square(got - want).sum(0))


def test_format1_audio_decodes_close_to_what_it_decoded_to(tmp_path):
    """The old decode's bytes cannot come back without the old resampler (a Hann-windowed sinc, 6 zero crossings,
    roll-off 0.99, replaced by libsoxr): the same latents decode to the same length, rate, channels and subtype,
    and to the same signal wherever both resamplers are flat. The untrained model's output is noise-like up to
    8 kHz; the two filters differ at the band edge (the old one is -6 dB at 7.92 kHz and lets some of its image
    above 8 kHz through, libsoxr's HQ filter is flat to 0.92 of 8 kHz and -3 dB at 0.95), hence the full-band SNR
    of 15 dB. Measured: 15.2 and 14.6 dB over the whole band, 48.5 and 49.4 dB below 6 kHz (channels 0, 1)."""
    model, meta = load_model(LEGACY / "model_audio")
    out = tmp_path / "back.wav"
    decode_file(model, meta, get_domain(meta["domain"]["name"], meta["domain"]), LEGACY / "input_audio.sqz", out)
    old = LEGACY / "expected_audio_sinc.wav"
    assert _layout(out) == _layout(old) == (22050, 2, "PCM_16", 5000)
    got, want = sf.read(out, dtype="int16")[0].astype(np.float64), sf.read(old, dtype="int16")[0].astype(np.float64)
    assert (_snr_db(got, want) > 13).all()
    assert (_snr_db(got, want, below_hz=6000) > 45).all()
