"""Audio domain: signal processing (resampling whole and streamed, STFT loss, mel, DCT, mu-law), frames and
windows, streamed pieces and the writer (every PCM subtype, FLAC, rates, channels), format-1 pieces, edge
cases (short clips, silence, clipping, odd rates, bad files, crafted headers), bounded memory, metrics, and
fit -> encode -> decode -> evaluate through the CLI."""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
import weakref

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from seqcompress.atomic import atomic_open
from seqcompress.attention import length_mask
from seqcompress.cli.main import app
from seqcompress.domain import copy_through
from seqcompress.domains import get_domain
from seqcompress.domains.audio import (
    PIECE_WINDOWS, AudioDomain, AudioReader, AudioSettings, block_frames,
)
from seqcompress.domains.audio_signal import (
    Resampler, dct, idct, mel_filterbank, mu_law_decode, mu_law_encode, multi_resolution_stft_loss, resample,
    stft_sizes,
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


def audio(settings: AudioSettings | None = None) -> AudioDomain:
    return AudioDomain(settings)


def read(domain: AudioDomain, path, seq_len: int = 8) -> tuple[list[torch.Tensor], dict]:
    """Every window of a file and its pieces' sides merged (the file's description and the input's stats)."""
    windows: list[torch.Tensor] = []
    side: dict = {}
    for piece in domain.codec.iter_windows(path, seq_len):
        windows += piece.windows
        side.update(piece.side)
    return windows, side


def write(domain: AudioDomain, out, pieces) -> dict:
    """Pieces -> a file through the codec's writer, sides through JSON as a .sqz stores them; the report."""
    with atomic_open(out, "wb") as file:
        writer = domain.codec.open_writer(file, out.name, {"settings": domain.settings.state()})
        for windows, side, *_ in pieces:
            writer.write(windows, json.loads(json.dumps(side)))
        return writer.close()


def round_trip(domain: AudioDomain, path, out, seq_len: int = 8):
    """What the writer makes of the true windows (a perfect model): (windows, merged side, report)."""
    pieces = list(domain.codec.iter_windows(path, seq_len))
    report = write(domain, out, pieces)
    return [w for p in pieces for w in p.windows], {k: v for p in pieces for k, v in p.side.items()}, report


def batch(windows):
    x, lengths = collate(windows)
    return x, length_mask(lengths, x.shape[1])


def metrics(domain: AudioDomain, output, target, mask) -> dict:
    return domain.objective.values(domain.objective.totals(output, target, mask))


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
    y = resample(torch.sin(2 * math.pi * 12000 * t[:44101]), 44101, 16000)  # the per-output sinc too
    assert float(y[200:-200].abs().max()) < 0.01


@pytest.mark.parametrize("orig,new", [(22050, 16000), (44100, 16000), (8000, 16000), (16000, 22050), (16000, 44100),
                                      (44101, 16000), (16000, 44101), (16000, 16000)])
def test_streamed_resampling_equals_whole_file_resampling(orig, new):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 20011, generator=g)
    whole = resample(x, orig, new)
    for sizes in ([1, 7, 13, 441, 1000, 5], [20011], [160, 160, 3]):
        stream, parts, pos, i = Resampler(orig, new, 2), [], 0, 0
        while pos < x.shape[1]:
            parts.append(stream.push(x[:, pos : pos + sizes[i % len(sizes)]]))
            pos, i = pos + sizes[i % len(sizes)], i + 1
        parts.append(stream.finish())
        streamed = torch.cat(parts, dim=1)
        assert streamed.shape == whole.shape == (2, math.ceil(20011 * new / orig))
        # libsoxr processes a stream in its own fixed blocks whatever the pushes: bit for bit here (max |diff| 0.0
        # measured); the bound allows float32 rounding of samples near 4 (one ulp is 4.8e-7)
        assert float((streamed - whole).abs().max()) <= 1e-6


@pytest.mark.parametrize("orig,new", [(22050, 16000), (16000, 22050), (768000, 16000), (16000, 8000), (48, 16000),
                                      (16000, 48)])
