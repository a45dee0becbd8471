"""Signal processing for the audio domain, in torch only: resampling, STFT loss, mel, DCT, mu-law.

torchaudio is not used (docs/audio.md says why): its only pieces this domain needs are a
resampler and a mel filterbank, both a few dozen lines here. Every function takes and returns
float tensors whose last dimension is time (samples) unless its docstring says otherwise.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

# ---- resampling -------------------------------------------------------------------------------------
_LOWPASS_WIDTH = 6  # zero crossings of the windowed sinc on each side
_ROLLOFF = 0.99  # cut-off as a share of the lower Nyquist frequency


_MAX_KERNEL = 1 << 22  # kernel floats (phases x taps) beyond which `resample` uses the FFT method instead


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Polyphase kernels (new, 1, K) of a Hann-windowed sinc low-pass for orig -> new (rates reduced by their
    gcd), and the padding width in input samples. Output phase j of block t is the kernel j applied to
    the input around sample t * orig + j * orig / new."""
    base = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_WIDTH * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig  # (1, 1, K) input times
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx  # (new, 1, K)
    t = (t * base).clamp(-_LOWPASS_WIDTH, _LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / _LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return (sinc * window * (base / orig)).float(), width


def resample(x: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling of x (..., T) from orig_rate to new_rate Hz -> (..., ceil(T * new_rate /
    orig_rate)); same rate: x itself. A windowed sinc (6 zero crossings, roll-off 0.99 of the lower Nyquist,
    torchaudio's default method) when the rates reduce to a small ratio (44.1 kHz -> 16 kHz is 441:160);
    for rates with a huge reduced ratio (44101 Hz -> 16 kHz) the exact FFT method over the whole signal."""
    if orig_rate == new_rate:
        return x
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    shape, length = x.shape[:-1], x.shape[-1]
    target = math.ceil(new * length / orig)
    taps = 2 * math.ceil(_LOWPASS_WIDTH * orig / (min(orig, new) * _ROLLOFF)) + orig
    if new * taps > _MAX_KERNEL:
        flat = x.reshape(-1, length).float()
        return torch.stack([fourier_resample(row, target) for row in flat]).reshape(*shape, target)
    kernel, width = _sinc_kernel(orig, new)
    flat = F.pad(x.reshape(-1, 1, length).float(), (width, width + orig))  # (B, 1, T + pad)
    out = F.conv1d(flat, kernel, stride=orig)  # (B, new phases, blocks)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # (B, blocks * new): phases interleaved in time order
    return out[:, :target].reshape(*shape, target)


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
