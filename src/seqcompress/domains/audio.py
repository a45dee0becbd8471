"""Audio domain: WAV/FLAC files <-> frames of the waveform at the model's sample rate, SI-SDR.

Every channel of a file is its own sequence (one mono model serves any channel count). A channel is
resampled to the model rate (default 16 kHz), cut into non-overlapping frames of `frame_ms`
(default 20 ms = 320 samples), and the frames into windows of seq_len frames (the last one shorter):

    file (T, C) at rate r -> channel c (T,) -> resample to the model rate (n,) n = ceil(T * rate / r)
    -> zero-pad to whole frames (frames, S) -> append each frame's share of real samples (frames, S + 1)
    -> windows of seq_len frames, channel after channel

The last feature of a frame vector (1 for a full frame, k / S for a last frame of k real samples) tells
the loss and the metrics which samples are padding. `write` takes the reconstructed windows back to the
file's own rate, exact length, channel count, format and subtype. docs/audio.md describes the design,
the bit-rate accounting and every edge case.
"""

from __future__ import annotations

import io
import math
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from seqcompress.atomic import atomic_open
from seqcompress.domain import Baseline, Domain, check_data_paths, split_windows
from seqcompress.domains.audio_signal import (
    dct, fit_length, fourier_resample, idct, log_mel, multi_resolution_stft_loss, mu_law_decode, mu_law_encode,
    resample,
)
from seqcompress.errors import FormatError, InputError

DEFAULT_RATE = 16000
DEFAULT_FRAME_MS = 20.0
SILENCE_POWER = 1e-10  # mean square below this (-100 dBFS): a silent window, SI-SDR undefined and skipped
NEAR_FULL_SCALE = 0.99  # |sample| at or above: counted in the side information as a sign of clipping
SISDR_CAP = 100.0  # dB: a window reconstructed exactly would be +inf
# Subtypes whose samples are integers: values beyond [-1, 1] are clipped when written.
_FLOAT_SUBTYPES = frozenset(["FLOAT", "DOUBLE"])
_SUFFIX_FORMAT = {".wav": "WAV", ".flac": "FLAC"}
_FLAC_SUBTYPE = {"PCM_U8": "PCM_S8", "PCM_32": "PCM_24", "FLOAT": "PCM_24", "DOUBLE": "PCM_24"}


def sample_path() -> Path:
    """The bundled sample: 5 s of espeak-ng speech, 16 kHz mono 16-bit FLAC (seqcompress/data/NOTICE.md)."""
    return Path(str(resources.files("seqcompress") / "data" / "speech_sample.flac"))


