"""Audio domain: signal processing (resampling, STFT loss, mel, DCT, mu-law), frames and windows, file
round trips of every PCM subtype, edge cases (short clips, silence, clipping, odd rates, stereo, bad files),
metrics, classical baselines, and fit -> encode -> decode -> evaluate through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from seqcompress.attention import length_mask
from seqcompress.cli.main import app
from seqcompress.domains import get_domain
from seqcompress.domains.audio import AudioDomain, read_audio, sample_path
from seqcompress.domains.audio_signal import (
    dct, idct, mel_filterbank, mu_law_decode, mu_law_encode, multi_resolution_stft_loss, resample, stft_sizes,
)
from seqcompress.errors import FormatError, InputError
from seqcompress.train import collate


pytestmark = pytest.mark.usefixtures("one_thread")


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    """(T, C) sine tones, channel c at freq * (c + 1), with a little seeded noise."""
    t = np.arange(int(round(rate * seconds))) / rate
    rng = np.random.default_rng(0)
    cols = [amp * np.sin(2 * np.pi * freq * (c + 1) * t) + 0.01 * rng.standard_normal(len(t)) for c in range(channels)]
    return np.stack(cols, axis=1)


def round_trip(domain: AudioDomain, path, out, seq_len: int = 8):
    """What `write` makes of the true windows (a perfect model), through JSON as in a .sqz header."""
    windows, side = domain.read(path, seq_len)
    domain.write(out, windows, json.loads(json.dumps(side)))
    return windows, side


def batch(windows):
    x, lengths = collate(windows)
    return x, length_mask(lengths, x.shape[1])


# ---- signal processing -------------------------------------------------------------------------------
@pytest.mark.parametrize("orig,new", [(44100, 16000), (8000, 16000), (48000, 16000), (16000, 22050), (44101, 16000)])
def test_resampling_keeps_a_tone_and_gives_the_exact_length(orig, new):
    t = torch.arange(orig) / orig  # 1 s
    y = resample(torch.sin(2 * math.pi * 440 * t), orig, new)
    assert y.shape == (new,)
    ref = torch.sin(2 * math.pi * 440 * torch.arange(new) / new)
    assert float((y - ref)[100:-100].abs().max()) < 2e-3


def test_downsampling_removes_content_above_the_new_nyquist():
    t = torch.arange(48000) / 48000
    y = resample(torch.sin(2 * math.pi * 12000 * t), 48000, 16000)  # 12 kHz is above 8 kHz: must vanish
    assert float(y[200:-200].abs().max()) < 0.01


def test_dct_is_orthonormal_and_matches_the_matrix_definition():
    x = torch.randn(2, 37, dtype=torch.float64)
    n = torch.arange(37, dtype=torch.float64)
    matrix = torch.cos(math.pi * (n[None] + 0.5) * n[:, None] / 37) * math.sqrt(2 / 37)  # (k, n)
    matrix[0] /= math.sqrt(2)
    torch.testing.assert_close(dct(x), x @ matrix.T)
    torch.testing.assert_close(idct(dct(x)), x)
    torch.testing.assert_close(dct(x).square().sum(-1), x.square().sum(-1))  # Parseval


def test_mu_law_round_trip_error_is_small_near_zero_and_codes_span_8_bits():
    x = torch.linspace(-1, 1, 1001)
    codes = mu_law_encode(x)
    assert int(codes.min()) == 0 and int(codes.max()) == 255
    y = mu_law_decode(codes)
    # half a step of linear 8-bit is 1/255 ~ 0.0039; mu-law's steps near zero are ~40 times finer
    assert float((y - x)[x.abs() < 0.001].abs().max()) < 1.2e-4
    assert float((y - x)[x.abs() < 0.01].abs().max()) < 3.5e-4 and float((y - x).abs().max()) < 0.025


def test_mel_filterbank_has_triangles_that_cover_the_band():
    fb = mel_filterbank(512, 40, 16000)
    assert fb.shape == (40, 257) and float(fb.max()) <= 1.0
    assert (fb.sum(1) > 0).all()  # every band has bins
    peaks = fb.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all()  # centres rise with the band index


def test_stft_loss_is_zero_for_identical_signals_and_grows_with_distortion():
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(2, 8000, generator=g)
    mask = torch.ones(2, 8000, dtype=torch.bool)
    assert float(multi_resolution_stft_loss(x, x, mask)) < 1e-5
    noise = torch.randn(2, 8000, generator=g)
    losses = [float(multi_resolution_stft_loss(x + a * noise, x, mask)) for a in (0.003, 0.03, 0.3)]
    assert losses[0] < losses[1] < losses[2]


def test_stft_loss_ignores_masked_padding():
    x = 0.3 * torch.randn(1, 4000)
    mask = torch.zeros(1, 4000, dtype=torch.bool)
    mask[:, :3000] = True
    garbage = x.clone()
    garbage[:, 3000:] = 5.0
    assert float(multi_resolution_stft_loss(garbage, x, mask)) < 1e-5


def test_stft_loss_has_finite_gradients_on_silence_and_fits_short_windows():
    out = torch.zeros(2, 2048, requires_grad=True)
    loss = multi_resolution_stft_loss(out, torch.zeros(2, 2048), torch.ones(2, 2048, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.grad).all()
    assert stft_sizes(32000, 16000) == [512, 1024, 2048]
    assert stft_sizes(700, 16000) == [512] and stft_sizes(300, 16000) == [256] and stft_sizes(10, 16000) == []
    assert stft_sizes(96000, 48000) == [2048, 4096, 8192]  # 1536, 3072, 6144 at 48 kHz, rounded to powers of two


# ---- frames and windows --------------------------------------------------------------------------
def test_frames_carry_their_real_share_and_windows_split_per_channel(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(16000, 0.5, channels=2), 16000, subtype="PCM_16")  # 8000 samples = 25 frames of 320
    domain = AudioDomain()
    windows, side = domain.read(path, 10)
    assert [len(w) for w in windows] == [10, 10, 5, 10, 10, 5] and side["windows_per_channel"] == [3, 3]
    assert windows[0].shape == (10, 321) and domain.model_fields() == {"feature_dim": 321}
    assert float(windows[2][-1, 320]) == 1.0  # 8000 is a whole number of frames
    path = tmp_path / "odd.wav"
    sf.write(path, tone(16000, 0.01), 16000)  # 160 samples: half a frame
    windows, _ = domain.read(path, 10)
    assert len(windows) == 1 and windows[0].shape == (1, 321) and float(windows[0][0, 320]) == 0.5
    assert float(windows[0][0, 160:320].abs().max()) == 0.0  # zero padding


def test_loss_and_metrics_ignore_the_padded_tail_of_a_last_frame(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, tone(16000, 0.05), 16000)  # 800 samples: 2.5 frames
    domain = AudioDomain()
    x, mask = batch(domain.read(path, 8)[0])
    out = x.clone()
    out[0, 2, 160:320] = 0.9  # the padding of the last frame
    out[..., 320] = 0.0  # the real-share feature is not trained either
    assert float(domain.loss(out, x, mask)) < 1e-4
    values = domain.metric_values(domain.metric_totals(out, x, mask))
    assert values["si_sdr"] == 100.0 and values["snr"] == 100.0 and values["mae"] == 0.0


# ---- files: format metadata round trips --------------------------------------------------------------
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_subtypes_round_trip_rate_channels_length_and_subtype(tmp_path, subtype):
    path, out = tmp_path / f"in_{subtype}.wav", tmp_path / f"out_{subtype}.wav"
    data = tone(22050, 0.3, channels=2)[:6613]  # not a whole number of frames at any rate
    sf.write(path, data, 22050, subtype=subtype)
    round_trip(AudioDomain(), path, out)
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames, info.format, info.subtype) == (22050, 2, 6613, "WAV", subtype)
    back, _ = sf.read(out, always_2d=True)
    original, _ = sf.read(path, always_2d=True)
    # 22.05 -> 16 -> 22.05 kHz keeps everything below 8 kHz: the tones (440, 880 Hz) come back; only the
    # white noise above 8 kHz (3/11 of its power: rms 0.01 * sqrt(3/11) = 0.0052) is lost
    rms = np.sqrt(np.mean((back - original)[200:-200] ** 2))
    assert rms < (0.008 if subtype == "PCM_U8" else 0.006)  # PCM_U8: 8-bit steps add rms 2 / 256 / sqrt(12)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
def test_flac_round_trips_and_the_suffix_can_change_the_format(tmp_path, subtype):
    path = tmp_path / "in.flac"
    sf.write(path, tone(16000, 0.2), 16000, format="FLAC", subtype=subtype)
    round_trip(AudioDomain(), path, tmp_path / "out.flac")
    info = sf.info(str(tmp_path / "out.flac"))
    assert (info.format, info.subtype, info.frames, info.samplerate) == ("FLAC", subtype, 3200, 16000)
    domain = AudioDomain()
    windows, side = domain.read(path, 8)
    domain.write(tmp_path / "out.wav", windows, side)  # a .wav name: WAV, same subtype
    assert sf.info(str(tmp_path / "out.wav")).format == "WAV" and "written as WAV" in domain.decode_note(side)
    float_wav = tmp_path / "f.wav"
    sf.write(float_wav, tone(16000, 0.2), 16000, subtype="FLOAT")
    windows, side = domain.read(float_wav, 8)
    domain.write(tmp_path / "f_out.flac", windows, side)  # FLAC holds no floats: 24-bit
    assert sf.info(str(tmp_path / "f_out.flac")).subtype == "PCM_24"


def test_bundled_sample_is_short_16k_mono_speech():
    info = sf.info(str(sample_path()))
    assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
    assert 3.0 <= info.duration <= 8.0 and sample_path().stat().st_size < 200_000
    data, _ = read_audio(sample_path())
    assert 0.05 < np.abs(data).max() < 1.0  # speech at a sane level, not clipped


# ---- edge cases ---------------------------------------------------------------------------------------
def test_eight_khz_mono_and_48_khz_stereo_come_back_at_their_own_rate(tmp_path):
    for rate, channels, freq in [(8000, 1, 300.0), (48000, 2, 1000.0)]:
        path, out = tmp_path / f"r{rate}.wav", tmp_path / f"o{rate}.wav"
        data = tone(rate, 0.25, freq=freq, channels=channels)
        sf.write(path, data, rate, subtype="PCM_16")
        windows, side = round_trip(AudioDomain(), path, out)
        assert side["model_samples"] == 4000  # 0.25 s at 16 kHz whatever the file's rate
        back, back_rate = sf.read(out, always_2d=True)
        assert back_rate == rate and back.shape == data.shape
        # 8 kHz: the whole band survives; 48 kHz: the noise above 8 kHz is lost (rms 0.01 * sqrt(2/3) = 0.0082)
        rms = np.sqrt(np.mean((back - data)[100:-100] ** 2))
        assert rms < (0.002 if rate == 8000 else 0.009)


def test_a_clip_shorter_than_one_frame_round_trips(tmp_path):
    path, out = tmp_path / "click.wav", tmp_path / "out.wav"
    sf.write(path, np.array([[0.5], [-0.25], [0.125]]), 16000, subtype="PCM_16")
    windows, side = round_trip(AudioDomain(), path, out)
    assert len(windows) == 1 and windows[0].shape == (1, 321) and side["frames"] == 3
    np.testing.assert_allclose(sf.read(out)[0], [0.5, -0.25, 0.125], atol=1e-4)


def test_pure_silence_gives_undefined_si_sdr_not_a_crash(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros((16000, 1)), 16000, subtype="PCM_16")
    domain = AudioDomain()
    x, mask = batch(domain.read(path, 25)[0])
    values = domain.metric_values(domain.metric_totals(x + 0.01, x, mask))
    assert math.isnan(values["si_sdr"]) and math.isnan(values["snr"]) and values["silent_windows"] == 2
    assert values["mae"] == pytest.approx(0.01)
    loss = domain.loss(x.clone().requires_grad_(True), x, mask)
    assert torch.isfinite(loss)


def test_clipped_input_is_counted_and_output_is_clipped_for_integer_subtypes(tmp_path):
    path = tmp_path / "loud.wav"
    data = np.clip(3.0 * tone(16000, 0.1), -1, 1)  # a 1.5 peak tone, clipped
    sf.write(path, data, 16000, subtype="PCM_16")
    domain = AudioDomain()
    windows, side = domain.read(path, 8)
    assert side["near_full_scale_samples"] > 100 and side["peak"] == 1.0
    too_loud = [w.clone() for w in windows]
    for w in too_loud:
        w[:, :320] *= 3.0  # a model overshooting full scale
    domain.write(tmp_path / "out.wav", too_loud, side)
    back, _ = sf.read(tmp_path / "out.wav")
    assert back.max() <= 1.0 and back.min() >= -1.0 and back.max() > 0.99 and back.min() < -0.99  # not wrapped


def test_truncated_and_corrupt_files_are_one_line_input_errors(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(16000, 0.5), 16000, subtype="PCM_16")
    data = good.read_bytes()
    cases = {
        "truncated.wav": (data[: len(data) // 2], "is truncated: its header declares 16,000 bytes of samples"),
        "header_only.wav": (data[:30], "is not a readable audio file"),
        "notes.txt": (b"just some text, not audio\n" * 20, "is not a readable audio file"),
        "empty.wav": (b"", "is empty"),
    }
    domain = AudioDomain()
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message) as err:
            domain.read(tmp_path / name, 8)
        assert "\n" not in str(err.value)
    flac = tmp_path / "cut.flac"
    sf.write(flac, tone(16000, 1.0), 16000, format="FLAC")
    flac.write_bytes(flac.read_bytes()[:5000])
    with pytest.raises(InputError, match="is not a readable audio file"):
        domain.read(flac, 8)


def test_zero_frames_and_nan_samples_are_refused(tmp_path):
    empty = tmp_path / "zero.wav"
    sf.write(empty, np.zeros((0, 1)), 16000)
    with pytest.raises(InputError, match="holds no audio samples"):
        AudioDomain().read(empty, 8)
    nan = tmp_path / "nan.wav"
    data = tone(16000, 0.1)
    data[100, 0] = np.nan
    sf.write(nan, data, 16000, subtype="FLOAT")
    with pytest.raises(InputError, match=r"channel 1, sample 101 is NaN"):
        AudioDomain().read(nan, 8)


def test_side_information_from_another_model_is_refused(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(16000, 0.1), 16000)
    windows, side = AudioDomain().read(path, 8)
    with pytest.raises(FormatError, match="this model uses 160 at 8000 Hz"):
        AudioDomain(sample_rate=8000).write(tmp_path / "o.wav", windows, side)
    with pytest.raises(FormatError, match="windows were decoded"):
        AudioDomain().write(tmp_path / "o.wav", windows[:0], side)
    assert not (tmp_path / "o.wav").exists()


def test_settings_are_validated_and_saved():
    with pytest.raises(InputError, match="whole number of samples"):
        AudioDomain(sample_rate=16000, frame_ms=0.01)
    domain = get_domain("audio", {"name": "audio", "sample_rate": 8000, "frame_ms": 25})
    assert domain.frame_samples == 200 and domain.model_fields() == {"feature_dim": 201}
    again = AudioDomain.from_state(json.loads(json.dumps(domain.state())))
    assert (again.sample_rate, again.frame_samples, again.l1_weight) == (8000, 200, domain.l1_weight)


# ---- metrics and baselines -----------------------------------------------------------------------
def test_si_sdr_is_scale_invariant_and_snr_and_log_mel_are_not(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(16000, 0.5), 16000, subtype="FLOAT")
    domain = AudioDomain()
    x, mask = batch(domain.read(path, 25)[0])
    noise = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noise[..., 320] = 0
    a = domain.metric_values(domain.metric_totals(x + noise, x, mask))
    scaled = x.clone()
    scaled[..., :320] = 0.5 * (x + noise)[..., :320]
    b = domain.metric_values(domain.metric_totals(scaled, x, mask))
    assert a["si_sdr"] == pytest.approx(b["si_sdr"], abs=1e-6)
    signal_power = 0.5**2 / 2 + 0.01**2  # the tone and the file's own noise
    assert a["snr"] == pytest.approx(10 * math.log10(signal_power / 0.05**2), abs=0.2)
    assert b["snr"] < a["snr"] - 3
    half = x.clone()
    half[..., :320] *= 0.5
    c = domain.metric_values(domain.metric_totals(half, x, mask))
    assert c["si_sdr"] == 100.0  # capped: a pure gain change is a perfect reconstruction for SI-SDR
    assert c["snr"] == pytest.approx(10 * math.log10(4), abs=1e-3)
    assert c["log_mel_distance"] == pytest.approx(10 * math.log10(4), abs=0.3)  # 6 dB in every mel band


def test_totals_add_up_across_batches(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(16000, 0.5, channels=2), 16000)
    domain = AudioDomain()
    windows = domain.read(path, 10)[0]
    noisy = [w + 0.02 * torch.randn(w.shape) * (torch.arange(321) < 320) for w in windows]
    whole = domain.metric_totals(*batch(noisy)[:1], *batch(windows))
    parts: dict[str, float] = {}
    for i in range(0, len(windows), 2):
        out, _ = batch(noisy[i : i + 2])
        for k, v in domain.metric_totals(out, *batch(windows[i : i + 2])).items():
            parts[k] = parts.get(k, 0.0) + v
    for key in ("si_sdr_x_samples", "signal_energy", "error_energy", "samples"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-6)


def test_classical_baselines_keep_the_budget_and_improve_with_it(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(16000, 0.5, freq=300.0), 16000)
    domain = AudioDomain()
    windows = domain.read(path, 25)[0]
    x, mask = batch(windows)
    for name, codec in domain.classical_baselines().items():
        scores = []
        for budget in (400, 4000):
            rec = codec([], windows, [budget] * len(windows))
            assert [r.shape for r in rec] == [w.shape for w in windows]
            scores.append(domain.metric_values(domain.metric_totals(batch(rec)[0], x, mask))["si_sdr"])
        assert scores[0] < scores[1] and scores[1] > 15, name  # 4000 of 8000 samples keep a 300 Hz tone
    kept = domain.classical_baselines()["dct"]([], windows, [8000] * len(windows))
    torch.testing.assert_close(kept[0], windows[0], atol=1e-5, rtol=0)  # the full budget is lossless


# ---- the CLI, start to finish ------------------------------------------------------------------------
def test_cli_fit_encode_decode_evaluate_on_real_files(tmp_path):
    train = tmp_path / "train.wav"
    sf.write(train, tone(16000, 2.0, freq=220.0), 16000, subtype="PCM_16")
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(44100, 0.3, freq=220.0, channels=2), 44100, subtype="PCM_24")
    model = tmp_path / "model"
    runner = CliRunner()
    result = runner.invoke(app, ["fit", "--domain", "audio", str(train), "-o", str(model), "--seq-len", "8",
                                 "--frame-ms", "10", "--d-model", "32", "--heads", "2", "--layers", "1",
                                 "--max-steps", "3", "--batch-size", "4", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["domain"] == "audio"
    sqz, back = tmp_path / "clip.sqz", tmp_path / "back.wav"
    result = runner.invoke(app, ["encode", str(clip), "-m", str(model), "-o", str(sqz), "--json", "--no-compare"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["windows"] == 2 * 4 and report["symbols"] == 2 * 30  # 0.3 s = 30 frames of 10 ms per channel
    assert report["reference_bits_per_symbol"]["16-bit PCM at 16 kHz"] == 16 * 160
    result = runner.invoke(app, ["decode", str(sqz), "-m", str(model), "-o", str(back)])
    assert result.exit_code == 0, result.output
    info = sf.info(str(back))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, 13230, "PCM_24")
    result = runner.invoke(app, ["evaluate", str(clip), "-m", str(model), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)["metrics"]
    assert math.isfinite(metrics["si_sdr"]) and math.isfinite(metrics["snr"]) and metrics["log_mel_distance"] > 0
    result = runner.invoke(app, ["fit", "--domain", "text", "-o", str(tmp_path / "t"), "--sample-rate", "8000"])
    assert result.exit_code != 0 and "apply to --domain audio only" in result.output
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF" + b"\x00" * 100)
    result = runner.invoke(app, ["encode", str(garbage), "-m", str(model), "-o", str(tmp_path / "g.sqz")])
    assert result.exit_code != 0 and "is not a readable audio file" in result.output


def test_learned_scale_gives_the_model_unit_level_input_and_files_their_own_level(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, tone(16000, 0.5, amp=0.05), 16000, subtype="FLOAT")
    domain = AudioDomain()
    domain.learn([path])
    assert domain.scale == pytest.approx(math.sqrt(0.05**2 / 2 + 0.01**2), rel=0.02)
    windows, side = domain.read(path, 25)
    level = float(torch.cat([w[:, :320] for w in windows]).square().mean().sqrt())
    assert level == pytest.approx(1.0, rel=0.02)
    domain.write(tmp_path / "out.wav", windows, side)
    np.testing.assert_allclose(sf.read(tmp_path / "out.wav")[0], sf.read(path)[0], atol=1e-6)
    x, mask = batch(windows)
    out = x.clone()
    out[..., :320] += 0.1  # 0.1 model units = 0.1 * scale at the file's level
    assert domain.metric_values(domain.metric_totals(out, x, mask))["mae"] == pytest.approx(0.1 * domain.scale, rel=1e-4)
    restored = AudioDomain.from_state(json.loads(json.dumps(domain.state())))
    assert restored.scale == domain.scale


def test_prediction_marks_frames_whole_and_render_shows_the_file_level():
    domain = AudioDomain(scale=0.1)
    window = torch.zeros(3, 321)
    window[:, :320] = 1.0  # 0.1 at the file's level: -20 dBFS
    window[:, 320] = torch.tensor([1.0, 1.0, 0.5])
    assert domain.render(window).startswith("50 ms, rms -20.0 dBFS: +0.100")
    output = torch.randn(1, 3, 321)
    predicted = domain.prediction(output)
    assert (predicted[..., 320] == 1).all() and torch.equal(predicted[..., :320], output[..., :320])
