"""Audio domain: WAV/FLAC files <-> frames of the waveform at the model's sample rate, SI-SDR.

Every channel of a file is its own sequence (one mono model serves any channel count). The file is read
in blocks; each block is resampled to the model rate (default 16 kHz) by a streaming resampler (libsoxr,
`audio_signal.Resampler`), cut into non-overlapping frames of `frame_ms` (default 20 ms = 320 samples), and
the frames into windows of seq_len frames (the last one shorter):

    file (T, C) at rate r, block by block -> (C, n) at the model rate, n = ceil(T * rate / r) in all
    -> time steps of seq_len frames: one window (seq_len, S + 1) per channel, channel 0 first
    -> the last step: zero-padded to whole frames, each frame's share of real samples appended

The last feature of a frame vector (1 for a full frame, k / S for a last frame of k real samples) tells
the loss and the metrics which samples are padding. The writer takes the windows back to the file's own
rate block by block (n model samples become ceil(n * r / rate) >= T samples, the same rule) and writes the
first T of them, with the input's channel count, format and subtype. docs/audio.md
describes the design, the bit-rate accounting and every edge case.

Pieces (`AudioCodec.iter_windows`): the windows in time steps, channel after channel within a step (window
k is channel k % C); at most 64 windows or 4 MB a piece. The first piece's side describes the file
(`FILE_KEYS`), the last one's (possibly the same piece) adds the input's `peak` and
`near_full_scale_samples`; the others are empty. A format-1 file's side becomes one piece flagged
`"layout": "channel-major"` (all windows of channel 0, then of channel 1, ...), written whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from seqcompress.domain import (
    Codec, Domain, Objective, Piece, Settings, SideCheck, Writer, bundled, check_data_paths, option, shorten,
)
from seqcompress.domains.audio_signal import Resampler, dct, fit_length, log_mel, multi_resolution_stft_loss, resample
from seqcompress.errors import FormatError, InputError
from seqcompress.memory import Link

SILENCE_POWER = 1e-10  # mean square below this (-100 dBFS): a silent window, SI-SDR undefined and skipped
NEAR_FULL_SCALE = 0.99  # |sample| at or above: counted in the side information as a sign of clipping
SISDR_CAP = 100.0  # dB: a window reconstructed exactly would be +inf
# Hz: the highest rate of common audio (DXD, 705.6 and 768 kHz). It also bounds what the writer makes of one
# model sample (48 samples at 16 kHz), and so what a small .sqz can claim to expand to.
MAX_FILE_RATE = 768_000
MAX_CHANNELS = 1024  # libsndfile's own limit (a WAV header may claim up to 65,535)
# Channels x the samples one sample becomes when resampled either way between the file's and the model's rate
# (`resampling_stretch`): the least a block of resampled audio holds (a block is at least one sample per
# channel). 4 MB: a stereo file may have any rate; 1,024 channels need a rate within 1,024 times the model's.
MAX_STRETCHED_SAMPLES = 1 << 20
MAX_RIFF_CHUNKS = 1024  # chunks of a WAV file walked to find its "fmt " and "data" chunks
BLOCK_SAMPLES = 1 << 16  # samples (all channels together) in a block, before and after resampling
PIECE_WINDOWS = 64  # windows per piece at most
PIECE_BYTES = 4 << 20  # window floats (4 bytes each) per piece at most (a piece holds at least one window)
# Subtypes whose samples are integers: values beyond [-1, 1] are clipped when written.
_FLOAT_SUBTYPES = frozenset(["FLOAT", "DOUBLE"])
# The formats an output suffix may hold (the input's is kept when listed, else the first is written).
_SUFFIX_FORMATS = {".wav": ("WAV", "WAVEX"), ".flac": ("FLAC",)}
# Bytes per sample of the uncompressed subtypes: a header claiming more samples than the file holds is refused
# before anything is read. FLAC, Ogg and MPEG pack theirs, so only the read itself finds out.
_SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8, "ULAW": 1,
                 "ALAW": 1}
_PACKED_FORMATS = frozenset(["FLAC", "OGG", "MPEG"])
_WAVE_FORMAT_PCM, _WAVE_FORMAT_EXTENSIBLE = 1, 0xFFFE  # fmt chunk format tags
_SIDE = SideCheck("audio")
_FLAC_SUBTYPE = {"PCM_U8": "PCM_S8", "PCM_32": "PCM_24", "FLOAT": "PCM_24", "DOUBLE": "PCM_24"}
# The side keys that describe a file (the first piece's side).
FILE_KEYS = ("sample_rate", "channels", "frames", "format", "subtype", "model_rate", "frame_samples", "model_samples")


# ---- settings ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AudioSettings(Settings):
    """The model's rate and frame, the loss weights, and the learned level. Saved states of the old domain
    (keys name, sample_rate, frame_ms, l1_weight, stft_weight, scale, features) load as they are."""

    sample_rate: int = option(16000, "the model's sample rate in Hz; files are resampled to it and back")
    frame_ms: float = option(20.0, "frame length in milliseconds: sample_rate * frame_ms / 1000 samples a frame")
    l1_weight: float = option(1.0, "weight of the waveform L1 loss")
    stft_weight: float = option(0.1, "weight of the multi-resolution STFT loss")
    scale: float | None = option(None, "the RMS level of the training audio; the model sees samples / scale",
                                 learned=True)

    def __post_init__(self) -> None:
        # JSON and older states give 25 for 25.0 and 16000.0 for 16000: keep the declared types
        for name in ("frame_ms", "l1_weight", "stft_weight", "scale"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        if isinstance(self.sample_rate, float) and self.sample_rate.is_integer():
            object.__setattr__(self, "sample_rate", int(self.sample_rate))
        super().__post_init__()

    def validate(self) -> None:
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or not 1000 <= rate <= 384000:
            raise InputError(f"sample_rate must be a whole number of Hz from 1000 to 384000, got {rate!r}")
        if not isinstance(self.frame_ms, float) or not self.frame_ms > 0:
            raise InputError(f"frame_ms must be a positive number of milliseconds, got {self.frame_ms!r}")
        samples = rate * self.frame_ms / 1000
        if abs(samples - round(samples)) > 1e-9 or round(samples) < 1:
            raise InputError(f"frame_ms: a frame of {self.frame_ms:g} ms at {rate} Hz is {samples:g} samples; choose "
                             "a frame length that is a whole number of samples (e.g. 20 ms at 16 kHz = 320)")
        weights = (self.l1_weight, self.stft_weight)
        if not all(isinstance(w, float) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise InputError(f"l1_weight and stft_weight must be non-negative and not both zero, got {weights}")
        scale = self.scale
        if scale is not None and not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
            raise InputError(f"scale must be a positive number, got {self.scale!r}")

    @property
    def frame_samples(self) -> int:
        """S: samples per frame at the model rate."""
        return int(round(self.sample_rate * self.frame_ms / 1000))

    @property
    def gain(self) -> float:
        """What samples are divided by before the model sees them (1 until `learn`)."""
        return self.scale or 1.0

    def model_samples(self, frames: int, rate: int) -> int:
        """Samples at the model rate of a channel of `frames` samples at `rate` Hz: ceil(frames * model / rate)."""
        return -(-frames * self.sample_rate // rate)


# ---- reading files in blocks -----------------------------------------------------------------------------
def resampling_stretch(rate: int, model_rate: int) -> int:
    """The most samples one sample per channel becomes when resampled between `rate` and `model_rate` Hz, either
    way: ceil(max(rate / model_rate, model_rate / rate)); 1 for equal rates."""
    return max(-(-rate // model_rate), -(-model_rate // rate))


def layout_problem(rate: int, channels: int, model_rate: int) -> str | None:
    """What makes audio of `channels` channels at `rate` Hz too much for a model at `model_rate` Hz (a rate or a
    channel count beyond the caps, or a block that cannot stay below MAX_STRETCHED_SAMPLES once resampled), or
    None. The reader and the writer ask the same question, so whatever encodes also decodes."""
    if not 1 <= rate <= MAX_FILE_RATE:
        return f"a sample rate of {rate:,} Hz; rates from 1 Hz to {MAX_FILE_RATE:,} Hz can be compressed"
    if not 1 <= channels <= MAX_CHANNELS:
        return f"{channels:,} channels; 1 to {MAX_CHANNELS:,} can be compressed"
    stretched = channels * resampling_stretch(rate, model_rate)
    if stretched > MAX_STRETCHED_SAMPLES:
        return (f"{channels:,} channels at {rate:,} Hz; resampling that many channels from and to {model_rate:,} Hz "
                f"turns one sample of each into {stretched:,} samples, more than {MAX_STRETCHED_SAMPLES:,} (use fewer "
                "channels or a rate nearer the model's)")
    return None


def _riff_chunks(path: Path) -> Iterator[tuple[bytes, int, int, BinaryIO]]:
    """(id, offset of the body, declared length, the open file) of each chunk of a RIFF WAVE file, in order, at
    most MAX_RIFF_CHUNKS of them; nothing for another kind of file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        for _ in range(MAX_RIFF_CHUNKS):
            if pos + 8 > size:
                return
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            yield chunk, pos + 8, length, f
            pos += 8 + length + (length & 1)