# ---- files -> arrays ------------------------------------------------------------------------------
def wav_truncation(path: Path) -> tuple[int, int] | None:
    """(bytes the WAV header declares for its data chunk, bytes present) when the file is cut short, else
    None. A size of 0 or 0xFFFFFFFF (written by streaming tools that cannot seek back) is not a promise."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = path.stat().st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                present = size - pos - 8
                return (length, present) if 0 < length < 0xFFFFFFFF and length > present else None
            pos += 8 + length + (length & 1)
    return None


def read_audio(path: Path) -> tuple[np.ndarray, dict]:
    """Samples (T, C) float64 in [-1, 1] for integer formats (soundfile's scaling) and the file's
    properties {sample_rate, channels, frames, format, subtype}. InputError for anything unreadable."""
    import soundfile as sf

    path = Path(path)
    check_data_paths([path])
    try:
        info = sf.info(str(path))
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        detail = str(exc).split(": ", 1)[-1].strip().rstrip(".") if ": " in str(exc) else str(exc)
        raise InputError(f"{path} is not a readable audio file (WAV, FLAC or another format libsndfile reads): "
                         f"{detail}") from None
    if info.format == "WAV" and (cut := wav_truncation(path)):
        declared, present = cut
        raise InputError(f"{path} is truncated: its header declares {declared:,} bytes of samples but only "
                         f"{present:,} are present (an interrupted copy or download?)")
    if len(data) == 0:
        raise InputError(f"{path} holds no audio samples (0 frames)")
    bad = ~np.isfinite(data)
    if bad.any():
        frame, channel = (int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(data[frame, channel]) else "an infinite value"
        raise InputError(f"{path}: channel {channel + 1}, sample {frame + 1} is {kind}; only finite samples can "
                         f"be compressed ({int(bad.sum()):,} non-finite sample(s) in all)")
    props = {"sample_rate": int(rate), "channels": int(data.shape[1]), "frames": int(data.shape[0]),
             "format": info.format, "subtype": info.subtype}
    return data, props


def flac_bytes(samples: np.ndarray, rate: int) -> int:
    """Size in bytes of (T,) or (T, C) samples as 16-bit FLAC (libsndfile's default compression), measured."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1, 1), rate, format="FLAC", subtype="PCM_16")
    return len(buffer.getvalue())


# ---- the domain -----------------------------------------------------------------------------------
class AudioDomain(Domain):
    """Audio frames: each channel resampled to `sample_rate`, cut into frames of `frame_ms` milliseconds.

    Settings (saved in the model):
      sample_rate   the model's rate in Hz (CLI fit --sample-rate); files are resampled to it and back
      frame_ms      frame length in milliseconds (CLI fit --frame-ms); sample_rate * frame_ms / 1000 samples
      stft_weight   weight of the multi-resolution STFT loss (default 0.1)
      l1_weight     weight of the waveform L1 loss (default 1)
      scale         learned by `fit`: the RMS level of the training audio; the model sees samples / scale,
                    so its inputs and targets have unit level whatever the recording level (1 until learned)
    """

    name = "audio"
    metric_name = "si_sdr"
    higher_is_better = True
    default_seq_len = 64  # frames: 1.28 s at 20 ms
    output_suffix = ".wav"

    def __init__(self, sample_rate: int = DEFAULT_RATE, frame_ms: float = DEFAULT_FRAME_MS,
                 l1_weight: float = 1.0, stft_weight: float = 0.1, scale: float | None = None) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 384000:
            raise InputError(f"sample rate must be a whole number of Hz from 1000 to 384000, got {sample_rate!r}")
        samples = sample_rate * float(frame_ms) / 1000
        if not frame_ms > 0 or abs(samples - round(samples)) > 1e-9 or round(samples) < 1:
            raise InputError(f"a frame of {frame_ms} ms at {sample_rate} Hz is {samples:g} samples; choose a frame "
                             "length that is a whole number of samples (e.g. 20 ms at 16 kHz = 320)")
        if not (l1_weight >= 0 and stft_weight >= 0 and l1_weight + stft_weight > 0):
            raise InputError("the loss weights must be non-negative and not both zero")
        self.sample_rate, self.frame_ms = sample_rate, float(frame_ms)
        self.frame_samples = int(round(samples))
        self.l1_weight, self.stft_weight = float(l1_weight), float(stft_weight)
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise InputError(f"audio scale must be a positive number, got {scale!r}")
        self.scale = None if scale is None else float(scale)
        self._flac_bits_per_frame: float | None = None  # of the last file read, for size_references

    # ---- state ---------------------------------------------------------------------------------
    def model_fields(self) -> dict:
        return {"feature_dim": self.frame_samples + 1}

    def state(self) -> dict:
        return {"name": self.name, "sample_rate": self.sample_rate, "frame_ms": self.frame_ms,
                "l1_weight": self.l1_weight, "stft_weight": self.stft_weight, "scale": self.scale,
                "features": f"per frame: {self.frame_samples} samples at {self.sample_rate} Hz divided by scale, "
                            "then the share of them that is real (not padding)"}

    @classmethod
    def from_state(cls, state: dict) -> "AudioDomain":
        """A saved state, or settings to fit with: missing or None entries take their defaults."""
        def get(key, default):
            return default if state.get(key) is None else state[key]

        return cls(sample_rate=int(get("sample_rate", DEFAULT_RATE)), frame_ms=float(get("frame_ms", DEFAULT_FRAME_MS)),
                   l1_weight=float(get("l1_weight", 1.0)), stft_weight=float(get("stft_weight", 0.1)),
                   scale=state.get("scale"))

    @property
    def gain(self) -> float:
        """What samples are divided by before the model sees them (1 until `learn`)."""
        return self.scale or 1.0

    def learn(self, paths: list[Path]) -> None:
        """The RMS level of every training file's samples, pooled: the model then sees unit-level audio, which
        it learns far faster than speech at its usual level of -20 to -30 dBFS. Silence only: scale 1."""
        paths = check_data_paths([Path(p) for p in paths])
        if not paths:
            raise InputError("no data files to learn from")
        energy, count = 0.0, 0
        for path in paths:
            data, _ = read_audio(path)
            energy += float(np.square(data).sum())
            count += data.size
        rms = math.sqrt(energy / count)
        self.scale = rms if rms > 1e-5 else 1.0

    def default_data(self) -> list[Path]:
        return [sample_path()]

    def size_references(self) -> dict[str, float]:
        rate = f"{self.sample_rate / 1000:g} kHz"
        refs = {f"16-bit PCM at {rate}": 16.0 * self.frame_samples}
        if self._flac_bits_per_frame is not None:
            refs[f"FLAC of the input at {rate}, 16-bit"] = self._flac_bits_per_frame
        return refs

    def decode_note(self, side: dict) -> str | None:
        notes = []
        if int(side.get("sample_rate", self.sample_rate)) > self.sample_rate:
            notes.append(f"the model works at {self.sample_rate} Hz, so the output holds nothing above "
                         f"{self.sample_rate // 2} Hz")
        if side.get("written_as"):
            notes.append(side["written_as"])
        return "; ".join(notes) or None

    # ---- waveform <-> frames ----------------------------------------------------------------------
    def channel_windows(self, samples: np.ndarray | torch.Tensor, rate: int, seq_len: int) -> list[torch.Tensor]:
        """One channel (T,) at `rate` Hz -> windows (L, S + 1) float32 of at most seq_len frames at the
        model rate: S samples, then the share of them that is real."""
        x = resample(torch.as_tensor(samples, dtype=torch.float32), rate, self.sample_rate) / self.gain  # (n,)
        s = self.frame_samples
        frames = -(-len(x) // s)
        padded = torch.zeros(frames * s)
        padded[: len(x)] = x
        real = torch.ones(frames)
        real[-1] = (len(x) - (frames - 1) * s) / s
        vectors = torch.cat([padded.view(frames, s), real[:, None]], dim=1)  # (frames, S + 1)
        return split_windows(vectors, seq_len)

    def model_samples(self, frames: int, rate: int) -> int:
        """Samples at the model rate of a channel of `frames` samples at `rate` Hz."""
        return frames if rate == self.sample_rate else math.ceil(frames * self.sample_rate / rate)

    def windows_waveform(self, windows: list[torch.Tensor], samples: int) -> torch.Tensor:
        """Windows (L, S + 1) of one channel, in order -> its first `samples` samples (samples,) at the model rate,
        at the file's level (times scale)."""
        s = self.frame_samples
        if any(w.ndim != 2 or w.shape[1] != s + 1 for w in windows):
            raise FormatError(f"audio windows must have {s + 1} features per frame")
        x = torch.cat([w[:, :s].float() for w in windows]).reshape(-1) if windows else torch.zeros(0)
        if len(x) != -(-samples // s) * s:
            raise FormatError(f"audio: {len(x) // s} frames decoded for a channel of {samples} samples "
                              f"({-(-samples // s)} frames of {s})")
        return x[:samples] * self.gain

    # ---- files ---------------------------------------------------------------------------------------
    def read(self, path: Path, seq_len: int) -> tuple[list[torch.Tensor], dict]:
        """Windows (L, S + 1) of every channel, channel after channel, and the side information `write` needs."""
        path = Path(path)
        data, props = read_audio(path)
        windows: list[torch.Tensor] = []
        per_channel = []
        for c in range(props["channels"]):
            channel = self.channel_windows(data[:, c], props["sample_rate"], seq_len)
            per_channel.append(len(channel))
            windows += channel
        n = self.model_samples(props["frames"], props["sample_rate"])
        model_rate = torch.stack([self.windows_waveform(windows[sum(per_channel[:c]) : sum(per_channel[: c + 1])], n)
                                  for c in range(props["channels"])], dim=1)  # (n, C)
        flac = flac_bytes(model_rate.numpy(), self.sample_rate)
        self._flac_bits_per_frame = 8 * flac / sum(len(w) for w in windows)
        side = {
            **props,
            "model_rate": self.sample_rate,
            "frame_samples": self.frame_samples,
            "model_samples": n,
            "windows_per_channel": per_channel,
            "near_full_scale_samples": int((np.abs(data) >= NEAR_FULL_SCALE).sum()),  # a sign of clipping
            "peak": float(np.abs(data).max()),
            "flac_bytes_at_model_rate": flac,
        }
        return windows, side

    def output_format(self, path: Path, side: dict) -> tuple[str, str, str | None]:
        """(format, subtype, note) `write` uses: the input's own, unless the output's suffix (.wav, .flac)
        names another format; then the closest subtype that format holds, and a note saying so."""
        import soundfile as sf

        fmt, subtype = str(side["format"]), str(side["subtype"])
        wanted = _SUFFIX_FORMAT.get(Path(path).suffix.lower())
        if wanted is None or wanted == fmt:
            return fmt, subtype, None
        new_subtype = subtype if sf.check_format(wanted, subtype) else _FLAC_SUBTYPE.get(subtype, "PCM_16")
        if not sf.check_format(wanted, new_subtype):
            new_subtype = "PCM_16"
        return wanted, new_subtype, f"written as {wanted} {new_subtype} (the output name's suffix), not {fmt} {subtype}"

    def write(self, path: Path, windows: list[torch.Tensor], side: dict) -> None:
        """An audio file with the input's rate, channel count, length in samples, format and subtype (values
        clipped to [-1, 1] for integer subtypes); written atomically."""
        import soundfile as sf

        try:
            rate, channels, frames = int(side["sample_rate"]), int(side["channels"]), int(side["frames"])
            if int(side["model_rate"]) != self.sample_rate or int(side["frame_samples"]) != self.frame_samples:
                raise FormatError(f"the latents hold {side['frame_samples']}-sample frames at {side['model_rate']} Hz; "
                                  f"this model uses {self.frame_samples} at {self.sample_rate} Hz")
            counts = [int(k) for k in side["windows_per_channel"]]
            n = int(side["model_samples"])
            if len(counts) != channels or sum(counts) != len(windows):
                raise FormatError(f"audio side information describes {sum(counts)} windows in {len(counts)} "
                                  f"channel(s), but {len(windows)} windows were decoded")
            fmt, subtype, note = self.output_format(Path(path), side)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"audio side information is malformed ({type(exc).__name__}: {exc})") from None
        side["written_as"] = note
        out = np.zeros((frames, channels), dtype=np.float64)
        start = 0
        for c, count in enumerate(counts):
            x = self.windows_waveform(windows[start : start + count], n)  # (n,) at the model rate
            start += count
            out[:, c] = fit_length(resample(x, self.sample_rate, rate), frames).double().numpy()
        if subtype not in _FLOAT_SUBTYPES:
            np.clip(out, -1.0, 1.0, out=out)  # libsndfile would wrap out-of-range values around
        with atomic_open(path, "wb") as handle:
            sf.write(handle, out, rate, subtype=subtype, format=fmt)

    # ---- training and evaluation ----------------------------------------------------------------
    def _waveforms(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        """Output and target waveforms (B, N * S) and the mask (B, N * S) of real samples: padding frames
        (mask False) and the padded tail of a last frame (its real share < 1) are excluded."""
        s = self.frame_samples
        b, n = target.shape[:2]
        real = (target[..., s].float() * s).round()  # (B, N) real samples per frame
        sample_mask = (torch.arange(s, device=target.device) < real[..., None]) & mask[..., None]  # (B, N, S)
        return (output[..., :s].float().reshape(b, n * s), target[..., :s].float().reshape(b, n * s),
                sample_mask.reshape(b, n * s))

    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """l1_weight x mean |error| over real samples + stft_weight x multi-resolution STFT loss; the last
        feature (the real share) of the output is not trained."""
        y, x, m = self._waveforms(output, target, mask)
        l1 = ((y - x).abs() * m).sum() / m.sum().clamp(min=1)
        if self.stft_weight == 0:
            return self.l1_weight * l1
        return self.l1_weight * l1 + self.stft_weight * multi_resolution_stft_loss(y, x, m, self.sample_rate)

    def metric_totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Sums over windows and real samples at the model rate: SI-SDR x samples of every non-silent window,
        signal and error energy, absolute error, and absolute log-mel differences (dB) over real mel frames."""
        y, x, m = self._waveforms(output, target, mask)
        mf = m.double()
        y, x = y.double() * mf * self.gain, x.double() * mf * self.gain  # at the file's level
        count = mf.sum(1)  # (B,)
        energy = x.square().sum(1)
        error = (y - x).square().sum(1)
        audible = energy > SILENCE_POWER * count.clamp(min=1)
        alpha = (y * x).sum(1) / energy.clamp(min=1e-300)  # (B,) optimal scale of the target
        projected = alpha.square() * energy
        residual = (y - alpha[:, None] * x).square().sum(1)
        si_sdr = (10 * torch.log10(projected.clamp(min=1e-300) / residual.clamp(min=1e-300))).clamp(-SISDR_CAP, SISDR_CAP)
        mel_y, hop = log_mel(y.float(), self.sample_rate)  # (B, mels, frames)
        mel_x, _ = log_mel(x.float(), self.sample_rate)
        centres = torch.arange(mel_x.shape[-1], device=m.device) * hop
        mel_frames = m[:, centres.clamp(max=m.shape[1] - 1)] & (centres < m.shape[1])  # (B, frames)
        mel_diff = 10 * (mel_y - mel_x).abs() * mel_frames[:, None, :]
        return {
            "si_sdr_x_samples": float((si_sdr * count * audible).sum()),
            "si_sdr_samples": float((count * audible).sum()),
            "windows": float(len(count)),
            "silent_windows": float((~audible & (count > 0)).sum()),
            "signal_energy": float(energy.sum()),
            "error_energy": float(error.sum()),
            "abs_error": float((y - x).abs().sum()),
            "samples": float(count.sum()),
            "log_mel_abs_db": float(mel_diff.sum()),
            "log_mel_cells": float(mel_frames.sum()) * mel_x.shape[1],
        }

    def metric_values(self, totals: dict[str, float]) -> dict[str, float]:
        """si_sdr: per-window SI-SDR (dB, capped at +-100) averaged over non-silent windows, weighted by their
        real samples (NaN when every window is silent); snr: 10 log10(signal energy / error energy) pooled
        over every sample (NaN for pure silence); log_mel_distance: mean |difference| of 10 log10 mel power
        (80 bands) in dB; mae: mean absolute sample error (full scale 1)."""
        nan = float("nan")
        get = totals.get
        signal, error = get("signal_energy", 0.0), get("error_energy", 0.0)
        if signal <= 0:
            snr = nan
        else:
            snr = min(SISDR_CAP, 10 * math.log10(signal / error)) if error > 0 else SISDR_CAP
        return {
            self.metric_name: get("si_sdr_x_samples", 0.0) / get("si_sdr_samples", 0.0) if get("si_sdr_samples") else nan,
            "snr": snr,
            "log_mel_distance": get("log_mel_abs_db", 0.0) / get("log_mel_cells", 0.0) if get("log_mel_cells") else nan,
            "mae": get("abs_error", 0.0) / get("samples", 0.0) if get("samples") else nan,
            "silent_windows": get("silent_windows", 0.0),
        }

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """Model output (B, N, S + 1) with its last feature set to 1: the real share is not trained (the side
        information knows each channel's length), so a reconstructed frame counts as whole."""
        out = output.clone()
        out[..., self.frame_samples] = 1.0
        return out

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """Duration, loudness and a few samples (at the file's level) from the middle of a window's first frame."""
        s = self.frame_samples
        real = (window[:, s].float() * s).round().clamp(0, s).long() if window.shape[0] else torch.zeros(0)
        x = torch.cat([window[i, : int(k)].float() for i, k in enumerate(real)]) * self.gain if len(real) else torch.zeros(0)
        rms = float(x.square().mean().sqrt()) if len(x) else 0.0
        level = f"{20 * math.log10(rms):.1f} dBFS" if rms > 0 else "silence"
        text = f"{len(x) / self.sample_rate * 1000:.0f} ms, rms {level}: " + " ".join(f"{float(v):+.3f}" for v in x[s // 2 : s // 2 + 16])
        return text if len(text) <= limit else text[: limit - 3] + "..."

    # ---- reduction probe --------------------------------------------------------------------------------
    def classical_baselines(self) -> dict[str, Baseline]:
        """Two classical codecs at the model's budget of `floats` stored numbers per window:

        dct:    the window's real samples -> orthonormal DCT-II, keep the `floats` lowest coefficients,
                inverse DCT (the optimal linear low-pass code of one window, no learning);
        mu_law: the window resampled (FFT method) to `floats` samples, each mu-law companded to 8 bits,
                then resampled back: 8-bit mu-law at a reduced sample rate (G.711's idea), one stored
                number per latent float, so its bits equal the model's latents stored as int8.
        """
        return {"dct": self._dct_baseline, "mu_law_8bit": self._mu_law_baseline}

    def _baseline(self, windows: list[torch.Tensor], floats: list[int], codec) -> list[torch.Tensor]:
        s = self.frame_samples
        out = []
        for window, budget in zip(windows, floats):
            real = int((window[:, s].float() * s).round().sum())
            x = window[:, :s].float().reshape(-1)[:real] * self.gain  # at the file's level
            y = (codec(x, min(int(budget), real)) if real else x) / self.gain
            rebuilt = torch.zeros(len(window) * s)
            rebuilt[:real] = y
            out.append(torch.cat([rebuilt.view(len(window), s), window[:, s:].float()], dim=1))  # (L, S + 1)
        return out

    def _dct_baseline(self, train: list[torch.Tensor], test: list[torch.Tensor], floats: list[int]) -> list[torch.Tensor]:
        def codec(x: torch.Tensor, k: int) -> torch.Tensor:
            c = dct(x)
            c[k:] = 0
            return idct(c)

        return self._baseline(test, floats, codec)

    def _mu_law_baseline(self, train: list[torch.Tensor], test: list[torch.Tensor], floats: list[int]) -> list[torch.Tensor]:
        def codec(x: torch.Tensor, k: int) -> torch.Tensor:
            low = mu_law_decode(mu_law_encode(fourier_resample(x, max(k, 1))))
            return fourier_resample(low, len(x))

        return self._baseline(test, floats, codec)