def test_resampled_length_is_the_ceiling_and_the_samples_are_soxrs(orig, new):
    """ceil(T * new / orig) samples, where libsoxr alone gives about round(): exact halves (16000 -> 22050 of 160
    samples is 220.5) and lengths below one sample included; the samples are libsoxr's one-shot resampling of
    the signal continued by ceil(orig / new) zeros, cut."""
    import soxr

    g = torch.Generator().manual_seed(1)
    for length in (1, 2, 3, 23, 24, 25, 160, 441, 1000, 1001):
        x = torch.randn(1, length, generator=g)
        y = resample(x, orig, new)
        assert y.shape == (1, -(-length * new // orig)), length
        padded = np.concatenate([x[0].numpy(), np.zeros(-(-orig // new), dtype=np.float32)])
        one_shot = soxr.resample(padded, orig, new, quality="HQ")
        assert len(one_shot) >= y.shape[1] and np.abs(one_shot[: y.shape[1]] - y[0].numpy()).max() <= 1e-6, length


def test_dct_is_orthonormal_and_matches_the_matrix_definition():
    x = torch.randn(2, 37, dtype=torch.float64)
    n = torch.arange(37, dtype=torch.float64)
    matrix = torch.cos(math.pi * (n[None] + 0.5) * n[:, None] / 37) * math.sqrt(2 / 37)  # (k, n)
    matrix[0] /= math.sqrt(2)
    torch.testing.assert_close(dct(x), x @ matrix.T)
    torch.testing.assert_close(idct(dct(x)), x)
    torch.testing.assert_close(dct(x).square().sum(-1), x.square().sum(-1))  # Parseval


def test_a_model_started_as_the_dct_keeps_each_frames_lowest_coefficients():
    from seqcompress.model import ModelConfig, build_model

    domain = audio(AudioSettings(frame_ms=1.0))  # 16 samples a frame
    s = domain.settings.frame_samples
    basis = domain.feature_basis()
    assert torch.allclose(basis @ basis.T, torch.eye(s + 1, dtype=torch.float64), atol=1e-12)
    config = ModelConfig(n_max=8, ratio=1.0, d_model=32, heads=4, layers=2, ffn_dim=64, latent_dim=5,
                         feature_dim=s + 1, resize_init="dct")
    model = build_model(config, seed=0, feature_basis=basis).eval()
    samples = torch.randn(2, 8, s)
    x = torch.cat([samples, torch.ones(2, 8, 1)], dim=2)
    with torch.no_grad():
        out, _, _ = model(x, torch.full((2,), 8))
    kept = dct(samples.double())
    kept[..., 5:] = 0  # the 5 stored floats of a frame: its 5 lowest DCT coefficients, a low-pass
    assert torch.allclose(out[..., :s].double(), idct(kept), atol=1e-5)


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


# ---- frames, windows and pieces ----------------------------------------------------------------------
def test_frames_carry_their_real_share_and_windows_alternate_channels_per_time_step(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(16000, 0.5, channels=2), 16000, subtype="PCM_16")  # 8000 samples = 25 frames of 320
    domain = audio()
    pieces = list(domain.codec.iter_windows(path, 10))
    windows = [w for p in pieces for w in p.windows]
    assert [len(w) for w in windows] == [10, 10, 10, 10, 5, 5]  # steps of 10 frames, channel 0 then 1
    assert pieces[0].side == {"sample_rate": 16000, "channels": 2, "frames": 8000, "format": "WAV", "subtype": "PCM_16",
                              "model_rate": 16000, "frame_samples": 320, "model_samples": 8000,
                              "peak": pieces[0].side["peak"], "near_full_scale_samples": 0}
    assert windows[0].shape == (10, 321) and domain.model_fields() == {"feature_dim": 321}
    assert float(windows[5][-1, 320]) == 1.0  # 8000 is a whole number of frames
    data = sf.read(path, always_2d=True)[0]
    for k, channel in ((0, 0), (1, 1), (3, 1)):  # window k is channel k % 2 of step k // 2
        start = (k // 2) * 3200
        expected = data[start : start + 3200, channel]
        np.testing.assert_allclose(windows[k][:, :320].reshape(-1).numpy(), expected, atol=1e-7)
    path = tmp_path / "odd.wav"
    sf.write(path, tone(16000, 0.01), 16000)  # 160 samples: half a frame
    windows, _ = read(domain, path, 10)
    assert len(windows) == 1 and windows[0].shape == (1, 321) and float(windows[0][0, 320]) == 0.5
    assert float(windows[0][0, 160:320].abs().max()) == 0.0  # zero padding


def test_pieces_are_bounded_and_describe_the_file_once(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(16000, 6.0, channels=3), 16000, subtype="PCM_16")  # 300 frames per channel
    pieces = list(audio().codec.iter_windows(path, 2))  # 150 steps x 3 channels = 450 windows
    assert [len(p.windows) for p in pieces] == [PIECE_WINDOWS] * 7 + [450 - 7 * PIECE_WINDOWS]
    assert "sample_rate" in pieces[0].side and all(p.side == {} for p in pieces[1:-1])
    assert set(pieces[-1].side) == {"peak", "near_full_scale_samples"}
    big = list(audio().codec.iter_windows(path, 4096))  # a window of 4096 frames is 5.3 MB: one a piece
    assert [len(p.windows) for p in big] == [1, 1, 1] and [len(w) for p in big for w in p.windows] == [300] * 3


def test_loss_and_metrics_ignore_the_padded_tail_of_a_last_frame(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, tone(16000, 0.05), 16000)  # 800 samples: 2.5 frames
    domain = audio()
    x, mask = batch(read(domain, path)[0])
    out = x.clone()
    out[0, 2, 160:320] = 0.9  # the padding of the last frame
    out[..., 320] = 0.0  # the real-share feature is not trained either
    assert float(domain.objective.loss(out, x, mask)) < 1e-4
    values = metrics(domain, out, x, mask)
    assert values["si_sdr"] == 100.0 and values["snr"] == 100.0 and values["mae"] == 0.0


# ---- files: format metadata round trips --------------------------------------------------------------
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_subtypes_round_trip_rate_channels_length_and_subtype(tmp_path, subtype):
    path, out = tmp_path / f"in_{subtype}.wav", tmp_path / f"out_{subtype}.wav"
    data = tone(22050, 0.3, channels=2)[:6613]  # not a whole number of frames at any rate
    sf.write(path, data, 22050, subtype=subtype)
    _, _, report = round_trip(audio(), path, out)
    assert report == {"note": "the model works at 16000 Hz, so the output holds nothing above 8000 Hz"}
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
    domain = audio()
    assert copy_through(domain.codec, path, 8, tmp_path / "out.flac") == {}  # same rate, same format: no note
    info = sf.info(str(tmp_path / "out.flac"))
    assert (info.format, info.subtype, info.frames, info.samplerate) == ("FLAC", subtype, 3200, 16000)
    report = copy_through(domain.codec, path, 8, tmp_path / "out.wav")  # a .wav name: WAV, same subtype
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.format, info.subtype) == ("WAV", subtype) and "written as WAV" in report["note"]
    float_wav = tmp_path / "f.wav"
    sf.write(float_wav, tone(16000, 0.2), 16000, subtype="FLOAT")
    report = copy_through(domain.codec, float_wav, 8, tmp_path / "f_out.flac")  # FLAC holds no floats: 24-bit
    assert sf.info(str(tmp_path / "f_out.flac")).subtype == "PCM_24"
    assert report["note"] == "written as FLAC PCM_24 (the output name's suffix), not WAV FLOAT"


def test_a_multi_block_stereo_file_round_trips_through_copy_through(tmp_path):
    path, out = tmp_path / "long.wav", tmp_path / "back.wav"
    data = tone(44100, 3.0, freq=300.0, channels=2)  # 132,300 samples per channel: several blocks
    sf.write(path, data, 44100, subtype="PCM_24")
    domain = audio()
    assert 44100 * 3 > 3 * block_frames(2, 44100, 16000)
    pieces = list(domain.codec.iter_windows(path, 4))  # 38 steps of 4 frames x 2 channels: 76 windows
    assert len(pieces) == 2 and all(len(p.windows) <= PIECE_WINDOWS for p in pieces)
    # the streamed windows equal the whole-file computation (each channel resampled whole, then framed)
    windows = [w for p in pieces for w in p.windows]
    for c in range(2):
        whole = resample(torch.from_numpy(data[:, c]).float(), 44100, 16000)  # (48000,)
        streamed = torch.cat([w[:, :320].reshape(-1) for w in windows[c::2]])[: len(whole)]
        assert float((streamed - whole).abs().max()) < 1e-5
    report = copy_through(domain.codec, path, 4, out)
    assert "nothing above 8000 Hz" in report["note"]
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, 132300, "PCM_24")
    back, _ = sf.read(out, always_2d=True)
    # the tones (300, 600 Hz) come back; the noise above 8 kHz (0.01 * sqrt(14.05 / 22.05) = 0.0080) is lost
    assert np.sqrt(np.mean((back - data)[200:-200] ** 2)) < 0.0085


def test_format1_channel_major_pieces_write_what_streamed_pieces_write(tmp_path):
    path = tmp_path / "in.wav"
    sf.write(path, tone(22050, 0.4, channels=2), 22050, subtype="PCM_16")
    domain = audio()
    copy_through(domain.codec, path, 8, tmp_path / "v2.wav")
    windows, side = read(domain, path, 8)
    per_channel = len(windows) // 2
    channel_major = windows[0::2] + windows[1::2]  # format 1: every window of channel 0, then of channel 1
    legacy_side = {**side, "windows_per_channel": [per_channel, per_channel], "flac_bytes_at_model_rate": 1}
    pieces = list(domain.codec.legacy_pieces(legacy_side, [len(w) for w in channel_major]))
    assert pieces == [(len(windows), {**legacy_side, "layout": "channel-major"})]
    report = write(domain, tmp_path / "v1.wav", [(channel_major, pieces[0][1])])
    assert "nothing above 8000 Hz" in report["note"]
    v1, v2 = sf.read(tmp_path / "v1.wav", dtype="int16")[0], sf.read(tmp_path / "v2.wav", dtype="int16")[0]
    assert v1.shape == v2.shape == (8820, 2) and int(np.abs(v1.astype(int) - v2).max()) <= 1
    with pytest.raises(FormatError, match="windows were decoded"):  # a format-1 piece must arrive whole
        write(domain, tmp_path / "part.wav", [(channel_major[:3], pieces[0][1]), (channel_major[3:], {})])


def test_bundled_sample_is_short_16k_mono_speech():
    sample = audio().default_data()[0]
    info = sf.info(str(sample))
    assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
    assert 3.0 <= info.duration <= 8.0 and sample.stat().st_size < 200_000
    with AudioReader(sample) as reader:
        peak = max(float(np.abs(block).max()) for block in reader.blocks(4096))
    assert 0.05 < peak < 1.0  # speech at a sane level, not clipped


def test_references_measure_pcm_and_streamed_flac_per_frame(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(22050, 1.0, channels=2), 22050, subtype="PCM_16")
    domain = audio()
    windows, _ = read(domain, path)
    frames = sum(len(w) for w in windows)  # 2 channels x 50 frames
    refs = domain.codec.references(path, frames)
    at_model_rate = resample(torch.from_numpy(tone(22050, 1.0, channels=2).T).float(), 22050, 16000).T.numpy()
    whole = tmp_path / "whole.flac"
    sf.write(whole, np.clip(at_model_rate, -1, 1), 16000, format="FLAC", subtype="PCM_16")
    assert frames == 100 and refs["16-bit PCM at 16 kHz"] == 16 * 320
    assert refs["FLAC of the input at 16 kHz, 16-bit"] == pytest.approx(8 * whole.stat().st_size / frames, rel=0.01)


# ---- edge cases ---------------------------------------------------------------------------------------
def test_eight_khz_mono_and_48_khz_stereo_come_back_at_their_own_rate(tmp_path):
    for rate, channels, freq in [(8000, 1, 300.0), (48000, 2, 1000.0)]:
        path, out = tmp_path / f"r{rate}.wav", tmp_path / f"o{rate}.wav"
        data = tone(rate, 0.25, freq=freq, channels=channels)
        sf.write(path, data, rate, subtype="PCM_16")
        windows, side, report = round_trip(audio(), path, out)
        assert side["model_samples"] == 4000  # 0.25 s at 16 kHz whatever the file's rate
        assert sum(len(w) for w in windows) == channels * 13 and (rate < 16000) == (report == {})
        back, back_rate = sf.read(out, always_2d=True)
        assert back_rate == rate and back.shape == data.shape
        # 8 kHz: the band survives up to libsoxr's cut-off (flat to 0.92 of 4 kHz, -3 dB at 0.95), so the noise's
        # top 5 % is lost on the way up and again on the way down (rms about 0.01 * sqrt(0.05) = 0.0022, measured
        # 0.0022); 48 kHz: the noise above 8 kHz is lost too (rms about 0.01 * sqrt(2/3) = 0.0082, measured 0.0082)
        rms = np.sqrt(np.mean((back - data)[100:-100] ** 2))
        assert rms < (0.0025 if rate == 8000 else 0.009)


def test_a_clip_shorter_than_one_frame_round_trips(tmp_path):
    path, out = tmp_path / "click.wav", tmp_path / "out.wav"
    sf.write(path, np.array([[0.5], [-0.25], [0.125]]), 16000, subtype="PCM_16")
    windows, side, _ = round_trip(audio(), path, out)
    assert len(windows) == 1 and windows[0].shape == (1, 321) and side["frames"] == 3
    assert float(windows[0][0, 320]) == pytest.approx(3 / 320)
    np.testing.assert_allclose(sf.read(out)[0], [0.5, -0.25, 0.125], atol=1e-4)
    path = tmp_path / "one.wav"  # one sample at 44.1 kHz: one sample at 16 kHz, one sample back
    sf.write(path, np.array([[0.5]]), 44100, subtype="PCM_16")
    windows, side, _ = round_trip(audio(), path, out)
    assert side["model_samples"] == 1 and float(windows[0][0, 320]) == pytest.approx(1 / 320)
    assert sf.info(str(out)).frames == 1


def test_pure_silence_gives_undefined_si_sdr_not_a_crash(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros((16000, 1)), 16000, subtype="PCM_16")
    domain = audio()
    windows, side = read(domain, path, 25)
    assert side["peak"] == 0.0
    x, mask = batch(windows)
    values = metrics(domain, x + 0.01, x, mask)
    assert math.isnan(values["si_sdr"]) and math.isnan(values["snr"]) and values["silent_windows"] == 2
    assert values["mae"] == pytest.approx(0.01)
    loss = domain.objective.loss(x.clone().requires_grad_(True), x, mask)
    assert torch.isfinite(loss)
    assert domain.learn([path]).settings.scale == 1.0  # nothing to learn a level from


def test_clipped_input_is_counted_and_output_is_clipped_for_integer_subtypes(tmp_path):
    path = tmp_path / "loud.wav"
    data = np.clip(3.0 * tone(16000, 0.1), -1, 1)  # a 1.5 peak tone, clipped
    sf.write(path, data, 16000, subtype="PCM_16")
    domain = audio()
    pieces = list(domain.codec.iter_windows(path, 8))
    assert pieces[-1].side["near_full_scale_samples"] > 100 and pieces[-1].side["peak"] == 1.0
    too_loud = [[w.clone() for w in p.windows] for p in pieces]
    for w in (w for ws in too_loud for w in ws):
        w[:, :320] *= 3.0  # a model overshooting full scale
    write(domain, tmp_path / "out.wav", [(ws, p.side) for ws, p in zip(too_loud, pieces)])
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
    domain = audio()
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message) as err:
            read(domain, tmp_path / name)
        assert "\n" not in str(err.value)
    flac = tmp_path / "cut.flac"
    sf.write(flac, tone(16000, 1.0), 16000, format="FLAC")
    flac.write_bytes(flac.read_bytes()[:5000])
    with pytest.raises(InputError, match="is not a readable audio file"):
        read(domain, flac)


def crafted_wav(channels: int, rate: int, data_bytes: int, present: int | None = None) -> bytes:
    """A PCM_16 WAV whose header says what we choose, followed by `present` bytes of samples."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * 2) & 0xFFFFFFFF, channels * 2, 16)
    body = b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_bytes)
    body += b"\x01" * (data_bytes if present is None else present)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


@pytest.mark.parametrize("channels,rate,data_bytes,present,message", [
    (0, 16000, 8, None, "not a readable audio file.*[Cc]hannel count is zero"),
    (1, 0, 8, None, "not a readable audio file"),
    (5000, 16000, 10000, None, "not a readable audio file.*[Tt]oo many channels"),
    (1, 20_000_000, 8, None, "declares a sample rate of 20,000,000 Hz"),
    (2, 16000, 0xFFFFFFF0, 64, "is truncated: its header declares 4,294,967,280 bytes"),
])
def test_crafted_headers_are_refused_before_anything_big_is_allocated(tmp_path, channels, rate, data_bytes, present,
                                                                      message):
    path = tmp_path / "crafted.wav"
    path.write_bytes(crafted_wav(channels, rate, data_bytes, present))
    with pytest.raises(InputError, match=message):
        read(audio(), path)


def test_zero_frames_and_nan_samples_are_refused(tmp_path):
    empty = tmp_path / "zero.wav"
    sf.write(empty, np.zeros((0, 1)), 16000)
    with pytest.raises(InputError, match="holds no audio samples"):
        read(audio(), empty)
    nan = tmp_path / "nan.wav"
    data = tone(16000, 10.0, channels=2)  # 160,000 samples: several blocks
    data[100, 0] = np.nan
    data[150_000, 1] = np.inf
    data[150_001, 1] = np.nan
    sf.write(nan, data, 16000, subtype="FLOAT")
    with pytest.raises(InputError, match=r"channel 1, sample 101 is NaN; .* \(3 non-finite sample\(s\) in all\)"):
        read(audio(), nan)
    data[100, 0] = 0.0
    sf.write(nan, data, 16000, subtype="FLOAT")
    with pytest.raises(InputError, match=r"channel 2, sample 150001 is an infinite value; .* \(2 non-finite"):
        read(audio(), nan)


def test_side_information_from_another_model_or_file_is_refused(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(16000, 0.1), 16000)
    windows, side = read(audio(), path)
    other = audio(AudioSettings(sample_rate=8000))
    with pytest.raises(FormatError, match="this model uses 160 at 8000 Hz"):
        write(other, tmp_path / "o.wav", [(windows, side)])
    with pytest.raises(FormatError, match="windows were decoded"):
        write(audio(), tmp_path / "o.wav", [(windows[:0], side)])
    with pytest.raises(FormatError, match="before the side information"):
        write(audio(), tmp_path / "o.wav", [(windows, {})])
    with pytest.raises(FormatError, match="more frames decoded"):
        write(audio(), tmp_path / "o.wav", [(windows + windows, side)])
    with pytest.raises(FormatError, match="malformed"):
        write(audio(), tmp_path / "o.wav", [(windows, {**side, "frames": 7})])
    with pytest.raises(FormatError, match="a second file"):
        write(audio(), tmp_path / "o.wav", [(windows, side), ([], side)])
    assert not (tmp_path / "o.wav").exists()


def test_settings_are_validated_saved_and_old_states_load():
    with pytest.raises(InputError, match="frame_ms: .*whole number of samples"):
        AudioSettings(sample_rate=16000, frame_ms=0.01)
    with pytest.raises(InputError, match="sample_rate must be"):
        AudioSettings(sample_rate=500)
    with pytest.raises(InputError, match="l1_weight and stft_weight"):
        AudioSettings(l1_weight=0.0, stft_weight=0.0)
    with pytest.raises(InputError, match="scale must be a positive number"):
        AudioSettings(scale=-1.0)
    domain = get_domain("audio", {"name": "audio", "sample_rate": 8000, "frame_ms": 25})
    assert domain.settings.frame_samples == 200 and domain.model_fields() == {"feature_dim": 201}
    assert domain.settings.frame_ms == 25.0 and isinstance(domain.settings.frame_ms, float)
    again = AudioDomain.from_state(json.loads(json.dumps(domain.state())))
    assert again.settings == domain.settings
    old = {"name": "audio", "sample_rate": 16000, "frame_ms": 20.0, "l1_weight": 1.0, "stft_weight": 0.1,
           "scale": 0.0897, "features": "per frame: 320 samples at 16000 Hz divided by scale, then ..."}
    assert AudioDomain.from_state(old).settings == AudioSettings(scale=0.0897)
    assert AudioSettings.parse({"frame_ms": "10", "sample_rate": "8000"}) == {"frame_ms": 10.0, "sample_rate": 8000}
    assert "scale" not in AudioSettings.names()  # learned, not a user option


# ---- metrics and waveform helpers ------------------------------------------------------------------
def test_si_sdr_is_scale_invariant_and_snr_and_log_mel_are_not(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(16000, 0.5), 16000, subtype="FLOAT")
    domain = audio()
    x, mask = batch(read(domain, path, 25)[0])
    noise = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noise[..., 320] = 0
    a = metrics(domain, x + noise, x, mask)
    scaled = x.clone()
    scaled[..., :320] = 0.5 * (x + noise)[..., :320]
    b = metrics(domain, scaled, x, mask)
    assert a["si_sdr"] == pytest.approx(b["si_sdr"], abs=1e-6)
    signal_power = 0.5**2 / 2 + 0.01**2  # the tone and the file's own noise
    assert a["snr"] == pytest.approx(10 * math.log10(signal_power / 0.05**2), abs=0.2)
    assert b["snr"] < a["snr"] - 3
    half = x.clone()
    half[..., :320] *= 0.5
    c = metrics(domain, half, x, mask)
    assert c["si_sdr"] == 100.0  # capped: a pure gain change is a perfect reconstruction for SI-SDR
    assert c["snr"] == pytest.approx(10 * math.log10(4), abs=1e-3)
    assert c["log_mel_distance"] == pytest.approx(10 * math.log10(4), abs=0.3)  # 6 dB in every mel band


def test_totals_add_up_across_batches(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(16000, 0.5, channels=2), 16000)
    domain = audio()
    windows = read(domain, path, 10)[0]
    noisy = [w + 0.02 * torch.randn(w.shape) * (torch.arange(321) < 320) for w in windows]
    whole = domain.objective.totals(batch(noisy)[0], *batch(windows))
    parts = domain.objective.accumulator()
    for i in range(0, len(windows), 2):
        parts.add(batch(noisy[i : i + 2])[0], *batch(windows[i : i + 2]))
    for key in ("si_sdr_x_samples", "signal_energy", "error_energy", "samples"):
        assert parts.sums[key] == pytest.approx(whole[key], rel=1e-6)


def test_window_waveform_helpers_let_a_baseline_code_windows_at_the_file_level(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(16000, 0.53, freq=300.0), 16000, subtype="FLOAT")  # the last window ends in a partial frame
    domain = audio(AudioSettings(scale=0.05))
    codec = domain.codec
    windows, side = read(domain, path, 25)
    samples = [codec.window_waveform(w) for w in windows]
    assert [len(x) for x in samples] == [8000, 480]  # real samples only: 8,480 = 26.5 frames
    original = torch.from_numpy(sf.read(path)[0]).float()
    torch.testing.assert_close(torch.cat(samples), original, atol=1e-6, rtol=0)  # at the file's level
    for window, x in zip(windows, samples):
        torch.testing.assert_close(codec.waveform_window(x, window), window, atol=1e-6, rtol=0)
        kept = dct(x)  # a DCT code keeping every coefficient is lossless through the helpers
        torch.testing.assert_close(codec.waveform_window(idct(kept), window), window, atol=1e-5, rtol=0)
    halved = [codec.waveform_window(idct(torch.cat([dct(x)[: len(x) // 2], torch.zeros(len(x) - len(x) // 2)])), w)
              for x, w in zip(samples, windows)]
    x, mask = batch(windows)
    # half the DCT keeps a 300 Hz tone and loses half the white noise: 10 log10(0.125 / 0.00005) = 34 dB
    assert metrics(domain, batch(halved)[0], x, mask)["si_sdr"] == pytest.approx(34.0, abs=1.0)
    torch.testing.assert_close(codec.windows_waveform(windows, side["model_samples"]), original, atol=1e-6, rtol=0)
    with pytest.raises(FormatError, match="frames decoded for a channel"):
        codec.windows_waveform(windows[:1], side["model_samples"])


# ---- bounded memory -------------------------------------------------------------------------------
def test_a_ten_minute_wav_streams_in_bounded_memory(tmp_path):
    path, out = tmp_path / "long.wav", tmp_path / "back.wav"
    rate, seconds = 16000, 600
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for start in range(0, rate * seconds, rate * 10):
            t = np.arange(start, start + rate * 10) / rate
            f.write(0.3 * np.sin(2 * np.pi * 440 * t))
    size = path.stat().st_size  # 19.2 MB
    domain = audio()
    tracemalloc.start()
    try:
        first, count, frames = None, 0, 0
        for piece in domain.codec.iter_windows(path, 64):
            if first is None:
                first = [weakref.ref(w) for w in piece.windows]
            count += len(piece.windows)
            frames += sum(len(w) for w in piece.windows)
        _, read_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        report = copy_through(domain.codec, path, 64, out)
        _, write_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, frames) == (469, 30000)  # 30,000 frames of 20 ms, windows of 64
    assert all(ref() is None for ref in first)  # windows of earlier pieces are not kept
    assert read_peak < size / 8 and write_peak < size / 8, (read_peak, write_peak, size)
    assert report == {} and sf.info(str(out)).frames == rate * seconds


# ---- learning, prediction, rendering -----------------------------------------------------------------
def test_learned_scale_gives_the_model_unit_level_input_and_files_their_own_level(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, tone(16000, 0.5, amp=0.05), 16000, subtype="FLOAT")
    untrained = audio()
    domain = untrained.learn([path])
    assert untrained.settings.scale is None  # learn returns a new domain
    assert domain.settings.scale == pytest.approx(math.sqrt(0.05**2 / 2 + 0.01**2), rel=0.02)
    windows, _ = read(domain, path, 25)
    level = float(torch.cat([w[:, :320] for w in windows]).square().mean().sqrt())
    assert level == pytest.approx(1.0, rel=0.02)
    copy_through(domain.codec, path, 25, tmp_path / "out.wav")
    np.testing.assert_allclose(sf.read(tmp_path / "out.wav")[0], sf.read(path)[0], atol=1e-6)
    x, mask = batch(windows)
    out = x.clone()
    out[..., :320] += 0.1  # 0.1 model units = 0.1 * scale at the file's level
    assert metrics(domain, out, x, mask)["mae"] == pytest.approx(0.1 * domain.settings.scale, rel=1e-4)
    restored = AudioDomain.from_state(json.loads(json.dumps(domain.state())))
    assert restored.settings.scale == domain.settings.scale
    with pytest.raises(InputError, match="no data files"):
        untrained.learn([])


def test_learning_a_share_matches_learning_a_copy_cut_where_the_probe_cuts(tmp_path):
    from seqcompress.probe import tail_split

    def ramp(x: np.ndarray) -> np.ndarray:  # louder towards the end: the held-out tail matters
        return x * np.linspace(0.1, 1.0, len(x))[:, None]

    mono, stereo = tmp_path / "mono.wav", tmp_path / "stereo.wav"
    mono_data, stereo_data = ramp(tone(16000, 5.0)), ramp(tone(22050, 2.0, channels=2))
    sf.write(mono, mono_data, 16000, subtype="FLOAT")
    sf.write(stereo, stereo_data, 22050, subtype="FLOAT")
    domain = audio()
    # mono 16 kHz: 80,000 samples = 250 frames of 320; share 0.9 keeps round(225.0) = 225 frames = 72,000 samples
    # (past the first block of 65,536); stereo 22.05 kHz: 44,100 samples -> 32,000 at 16 kHz = 100 frames; 90
    # frames are 28,800 model samples = 28,800 * 22,050 / 16,000 = 39,690 samples at the file's rate
    with AudioReader(mono) as a, AudioReader(stereo) as b:
        assert domain.learn_frames(a.info, 0.9) == 72_000 and domain.learn_frames(b.info, 0.9) == 39_690
        assert domain.learn_frames(a.info) == 80_000 and domain.learn_frames(b.info, 1.0) == 44_100
    # mono: exactly the samples of the frames the probe's chronological split trains on
    stream = torch.cat(domain.load_windows([mono], 16))
    head, _ = tail_split(stream, 1 - 0.9)
    assert len(head) * 320 == 72_000
    cut_mono, cut_stereo = tmp_path / "cut_mono.wav", tmp_path / "cut_stereo.wav"
    sf.write(cut_mono, mono_data[:72_000], 16000, subtype="FLOAT")
    sf.write(cut_stereo, stereo_data[:39_690], 22050, subtype="FLOAT")
    part = domain.learn([mono, stereo], share=0.9).settings.scale
    assert part == domain.learn([cut_mono, cut_stereo]).settings.scale
    assert part < domain.learn([mono, stereo]).settings.scale == domain.learn([mono, stereo], 1.0).settings.scale
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(InputError, match="share must be in \\(0, 1\\]"):
            domain.learn([mono], share=bad)


def test_prediction_marks_frames_whole_and_render_shows_the_file_level():
    domain = audio(AudioSettings(scale=0.1))
    window = torch.zeros(3, 321)
    window[:, :320] = 1.0  # 0.1 at the file's level: -20 dBFS
    window[:, 320] = torch.tensor([1.0, 1.0, 0.5])
    assert domain.render(window).startswith("50 ms, rms -20.0 dBFS: +0.100")
    output = torch.randn(1, 3, 321)
    predicted = domain.objective.prediction(output)
    assert (predicted[..., 320] == 1).all() and torch.equal(predicted[..., :320], output[..., :320])
    assert domain.metric_name == "si_sdr" and domain.objective.higher_is_better


# ---- the CLI, start to finish ------------------------------------------------------------------------
def test_cli_fit_encode_decode_evaluate_on_real_files(tmp_path):
    train = tmp_path / "train.wav"
    sf.write(train, tone(16000, 2.0, freq=220.0), 16000, subtype="PCM_16")
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(44100, 0.3, freq=220.0, channels=2), 44100, subtype="PCM_24")
    model = tmp_path / "model"
    runner = CliRunner()
    result = runner.invoke(app, ["fit", "--domain", "audio", str(train), "-o", str(model), "--seq-len", "8",
                                 "-D", "frame_ms=10", "--d-model", "32", "--heads", "2", "--layers", "1",
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
    metrics_ = json.loads(result.output)["metrics"]
    assert math.isfinite(metrics_["si_sdr"]) and math.isfinite(metrics_["snr"]) and metrics_["log_mel_distance"] > 0
    result = runner.invoke(app, ["fit", "--domain", "text", "-o", str(tmp_path / "t"), "-D", "sample_rate=8000"])
    assert result.exit_code != 0 and "unknown domain option 'sample_rate'" in result.output
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF" + b"\x00" * 100)
    result = runner.invoke(app, ["encode", str(garbage), "-m", str(model), "-o", str(tmp_path / "g.sqz")])
    assert result.exit_code != 0 and "is not a readable audio file" in result.output