def wav_truncation(path: Path) -> tuple[int, int] | None:
    """(bytes the WAV header declares for its data chunk, bytes present) when the file is cut short, else
    None. A size of 0 or 0xFFFFFFFF (written by streaming tools that cannot seek back) is not a promise."""
    size = path.stat().st_size
    for chunk, body, length, _ in _riff_chunks(path):
        if chunk == b"data":
            present = size - body
            return (length, present) if 0 < length < 0xFFFFFFFF and length > present else None
    return None


def wav_channel_mask(path: Path) -> int | None:
    """The speaker mask (dwChannelMask) of a WAVE_FORMAT_EXTENSIBLE file's fmt chunk; None for other files."""
    for chunk, body, length, f in _riff_chunks(path):
        if chunk == b"fmt ":
            f.seek(body)
            fmt = f.read(24)
            if length < 24 or len(fmt) < 24 or struct.unpack_from("<H", fmt)[0] != _WAVE_FORMAT_EXTENSIBLE:
                return None
            return struct.unpack_from("<I", fmt, 20)[0]
    return None


def _unreadable(path: Path, exc: Exception) -> InputError:
    detail = str(exc).split(": ", 1)[-1].strip().rstrip(".") if ": " in str(exc) else str(exc)
    return InputError(f"{path} is not a readable audio file (WAV, FLAC or another format libsndfile reads): {detail}")


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header declares."""

    sample_rate: int
    channels: int
    frames: int  # samples per channel
    format: str  # libsndfile's major format: "WAV", "FLAC", ...
    subtype: str  # "PCM_16", "FLOAT", ...


class AudioReader:
    """An audio file opened for streaming: its header checked at once (`info`; against a model at `model_rate`
    Hz), its samples read by `blocks`. `channel_mask`: a WAVE_FORMAT_EXTENSIBLE file's speaker mask, else
    None. Use as a context manager; InputError for anything unreadable."""

    def __init__(self, path: Path, model_rate: int = 16000) -> None:
        import soundfile as sf

        self.path, self.model_rate = Path(path), model_rate
        check_data_paths([self.path])
        try:
            self.sound = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise _unreadable(self.path, exc) from None
        try:
            self.info = AudioInfo(int(self.sound.samplerate), int(self.sound.channels), int(self.sound.frames),
                                  str(self.sound.format), str(self.sound.subtype))
            self._check_header()
            self.channel_mask = wav_channel_mask(self.path) if self.info.format == "WAVEX" else None
        except BaseException:
            self.sound.close()
            raise

    def _check_header(self) -> None:
        """Refuse what the header declares before a sample is read: a truncated data chunk, no frames, a rate
        or channel count beyond the caps (`layout_problem`, at the model's rate), more samples than the file
        can hold."""
        info, path = self.info, self.path
        if info.format in ("WAV", "WAVEX") and (cut := wav_truncation(path)):
            declared, present = cut
            raise InputError(f"{path} is truncated: its header declares {declared:,} bytes of samples but only "
                             f"{present:,} are present (an interrupted copy or download?)")
        if info.frames <= 0:
            raise InputError(f"{path} holds no audio samples (0 frames)")
        if problem := layout_problem(info.sample_rate, info.channels, self.model_rate):
            raise InputError(f"{path} declares {problem}")
        width, size = _SAMPLE_BYTES.get(info.subtype), path.stat().st_size
        if width and info.format not in _PACKED_FORMATS and info.frames * info.channels * width > size:
            raise InputError(f"{path} is truncated or corrupted: its header declares {info.frames:,} samples per "
                             f"channel ({info.frames * info.channels * width:,} bytes) but the file has {size:,} bytes")

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sound.close()

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        """The samples in blocks (at most `frames`, C) float64, in [-1, 1] for integer formats (soundfile's
        scaling). InputError for a non-finite sample or fewer samples than the header declared."""
        import soundfile as sf

        done = 0
        while True:
            try:
                block = self.sound.read(frames, dtype="float64", always_2d=True)  # (t, C)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise _unreadable(self.path, exc) from None
            if len(block) == 0:
                break
            if not np.isfinite(block).all():
                self._refuse_non_finite(block, done)
            done += len(block)
            yield block
        if done != self.info.frames:
            raise InputError(f"{self.path} is truncated: its header declares {self.info.frames:,} samples per "
                             f"channel but only {done:,} could be read")

    def _refuse_non_finite(self, block: np.ndarray, start: int) -> None:
        """Raise for the first NaN or infinity of `block` (which begins at sample `start`), counting the
        non-finite samples of the whole file (the rest is scanned block by block)."""
        bad = ~np.isfinite(block)
        frame, channel = (int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(block[frame, channel]) else "an infinite value"
        count, frames = int(bad.sum()), max(1, BLOCK_SAMPLES // self.info.channels)
        while len(rest := self.sound.read(frames, dtype="float64", always_2d=True)):
            count += int((~np.isfinite(rest)).sum())
        raise InputError(f"{self.path}: channel {channel + 1}, sample {start + frame + 1} is {kind}; only finite "
                         f"samples can be compressed ({count:,} non-finite sample(s) in all)")


def block_frames(channels: int, rate: int, model_rate: int) -> int:
    """Input samples per channel read (or resampled) at once: BLOCK_SAMPLES samples in all at `rate`, and no
    more than BLOCK_SAMPLES in all once resampled to `model_rate` (a 1 Hz file becomes 16,000 times longer);
    at least one. One sample per channel becomes at most MAX_STRETCHED_SAMPLES (`layout_problem`)."""
    return max(1, min(BLOCK_SAMPLES // channels, BLOCK_SAMPLES * rate // (model_rate * channels)))


class _CountingSink:
    """A seekable write-only file that keeps no bytes, only the size of what was written (for libsndfile)."""

    def __init__(self) -> None:
        self.pos = 0
        self.size = 0

    def write(self, data: bytes) -> int:
        self.pos += len(data)
        self.size = max(self.size, self.pos)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, count: int = -1) -> bytes:
        return b""


# ---- codec ---------------------------------------------------------------------------------------------
class AudioCodec(Codec):
    """Audio files <-> windows (L, S + 1) of frames at the model rate, streamed (see the module docstring)."""

    suffix = ".wav"
    settings: AudioSettings

    # ---- windows <-> waveforms (also what a probe-side baseline codec uses) ------------------------------
    def window_waveform(self, window: torch.Tensor) -> torch.Tensor:
        """One window (L, S + 1) -> its real samples (k,) at the file's level (times scale), read from the
        real-share feature (use it on input windows; a prediction counts every frame as whole)."""
        s = self.settings.frame_samples
        real = int((window[:, s].float() * s).round().sum()) if len(window) else 0
        return window[:, :s].float().reshape(-1)[:real] * self.settings.gain

    def waveform_window(self, samples: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of `window_waveform`: samples (k,) at the file's level -> a window shaped like `like`
        (L, S + 1), zero-padded after them, with `like`'s real-share feature."""
        s = self.settings.frame_samples
        rebuilt = torch.zeros(len(like) * s)
        rebuilt[: len(samples)] = samples.float() / self.settings.gain
        return torch.cat([rebuilt.view(len(like), s), like[:, s:].float()], dim=1)

    def windows_waveform(self, windows: list[torch.Tensor], samples: int) -> torch.Tensor:
        """Windows (L, S + 1) of one channel, in order -> its first `samples` samples (samples,) at the model
        rate, at the file's level (times scale)."""
        s = self.settings.frame_samples
        if any(w.ndim != 2 or w.shape[1] != s + 1 for w in windows):
            raise FormatError(f"audio windows must have {s + 1} features per frame")
        x = torch.cat([w[:, :s].float() for w in windows]).reshape(-1) if windows else torch.zeros(0)
        if len(x) != -(-samples // s) * s:
            raise FormatError(f"audio: {len(x) // s} frames decoded for a channel of {samples} samples "
                              f"({-(-samples // s)} frames of {s})")
        return x[:samples] * self.settings.gain

    def frame_windows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Model-rate samples (C, n) of one time step, already divided by scale -> one window (ceil(n / S),
        S + 1) per channel: the samples zero-padded to whole frames, then each frame's real share."""
        s = self.settings.frame_samples
        channels, n = x.shape
        frames = -(-n // s)
        padded = x.new_zeros(channels, frames * s)
        padded[:, :n] = x
        real = torch.ones(frames)
        real[-1] = (n - (frames - 1) * s) / s
        shares = real[None, :, None].expand(channels, frames, 1)
        return list(torch.cat([padded.view(channels, frames, s), shares], dim=2))  # C windows (frames, S + 1)

    # ---- files -> pieces -----------------------------------------------------------------------------------
    def iter_windows(self, path: Path, seq_len: int) -> Iterator[Piece]:
        """The windows of every channel, one time step of seq_len frames after another (channel 0 first in
        each), read, resampled and cut block by block."""
        if seq_len < 1:
            raise InputError(f"seq_len must be at least 1, got {seq_len}")
        settings = self.settings
        model_rate, s = settings.sample_rate, settings.frame_samples
        span = seq_len * s  # model samples per window
        per_piece = max(1, min(PIECE_WINDOWS, PIECE_BYTES // (4 * seq_len * (s + 1))))
        with AudioReader(Path(path), model_rate) as reader:
            info = reader.info
            n = settings.model_samples(info.frames, info.sample_rate)
            side: dict = {**dataclasses.asdict(info), "model_rate": model_rate, "frame_samples": s, "model_samples": n}
            if reader.channel_mask is not None:
                side["channel_mask"] = reader.channel_mask
            resampler = Resampler(info.sample_rate, model_rate, info.channels)
            pending = torch.zeros(info.channels, 0)  # (C, < span) model samples not yet in a window
            windows: list[torch.Tensor] = []
            sent = 0  # windows yielded so far: window i is channel i mod C (memory streams, `Piece.links`)

            def piece(count: int, side: dict) -> Piece:
                nonlocal sent
                links = [Link((sent + j) % info.channels) for j in range(count)]
                sent += count
                return Piece(windows[:count], side, links)

            peak, loud = 0.0, 0
            for block in reader.blocks(block_frames(info.channels, info.sample_rate, model_rate)):
                peak = max(peak, float(np.abs(block).max()))
                loud += int((np.abs(block) >= NEAR_FULL_SCALE).sum())
                x = resampler.push(torch.from_numpy(block.T).float()) / settings.gain  # (C, m)
                pending = torch.cat([pending, x], dim=1)
                while pending.shape[1] >= span:
                    windows += self.frame_windows(pending[:, :span])
                    pending = pending[:, span:]
                while len(windows) >= per_piece:
                    yield piece(per_piece, side)
                    windows, side = windows[per_piece:], {}
            pending = torch.cat([pending, resampler.finish() / settings.gain], dim=1)
            while pending.shape[1] > 0:  # at most a whole step and a shorter one
                windows += self.frame_windows(pending[:, :span])
                pending = pending[:, span:]
            while len(windows) > per_piece:
                yield piece(per_piece, side)
                windows, side = windows[per_piece:], {}
            yield piece(len(windows), {**side, "peak": peak, "near_full_scale_samples": loud})

    def legacy_pieces(self, side: dict, lengths: list[int]) -> Iterator[tuple[int, dict]]:
        """Format 1 kept every window of channel 0, then of channel 1, ...: one piece flagged channel-major,
        which the writer takes whole (format-1 files were held whole anyway)."""
        yield len(lengths), {**side, "layout": "channel-major"}

    def open_writer(self, file: BinaryIO, name: str, header: dict) -> Writer:
        return AudioWriter(self, file, name)

    def output_format(self, name: str, side: dict) -> tuple[str, str, str | None]:
        """(format, subtype, note) the writer uses: the input's own, unless the output's suffix (.wav, .flac)
        names another format; then the closest subtype that format holds, and a note saying so."""
        import soundfile as sf

        fmt, subtype = _SIDE.get(side, "format"), _SIDE.get(side, "subtype")
        if not isinstance(fmt, str) or not isinstance(subtype, str) or not sf.check_format(fmt, subtype):
            raise _SIDE.error(f"{fmt!r} {subtype!r} is not an audio format and subtype libsndfile writes")
        formats = _SUFFIX_FORMATS.get(Path(name).suffix.lower())
        if formats is None or fmt in formats:  # WAVEX stays WAVEX in a .wav file
            return fmt, subtype, None
        wanted = formats[0]
        new_subtype = subtype if sf.check_format(wanted, subtype) else _FLAC_SUBTYPE.get(subtype, "PCM_16")
        if not sf.check_format(wanted, new_subtype):
            new_subtype = "PCM_16"
        return wanted, new_subtype, f"written as {wanted} {new_subtype} (the output name's suffix), not {fmt} {subtype}"

    def references(self, path: Path, symbols: int) -> dict[str, float]:
        """Bits per frame of 16-bit PCM at the model rate and of the input resampled to the model rate as
        16-bit FLAC (libsndfile's default compression), measured by encoding it block by block into a sink
        that only counts bytes."""
        import soundfile as sf

        model_rate = self.settings.sample_rate
        rate = f"{model_rate / 1000:g} kHz"
        refs = {f"16-bit PCM at {rate}": 16.0 * self.settings.frame_samples}
        if symbols <= 0:
            return refs
        sink = _CountingSink()
        with AudioReader(Path(path), model_rate) as reader:
            info = reader.info
            resampler = Resampler(info.sample_rate, model_rate, info.channels)
            with sf.SoundFile(sink, "w", samplerate=model_rate, channels=info.channels, format="FLAC",
                              subtype="PCM_16") as flac:
                for block in reader.blocks(block_frames(info.channels, info.sample_rate, model_rate)):
                    flac.write(np.clip(resampler.push(torch.from_numpy(block.T).float()).T.double().numpy(), -1, 1))
                flac.write(np.clip(resampler.finish().T.double().numpy(), -1, 1))
        refs[f"FLAC of the input at {rate}, 16-bit"] = 8.0 * sink.size / symbols
        return refs


class AudioWriter(Writer):
    """Windows -> an audio file with the input's rate, channel count, exact length, format and subtype (values
    clipped to [-1, 1] for integer subtypes). Holds at most one time step's windows: each complete step is
    resampled to the file's rate and written at once."""

    def __init__(self, codec: AudioCodec, file: BinaryIO, name: str) -> None:
        self.codec, self.settings, self.file, self.name = codec, codec.settings, file, name
        self.sound: Any = None  # the soundfile.SoundFile being written, once the file's side arrived
        self.step: list[torch.Tensor] = []  # windows of the time step being collected (fewer than channels)
        self.frames_done = 0  # frames per channel received in complete time steps
        self.written = 0  # samples per channel written
        self.legacy = False  # a format-1 channel-major piece: written whole
        self.notes: list[str] = []

    def write(self, windows: list[torch.Tensor], side: dict) -> None:
        try:
            if not isinstance(side, dict):
                raise _SIDE.error(f"expected a JSON object, got {type(side).__name__}")
            if any(key in side for key in FILE_KEYS):
                self._begin(side)
            if windows and self.sound is None:
                raise FormatError("audio windows arrived before the side information that describes their file")
            s = self.settings.frame_samples
            if any(w.ndim != 2 or w.shape[1] != s + 1 for w in windows):
                raise FormatError(f"audio windows must have {s + 1} features per frame")
            if self.legacy:
                self._write_channel_major(windows)
                return
            for window in windows:
                self.step.append(window)
                if len(self.step) == self.channels:
                    self._write_step()
        except BaseException:
            self._abandon()
            raise

    def close(self) -> dict:
        try:
            if self.sound is None:
                raise FormatError("audio: no side information describes the file to write")
            expected = -(-self.model_samples // self.settings.frame_samples)
            if self.frames_done != expected or self.step:
                raise FormatError(f"audio side information describes {self.channels} channel(s) of {expected} frames, "
                                  f"but {self.frames_done} frames per channel (and {len(self.step)} windows of an "
                                  "unfinished time step) were decoded; windows were decoded for another file")
            if not self.legacy:
                self._write_samples(self.resampler.finish())
            while self.written < self.frames:  # the resampled length fell short of the file's: zero-pad
                self._write_samples(torch.zeros(self.channels, min(self.frames - self.written, BLOCK_SAMPLES)))
        except BaseException:
            self._abandon()
            raise
        with self._libsndfile():
            self.sound.close()
        return {"note": "; ".join(self.notes)} if self.notes else {}

    @contextlib.contextmanager
    def _libsndfile(self) -> Iterator[None]:
        """libsndfile's refusals (a format it reads but cannot write, like MPEG layer I) as a FormatError."""
        import soundfile as sf

        try:
            yield
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise FormatError(f"audio: libsndfile cannot write {self.name} as {self.format} {self.subtype} "
                              f"({str(exc).split(': ')[-1].strip().rstrip('.')})") from None

    def _begin(self, side: dict) -> None:
        """Check the file's description against the model and the caps before anything is sized by it, then
        open the output."""
        import soundfile as sf

        if self.sound is not None:
            raise FormatError("audio side information describes a second file inside one")
        settings = self.settings
        with _SIDE.guard():
            if int(side["model_rate"]) != settings.sample_rate or int(side["frame_samples"]) != settings.frame_samples:
                raise FormatError(f"the latents hold {side['frame_samples']}-sample frames at {side['model_rate']} Hz; "
                                  f"this model uses {settings.frame_samples} at {settings.sample_rate} Hz")
        self.rate = _SIDE.integer(_SIDE.get(side, "sample_rate"), "the sample rate", 1)
        self.channels = _SIDE.integer(_SIDE.get(side, "channels"), "the channel count", 1)
        if problem := layout_problem(self.rate, self.channels, settings.sample_rate):
            raise _SIDE.error(f"it declares {problem}")
        self.frames = _SIDE.integer(_SIDE.get(side, "frames"), "the frame count", 1)
        self.model_samples = _SIDE.integer(_SIDE.get(side, "model_samples"), "the model sample count", 1)
        if self.model_samples != settings.model_samples(self.frames, self.rate):
            raise _SIDE.error(f"{self.channels} channel(s) of {self.frames:,} samples at {self.rate:,} Hz cannot be "
                              f"{self.model_samples:,} samples at {settings.sample_rate:,} Hz")
        fmt, self.subtype, note = self.codec.output_format(self.name, side)
        self.format = fmt
        self.legacy = side.get("layout") == "channel-major"
        self.counts = [_SIDE.integer(k, "a channel's window count") for k in
                       _SIDE.array(_SIDE.get(side, "windows_per_channel"), "windows_per_channel", self.channels)] \
            if self.legacy else []
        mask = side.get("channel_mask")
        mask = _SIDE.integer(mask, "the channel mask", 0, 0xFFFFFFFF) if mask is not None and fmt == "WAVEX" else None
        if self.rate > settings.sample_rate:
            self.notes.append(f"the model works at {settings.sample_rate} Hz, so the output holds nothing above "
                              f"{settings.sample_rate // 2} Hz")
        if note:
            self.notes.append(note)
        self.resampler = Resampler(settings.sample_rate, self.rate, self.channels)
        # Model samples per channel resampled at once: at most BLOCK_SAMPLES in all, at the model's rate and once
        # at the file's.
        self.block = block_frames(self.channels, settings.sample_rate, self.rate)
        target = _WavHeaderFix(self.file, mask) if fmt in ("WAV", "WAVEX") else self.file
        with self._libsndfile():
            self.sound = sf.SoundFile(target, "w", samplerate=self.rate, channels=self.channels,
                                      subtype=self.subtype, format=fmt)

    def _write_step(self) -> None:
        """The collected windows (one per channel, the same length) -> samples at the file's rate, written."""
        s = self.settings.frame_samples
        frames = len(self.step[0])
        if any(len(w) != frames for w in self.step):
            raise FormatError(f"audio windows of one time step differ in length: {[len(w) for w in self.step]}")
        real = min(frames * s, self.model_samples - self.frames_done * s)  # the padding of a last frame dropped
        if real <= 0:
            raise FormatError(f"audio: more frames decoded than the {self.model_samples} samples of each channel")
        x = torch.stack([w[:, :s].float().reshape(-1)[:real] for w in self.step]) * self.settings.gain  # (C, real)
        self.step, self.frames_done = [], self.frames_done + frames
        for start in range(0, real, self.block):
            self._write_samples(self.resampler.push(x[:, start : start + self.block]))

    def _write_channel_major(self, windows: list[torch.Tensor]) -> None:
        """A format-1 piece: each channel whole, resampled whole (exactly as format 1 decoded it)."""
        if self.frames_done:
            raise FormatError("audio: a format-1 piece arrived in parts; it must come whole")
        if len(self.counts) != self.channels or sum(self.counts) != len(windows):
            raise FormatError(f"audio side information describes {sum(self.counts)} windows in {len(self.counts)} "
                              f"channel(s), but {len(windows)} windows were decoded")
        s = self.settings.frame_samples
        frames, start = -(-self.model_samples // s), 0
        for c, count in enumerate(self.counts):  # every channel's length, before the whole output is allocated
            decoded = sum(len(w) for w in windows[start : start + count])
            if decoded != frames:
                raise FormatError(f"audio: {decoded:,} frames decoded for a channel of {self.model_samples:,} samples "
                                  f"({frames:,} frames of {s})")
            start += count
        out = np.zeros((self.frames, self.channels), dtype=np.float64)
        start = 0
        for c, count in enumerate(self.counts):
            x = self.codec.windows_waveform(windows[start : start + count], self.model_samples)  # (n,) model rate
            start += count
            out[:, c] = fit_length(resample(x, self.settings.sample_rate, self.rate), self.frames).double().numpy()
        self.frames_done = frames
        self._write_samples(torch.from_numpy(out.T))

    def _write_samples(self, y: torch.Tensor) -> None:
        """Samples (C, m) at the file's rate -> the file, cut at its exact length."""
        keep = min(y.shape[1], self.frames - self.written)
        if keep <= 0:
            return
        out = y[:, :keep].T.double().numpy()  # (keep, C)
        if self.subtype not in _FLOAT_SUBTYPES:
            out = np.clip(out, -1.0, 1.0)  # libsndfile would wrap out-of-range values around
        with self._libsndfile():
            self.sound.write(out)
        self.written += keep

    def _abandon(self) -> None:
        """Close the sound file after a failure (the caller discards the output)."""
        if self.sound is not None and not self.sound.closed:
            self.sound.close()


class _WavHeaderFix(_CountingSink):
    """The file a WAV is written into, through libsndfile, with two fixes to the header libsndfile writes (first
    and again with the final sizes when it closes, each time in one write at offset 0):

    - a plain WAV of IEEE float samples gets the fmt extension WAVEFORMATEX requires of every format tag but
      PCM (cbSize = 0: two bytes), which libsndfile leaves out and `soxi` warns about; every byte after the
      16-byte fmt chunk then sits two bytes later in the file;
    - a WAVE_FORMAT_EXTENSIBLE file gets `channel_mask` (the input's speaker mask) instead of the one
      libsndfile derives from the channel count.

    A header of another layout is written unchanged."""

    _BODY = 20  # offset of the fmt chunk's body: after "RIFF", its size, "WAVE", "fmt " and the chunk's size
    _END = 36  # end of a 16-byte fmt body: where the extension goes

    def __init__(self, file: BinaryIO, channel_mask: int | None) -> None:
        super().__init__()  # pos and size: libsndfile's view of the file, without the inserted bytes
        self.file, self.mask = file, channel_mask
        self.shift = 0  # bytes inserted after _END

    def write(self, data: bytes) -> int:
        data = bytes(data)
        if self.pos == 0:
            self.file.seek(0)
            self.file.write(self._fixed(data))
        else:
            self.file.seek(self.pos + (self.shift if self.pos >= self._END else 0))
            self.file.write(data)
        return super().write(data)

    def _fixed(self, head: bytes) -> bytes:
        if len(head) < self._END or head[:4] != b"RIFF" or head[8:16] != b"WAVEfmt ":
            return head
        fmt_size, tag = struct.unpack_from("<IH", head, 16)
        if fmt_size == 16 and tag != _WAVE_FORMAT_PCM:
            self.shift = 2
            riff = min(struct.unpack_from("<I", head, 4)[0] + 2, 0xFFFFFFFF)
            fmt_chunk = b"fmt " + struct.pack("<I", 18) + head[self._BODY : self._END] + b"\x00\x00"
            return b"RIFF" + struct.pack("<I", riff) + b"WAVE" + fmt_chunk + head[self._END :]
        if tag == _WAVE_FORMAT_EXTENSIBLE and fmt_size >= 24 and self.mask is not None and len(head) >= self._BODY + 24:
            return head[: self._BODY + 20] + struct.pack("<I", self.mask) + head[self._BODY + 24 :]
        return head


# ---- objective -----------------------------------------------------------------------------------------
class AudioObjective(Objective):
    """L1 + multi-resolution STFT loss on real samples; SI-SDR (headline), SNR, log-mel distance and MAE."""

    metric_name = "si_sdr"
    higher_is_better = True

    def __init__(self, settings: AudioSettings) -> None:
        self.settings = settings

    def _waveforms(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        """Output and target waveforms (B, N * S) and the mask (B, N * S) of real samples: padding frames
        (mask False) and the padded tail of a last frame (its real share < 1) are excluded."""
        s = self.settings.frame_samples
        b, n = target.shape[:2]
        real = (target[..., s].float() * s).round()  # (B, N) real samples per frame
        sample_mask = (torch.arange(s, device=target.device) < real[..., None]) & mask[..., None]  # (B, N, S)
        return (output[..., :s].float().reshape(b, n * s), target[..., :s].float().reshape(b, n * s),
                sample_mask.reshape(b, n * s))

    def loss_weight(self, target: torch.Tensor, mask: torch.Tensor) -> float:
        """The real samples: exact for the L1 term; the STFT term is a mean over frames of the spectrogram, so a
        batch split over processes weights it by samples, close to but not exactly as the whole batch does."""
        return float(self._waveforms(target, target, mask)[2].sum())

    def loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """l1_weight x mean |error| over real samples + stft_weight x multi-resolution STFT loss; the last
        feature (the real share) of the output is not trained."""
        y, x, m = self._waveforms(output, target, mask)
        l1 = ((y - x).abs() * m).sum() / m.sum().clamp(min=1)
        if self.settings.stft_weight == 0:
            return self.settings.l1_weight * l1
        stft = multi_resolution_stft_loss(y, x, m, self.settings.sample_rate)
        return self.settings.l1_weight * l1 + self.settings.stft_weight * stft

    def totals(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Sums over windows and real samples at the model rate: SI-SDR x samples of every non-silent window,
        signal and error energy, absolute error, and absolute log-mel differences (dB) over real mel frames."""
        y, x, m = self._waveforms(output, target, mask)
        mf = m.double()
        gain = self.settings.gain
        y, x = y.double() * mf * gain, x.double() * mf * gain  # at the file's level
        count = mf.sum(1)  # (B,)
        energy = x.square().sum(1)
        error = (y - x).square().sum(1)
        audible = energy > SILENCE_POWER * count.clamp(min=1)
        alpha = (y * x).sum(1) / energy.clamp(min=1e-300)  # (B,) optimal scale of the target
        projected = alpha.square() * energy
        residual = (y - alpha[:, None] * x).square().sum(1)
        si_sdr = (10 * torch.log10(projected.clamp(min=1e-300) / residual.clamp(min=1e-300))).clamp(-SISDR_CAP, SISDR_CAP)
        mel_y, hop = log_mel(y.float(), self.settings.sample_rate)  # (B, mels, frames)
        mel_x, _ = log_mel(x.float(), self.settings.sample_rate)
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

    def values(self, totals: dict[str, float]) -> dict[str, float]:
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
        out[..., self.settings.frame_samples] = 1.0
        return out


# ---- the domain ----------------------------------------------------------------------------------------
class AudioDomain(Domain):
    """Audio frames: each channel resampled to `sample_rate`, cut into frames of `frame_ms` milliseconds; the
    model sees samples / `scale` (learned by `learn`: the training audio's RMS level)."""

    name = "audio"
    settings_class = AudioSettings
    default_seq_len = 64  # frames: 1.28 s at 20 ms
    settings: AudioSettings

    def make_codec(self) -> AudioCodec:
        return AudioCodec(self.settings)

    def make_objective(self) -> AudioObjective:
        return AudioObjective(self.settings)

    def model_fields(self) -> dict:
        return {"feature_dim": self.settings.frame_samples + 1}

    def feature_basis(self) -> torch.Tensor:
        """A frame's orthonormal DCT-II (coefficient k of the frame's S samples in channel k, lowest first), then
        the real-share feature: a model started as the DCT (`--resize-init dct`) then keeps each frame's lowest
        latent_dim coefficients, a low-pass like the probe's `dct` codec, instead of its first samples."""
        s = self.settings.frame_samples
        basis = torch.zeros(s + 1, s + 1, dtype=torch.float64)
        basis[:s, :s] = dct(torch.eye(s, dtype=torch.float64)).T  # row k: the k-th DCT-II basis vector
        basis[s, s] = 1.0
        return basis

    def default_data(self) -> list[Path]:
        """The bundled sample: 5 s of espeak-ng speech, 16 kHz mono 16-bit FLAC (seqcompress/data/NOTICE.md)."""
        return [bundled("speech_sample.flac")]

    def learn(self, paths: list[Path], share: float = 1.0) -> "AudioDomain":
        """The RMS level of every training file's samples, pooled and read block by block: the model then sees
        unit-level audio, which it learns far faster than speech at its usual level of -20 to -30 dBFS.
        Silence only (or nothing to learn from): scale 1.

        With `share` < 1 each file's level comes from the samples before its first round(F * share) frames (F =
        ceil(model samples / frame_samples) frames per channel at the model rate): the samples at the file's
        rate up to that instant, in every channel (`learn_frames`). For a mono file that is exactly the probe's
        chronological cut; the probe's stream interleaves the channels of a longer file window by window, so
        there its cut may lie up to one window away in time from this one."""
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise InputError(f"share must be in (0, 1], got {share!r}")
        paths = check_data_paths([Path(p) for p in paths])
        if not paths:
            raise InputError("no data files to learn from")
        energy, count = 0.0, 0
        for path in paths:
            with AudioReader(path, self.settings.sample_rate) as reader:
                limit = self.learn_frames(reader.info, share)  # samples per channel learned from
                done = 0
                for block in reader.blocks(max(1, BLOCK_SAMPLES // reader.info.channels)):
                    block = block[: limit - done]
                    energy += float(np.square(block).sum())
                    count += block.size
                    done += len(block)
                    if share < 1 and done >= limit:  # the rest is never read (share 1: read to the end)
                        break
        rms = math.sqrt(energy / count) if count else 0.0
        return self.with_settings(scale=rms if rms > 1e-5 else 1.0)

    def learn_frames(self, info: AudioInfo, share: float = 1.0) -> int:
        """Samples per channel of a file (at its own rate) that `learn` reads for `share`: all of them for 1, else
        those before the instant of the first round(F * share) frames at the model rate (F: the file's frames
        per channel), ceil(k * file rate / model rate) for k model samples."""
        if share >= 1:
            return info.frames
        settings = self.settings
        s = settings.frame_samples
        frames = -(-settings.model_samples(info.frames, info.sample_rate) // s)
        k = round(frames * share) * s  # model samples
        return min(info.frames, -(-k * info.sample_rate // settings.sample_rate))

    def render(self, window: torch.Tensor, limit: int = 160) -> str:
        """Duration, loudness and a few samples (at the file's level) from the middle of a window's first frame."""
        s, sample_rate = self.settings.frame_samples, self.settings.sample_rate
        x = self.codec.window_waveform(window)
        rms = float(x.square().mean().sqrt()) if len(x) else 0.0
        level = f"{20 * math.log10(rms):.1f} dBFS" if rms > 0 else "silence"
        middle = " ".join(f"{float(v):+.3f}" for v in x[s // 2 : s // 2 + 16])
        return shorten(f"{len(x) / sample_rate * 1000:.0f} ms, rms {level}: {middle}", limit)
