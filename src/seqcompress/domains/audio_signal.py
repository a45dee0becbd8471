"""Signal processing for the audio domain, in torch only: resampling (whole or streamed), STFT loss, mel, DCT,
mu-law.

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
_MAX_KERNEL = 1 << 22  # polyphase kernel floats (phases x taps) beyond which the sinc is evaluated per output
_MAX_GATHER = 1 << 22  # samples x taps gathered at once by the per-output method


def _reduced(orig_rate: int, new_rate: int) -> tuple[int, int, float, int, bool]:
    """(orig, new) reduced by their gcd, the cut-off `base` (in cycles per `orig` input samples), the kernel's
    half-width in input samples, and whether the polyphase kernel table is small enough to build."""
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    base = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_WIDTH * orig / base)
    return orig, new, base, width, new * (2 * width + orig) <= _MAX_KERNEL


def resampler_reach(orig_rate: int, new_rate: int) -> int:
    """Input samples per channel that resampling orig_rate -> new_rate reads for one output sample or block of
    outputs (the kernel's span): what a `Resampler` holds between pushes, and about what it gathers at once.
    0 for equal rates. Grows with orig_rate / new_rate: 16 kHz -> 1 Hz reaches over 200,000 samples."""
    if int(orig_rate) == int(new_rate):
        return 0
    orig, _, _, width, polyphase = _reduced(orig_rate, new_rate)
    return 2 * width + (orig if polyphase else 2)


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Polyphase kernels (new, 1, K) of a Hann-windowed sinc low-pass for orig -> new (rates reduced by their
    gcd), and the padding width in input samples. Output phase j of block t is the kernel j applied to
    the input around sample t * orig + j * orig / new."""
    base = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_WIDTH * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig  # (1, 1, K) input times
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx  # (new, 1, K)
    return _windowed_sinc(t * base, base / orig), width


def _windowed_sinc(t: torch.Tensor, gain: float) -> torch.Tensor:
    """The low-pass kernel at times t (float64, tap minus output position, counted in the sinc's zero
    crossings): sinc(t) Hann-windowed over +-6 zero crossings, times `gain` -> float32 of t's shape."""
    t = t.clamp(-_LOWPASS_WIDTH, _LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / _LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return (sinc * window * gain).float()


def resample(x: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling of x (..., T) from orig_rate to new_rate Hz -> (..., ceil(T * new_rate /
    orig_rate)); same rate: x itself. A Hann-windowed sinc (6 zero crossings, roll-off 0.99 of the lower
    Nyquist, torchaudio's default method), applied as one polyphase conv1d when the rates reduce to a small
    ratio (44.1 kHz -> 16 kHz is 441:160); for rates with a huge reduced ratio (44101 Hz -> 16 kHz) the same
    sinc evaluated at each output's own position (`Resampler`). `Resampler` gives the same result streamed."""
    if orig_rate == new_rate:
        return x
    orig, new, _, _, polyphase = _reduced(orig_rate, new_rate)
    shape, length = x.shape[:-1], x.shape[-1]
    target = math.ceil(new * length / orig)
    flat = x.reshape(-1, length).float()
    if not polyphase:
        stream = Resampler(orig_rate, new_rate, flat.shape[0])
        return torch.cat([stream.push(flat), stream.finish()], dim=1).reshape(*shape, target)
    kernel, width = _sinc_kernel(orig, new)
    padded = F.pad(flat[:, None], (width, width + orig))  # (B, 1, T + pad)
    out = F.conv1d(padded, kernel, stride=orig)  # (B, new phases, blocks)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # (B, blocks * new): phases interleaved in time order
    return out[:, :target].reshape(*shape, target)


class Resampler:
    """`resample` of a signal that arrives in blocks: `push(x)` takes the next samples (C, n) and returns every
    output sample they complete (C, m); `finish()` returns the rest. The concatenated outputs equal
    `resample` of the whole signal up to float rounding, with memory bounded by a block: it keeps only the
    kernel's reach of input (history and lookahead), never the signal.

    Input sample i sits at padded position i + width (the signal is zero-padded by the kernel's half-width on
    both sides, as `resample` pads it); `start` is the padded position of the first kept sample."""

    def __init__(self, orig_rate: int, new_rate: int, channels: int = 1) -> None:
        self.same = int(orig_rate) == int(new_rate)
        self.orig, self.new, base, self.width, self.polyphase = _reduced(orig_rate, new_rate)
        self.scale = base / self.orig  # zero crossings of the sinc per input sample (twice the cut-off)
        if self.polyphase and not self.same:
            self.kernel, _ = _sinc_kernel(self.orig, self.new)  # (new, 1, K)
        self.kept = torch.zeros(channels, 0 if self.same else self.width)  # (C, kept) the left zero padding first
        self.start = 0
        self.inputs = 0  # input samples pushed per channel
        self.outputs = 0  # output samples returned per channel

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """The next input samples (C, n) -> the output samples (C, m) they complete."""
        x = x.float()
        self.inputs += x.shape[1]
        if self.same:
            return x
        self.kept = torch.cat([self.kept, x], dim=1)
        return self._run(final=False)

    def finish(self) -> torch.Tensor:
        """The output samples (C, m) that need the zero padding after the last input sample."""
        if self.same:
            return self.kept[:, :0]
        pad = self.width + (self.orig if self.polyphase else 2)
        self.kept = torch.cat([self.kept, self.kept.new_zeros(self.kept.shape[0], pad)], dim=1)
        return self._run(final=True)

    def _run(self, final: bool) -> torch.Tensor:
        target = -(-self.new * self.inputs // self.orig)  # outputs of the whole signal so far (all, when final)
        out = self._polyphase(final) if self.polyphase else self._direct(final, target)
        out = out[:, : max(target - self.outputs, 0)] if final else out
        self.outputs += out.shape[1]
        return out

    def _polyphase(self, final: bool) -> torch.Tensor:
        # Block t (new output samples) reads padded positions t * orig .. t * orig + K - 1.
        orig, k = self.orig, self.kernel.shape[-1]
        end = self.start + self.kept.shape[1]
        blocks = self.inputs // orig + 1 if final else (end - k) // orig + 1 if end >= k else 0
        count = blocks - self.start // orig
        if count <= 0:
            return self.kept[:, :0]
        out = F.conv1d(self.kept[:, None, : (count - 1) * orig + k], self.kernel, stride=orig)  # (C, new, count)
        self.kept = self.kept[:, count * orig :]
        self.start += count * orig
        return out.transpose(1, 2).reshape(self.kept.shape[0], -1)  # (C, count * new) in time order

    def _direct(self, final: bool, target: int) -> torch.Tensor:
        # Output m sits at input position p = m * orig / new = q + r / new; its taps are the input samples
        # q - width .. q + width + 1, i.e. padded positions q .. q + 2 width + 1.
        orig, new, taps = self.orig, self.new, 2 * self.width + 2
        end = self.start + self.kept.shape[1]
        stop = target if final else max(-(-(end - taps + 1) * new // orig), self.outputs)
        channels = self.kept.shape[0]
        step = max(1, _MAX_GATHER // (taps * channels))
        parts = []
        for first in range(self.outputs, stop, step):
            m = torch.arange(first, min(first + step, stop), dtype=torch.int64)
            q, r = (m * orig) // new, (m * orig) % new
            offsets = torch.arange(taps, dtype=torch.float64) - self.width - (r.double() / new)[:, None]  # (M, taps)
            idx = (q - self.start)[:, None] + torch.arange(taps)  # (M, taps) into kept
            parts.append((self.kept[:, idx] * _windowed_sinc(offsets * self.scale, self.scale)).sum(-1))  # (C, M)
        drop = (stop * orig) // new - self.start  # the next output's first tap
        self.kept = self.kept[:, max(drop, 0) :]
        self.start += max(drop, 0)
        return torch.cat(parts, dim=1) if parts else self.kept[:, :0]


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
