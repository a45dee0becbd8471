"""Signal processing for the audio domain: resampling (whole or streamed, by libsoxr through `soxr`), STFT
loss, mel, DCT, mu-law.

torchaudio is not used (docs/audio.md says why): the resampler is libsoxr's and the mel filterbank a few
dozen lines here. Every function takes and returns float tensors whose last dimension is time (samples)
unless its docstring says otherwise.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# ---- resampling -------------------------------------------------------------------------------------
# libsoxr's "high quality" preset: 20-bit precision (about 120 dB stop band), linear phase, the filter's delay
# removed. The model reconstructs far below 20 bits, so "VHQ" (28-bit) would only cost time.
SOXR_QUALITY = "HQ"


def resampled_length(length: int, orig_rate: int, new_rate: int) -> int:
    """Samples that `length` samples at orig_rate become at new_rate: ceil(length * new_rate / orig_rate), in
    exact integer arithmetic (the audio codec's rule for the model's samples, `AudioSettings.model_samples`)."""
    return -(-int(length) * int(new_rate) // int(orig_rate))


def resample(x: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling of x (..., T) from orig_rate to new_rate Hz by libsoxr (`SOXR_QUALITY`) ->
    float32 (..., resampled_length(T)); same rate: x itself. The rows go through one `Resampler`, so this is
    its streamed output for the signal pushed whole (see there for the length rule)."""
    if int(orig_rate) == int(new_rate):
        return x
    shape, length = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, length)
    stream = Resampler(orig_rate, new_rate, flat.shape[0])
    out = torch.cat([stream.push(flat), stream.finish()], dim=1)
    return out.reshape(*shape, out.shape[-1])


class Resampler:
    """Resampling of a signal that arrives in blocks, by a `soxr.ResampleStream`: `push(x)` takes the next
    samples (C, n) and returns the output samples (C, m) libsoxr has ready; `finish()` returns the rest. Memory
    is bounded by a block: libsoxr keeps its filter's history (a few tens of kB per channel), never the signal.

    Length rule: T samples pushed in all come out as exactly resampled_length(T) = ceil(T * new / orig)
    samples. libsoxr alone gives about round(T * new / orig) (rounded in floating point), at most one sample
    fewer, so `finish` first pushes ceil(orig / new) zero samples (the signal continued by silence, which
    makes at least one more output sample) and then cuts the output at the exact length. The concatenated
    outputs are the same whatever the block sizes: equal to `resample` of the whole signal up to float
    rounding (in practice bit for bit; tested)."""

    def __init__(self, orig_rate: int, new_rate: int, channels: int = 1) -> None:
        import soxr

        self.orig, self.new, self.channels = int(orig_rate), int(new_rate), int(channels)
        self.same = self.orig == self.new
        self.stream = None if self.same else soxr.ResampleStream(self.orig, self.new, self.channels,
                                                                 dtype="float32", quality=SOXR_QUALITY)
        self.inputs = 0  # input samples pushed per channel
        self.outputs = 0  # output samples returned per channel

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """The next input samples (C, n) -> the output samples (C, m) libsoxr has ready (float32)."""
        x = x.float()
        self.inputs += x.shape[1]
        if self.same:
            return x
        return self._emit(self.stream.resample_chunk(np.ascontiguousarray(x.numpy().T), last=False))

    def finish(self) -> torch.Tensor:
        """The last output samples (C, m): the total returned is then resampled_length(inputs pushed)."""
        if self.same:
            return torch.zeros(self.channels, 0)
        tail = np.zeros((-(-self.orig // self.new), self.channels), dtype=np.float32)
        return self._emit(self.stream.resample_chunk(tail, last=True), final=True)

    def _emit(self, y: np.ndarray, final: bool = False) -> torch.Tensor:
        """libsoxr's output (m, C) -> (C, m'), cut where the exact length ends (and zero-padded there when
        final, should libsoxr ever give less than the tail promises)."""
        target = resampled_length(self.inputs, self.orig, self.new)
        out = torch.from_numpy(np.ascontiguousarray(y.T))[:, : max(target - self.outputs, 0)]
        if final and self.outputs + out.shape[1] < target:
            out = F.pad(out, (0, target - self.outputs - out.shape[1]))
        self.outputs += out.shape[1]
        return out


def fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """x (..., T) cut or zero-padded at the end to (..., length)."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return F.pad(x, (0, length - x.shape[-1]))


# ---- STFT magnitudes and the multi-resolution STFT loss ----------------------------------------------
_POWER_FLOOR = 1e-10  # added to |S|^2 before the square root: finite gradients on silence, log floor 1e-5


def stft_magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """x (B, T) -> |STFT| (B, n_fft // 2 + 1, frames), Hann window, hop n_fft // 4, centred (zero padding)."""
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, center=True, pad_mode="constant",
                      return_complex=True)
    return torch.sqrt(spec.real.square() + spec.imag.square() + _POWER_FLOOR)


def frame_mask(mask: torch.Tensor, hop: int, frames: int) -> torch.Tensor:
    """Sample mask (B, T) -> STFT frame mask (B, frames): a frame counts when its centre sample is real."""
    centres = torch.arange(frames, device=mask.device) * hop
    return mask[:, centres.clamp(max=mask.shape[1] - 1)] & (centres < mask.shape[1])


def stft_sizes(length: int, sample_rate: int, sizes: tuple[int, ...] = (512, 1024, 2048)) -> list[int]:
    """The FFT sizes of the multi-resolution loss for windows of `length` samples: `sizes` are for 16 kHz and
    scale with the rate (rounded to powers of two); sizes longer than the window are dropped, and a window
    shorter than every size gets one FFT of the largest power of two that fits (none below 16 samples)."""
    scaled = sorted({2 ** round(math.log2(s * sample_rate / 16000)) for s in sizes})
    fitting = [s for s in scaled if s <= length]
    if fitting:
        return fitting
    if length < 16:
        return []
    return [2 ** int(math.log2(length))]


def multi_resolution_stft_loss(
    output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, sample_rate: int = 16000
) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over FFT sizes (`stft_sizes`).

    output, target (B, T) waveforms, mask (B, T) bool of real samples: both signals are zeroed outside the
    mask, and the log-magnitude term averages over frames whose centre is real. Spectral convergence is
    ||S_t - S_o||_F / ||S_t||_F over the whole batch (per window, a silent window would divide by ~0 and
    dominate the loss; the floor keeps an all-silent batch finite). Zero for identical signals; 0-dim tensor."""
    m = mask.to(output.dtype)
    out, tgt = output * m, target * m
    sizes = stft_sizes(int(mask.sum(1).max()) if mask.numel() else 0, sample_rate)
    if not sizes:
        return output.new_zeros(())
    total = output.new_zeros(())
    for n_fft in sizes:
        so, st = stft_magnitude(out, n_fft), stft_magnitude(tgt, n_fft)  # (B, bins, frames)
        fm = frame_mask(mask, n_fft // 4, st.shape[-1]).to(output.dtype)[:, None, :]  # (B, 1, frames)
        diff = ((st - so) * fm).square().sum()
        energy = (st * fm).square().sum()
        convergence = torch.sqrt(diff + 1e-12) / torch.sqrt(energy + 1e-6)
        log_mag = ((st.log() - so.log()).abs() * fm).sum() / (fm.sum() * st.shape[1]).clamp(min=1)
        total = total + convergence + log_mag
    return total / len(sizes)


# ---- mel filterbank --------------------------------------------------------------------------------
def _hz_to_mel(f):
    return 2595.0 * torch.log10(1.0 + f / 700.0) if isinstance(f, torch.Tensor) else 2595.0 * math.log10(1.0 + f / 700.0)


@lru_cache(maxsize=8)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-scale mel filters (n_mels, n_fft // 2 + 1) from 0 Hz to Nyquist, peak 1 (no area
    normalisation), the same shape as torchaudio's melscale_fbanks(norm=None, mel_scale="htk")."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (bins,)
    mels = torch.linspace(0.0, _hz_to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)  # (n_mels + 2,) band edges
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]  # (n_mels, 1)
    rise = (freqs[None] - lower) / (centre - lower)
    fall = (upper - freqs[None]) / (upper - centre)
    return torch.clamp(torch.minimum(rise, fall), min=0.0).float()


def log_mel(x: torch.Tensor, sample_rate: int, n_mels: int = 80) -> tuple[torch.Tensor, int]:
    """x (B, T) -> log10 mel power (B, n_mels, frames) (floor 1e-5) and the hop; FFT 1024 at 16 kHz,
    scaled with the rate, hop a quarter of it."""
    n_fft = 2 ** round(math.log2(1024 * sample_rate / 16000))
    power = stft_magnitude(x, n_fft).square()  # (B, bins, frames)
    mel = torch.einsum("mf,bft->bmt", mel_filterbank(n_fft, n_mels, sample_rate).to(x.device), power)
    return torch.log10(mel + 1e-5), n_fft // 4


# ---- classical codecs: DCT and mu-law ----------------------------------------------------------------
def dct(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last dimension (scipy.fft.dct(x, norm="ortho")), via one FFT."""
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1).double()  # (..., N) even samples, odd reversed
    k = torch.arange(n, dtype=torch.float64, device=x.device)
    spec = torch.fft.fft(v) * torch.exp(-1j * math.pi * k / (2 * n))
    out = spec.real * math.sqrt(2.0 / n)
    out[..., 0] /= math.sqrt(2.0)
    return out.to(x.dtype)


def idct(c: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct` (orthonormal DCT-III) along the last dimension."""
    n = c.shape[-1]
    k = torch.arange(n, dtype=torch.float64, device=c.device)
    scaled = c.double() * math.sqrt(2.0 * n)
    scaled[..., 0] /= math.sqrt(2.0)
    v = torch.fft.ifft(scaled * torch.exp(1j * math.pi * k / (2 * n))).real  # (..., N) the reordered samples
    out = torch.empty_like(v)
    half = (n + 1) // 2
    out[..., ::2] = v[..., :half]
    out[..., 1::2] = v[..., half:].flip(-1)
    return out.to(c.dtype)


def mu_law_encode(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """x in [-1, 1] -> integer codes 0 .. levels - 1 (G.711-style companding, mu = levels - 1)."""
    mu = levels - 1
    y = torch.sign(x) * torch.log1p(mu * x.clamp(-1, 1).abs()) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).floor().clamp(0, mu).long()


def mu_law_decode(codes: torch.Tensor, levels: int = 256) -> torch.Tensor:
    mu = levels - 1
    y = codes.float() / mu * 2 - 1
    return torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu


def fourier_resample(x: torch.Tensor, length: int) -> torch.Tensor:
    """Ideal (periodic) band-limited resampling of x (T,) to `length` samples by cutting or zero-padding
    its spectrum (scipy.signal.resample's method)."""
    t = x.shape[-1]
    if length == t:
        return x.clone()
    spec = torch.fft.rfft(x.double())
    keep = min(len(spec), length // 2 + 1)
    new = torch.zeros(length // 2 + 1, dtype=spec.dtype)
    new[:keep] = spec[:keep]
    if length > t and t % 2 == 0:
        new[t // 2] = new[t // 2] / 2  # the old Nyquist bin splits between +f and -f when upsampling
    return (torch.fft.irfft(new, n=length) * (length / t)).to(x.dtype)
