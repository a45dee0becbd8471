"""Classical codecs the probe scores next to the model, each given the model's storage budget.

A baseline is one class plus one registration, `@register_baseline("timeseries", "dct")`;
`baselines_for(domain)` gives a domain's baselines ready to run. A baseline rebuilds every held-out window
from `floats` stored numbers (the latent floats the model keeps for that window) and returns it in the
model's output form, so the domain's objective scores it exactly as it scores the model.

    time series  dct          per channel, the lowest-frequency DCT-II coefficients (least squares on observed
                              values)
                 pca          the leading principal components of full training windows
    audio        dct          the window's real samples -> DCT-II, keep the lowest coefficients, inverse DCT
                 mu_law_8bit  the window resampled (FFT method) to `floats` samples, each 8-bit mu-law, resampled
                              back: 8-bit mu-law at a reduced sample rate (G.711's idea), so its bits equal the
                              model's latents stored as int8
                 opus         every window's real samples joined and coded by Opus at the model's bit rate (its
                              floats x `bits_per_float`, the stored dtype's width, per second of audio); Opus
                              cannot be held to a rate exactly, so it reports the bits it produced
                              (`stored_bits`) and a `note`

A codec that needs something this machine may lack says so in `unavailable()`; `baselines_for` leaves it out
and `unavailable_baselines` gives the reason. The arithmetic of the time-series codecs is in
`seqcompress.classical`; the audio ones use the signal helpers of `seqcompress.domains.audio_signal` and
Opus `seqcompress.domains.audio_opus`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch

from seqcompress.classical import WindowPCA, truncated_dct
from seqcompress.domain import Domain
from seqcompress.registry import registrar

__all__ = ["BASELINES", "Baseline", "baselines_for", "register_baseline", "unavailable_baselines"]

BASELINES: dict[str, dict[str, type["Baseline"]]] = {}  # domain name -> baseline name -> class


def register_baseline(domain_name: str, name: str) -> Callable[[type], type]:
    """File a Baseline class under `name` among the baselines of the domain `domain_name`."""
    return registrar(BASELINES.setdefault(domain_name, {}))(name)


def baselines_for(domain: Domain, bits_per_float: int = 16) -> dict[str, "Baseline"]:
    """The baselines of a domain that can run here, by name in sorted order (none for a domain without any), for
    latents stored at `bits_per_float` bits (16: float16, the probe's default)."""
    return {name: cls(domain, bits_per_float) for name, cls in sorted(BASELINES.get(domain.name, {}).items())
            if cls.unavailable() is None}


def unavailable_baselines(domain: Domain) -> dict[str, str]:
    """The baselines of a domain that cannot run here: name -> why."""
    return {name: why for name, cls in sorted(BASELINES.get(domain.name, {}).items())
            if (why := cls.unavailable()) is not None}


class Baseline(ABC):
    """A classical codec for one domain's windows. `learns`: it fits on training windows (the probe then passes
    every full training window it can cut; others get an empty list). `bits_per_float`: the width of a stored
    latent float, for a codec whose budget is bits rather than numbers.

    After `reconstruct`, a codec that cannot be held to its budget exactly sets `stored_bits` (the bits it stored
    for all the test windows; None: exactly the budget) and may leave a one-line `note`."""

    name: ClassVar[str] = ""
    learns: ClassVar[bool] = False

    def __init__(self, domain: Domain, bits_per_float: int = 16) -> None:
        self.domain = domain
        self.bits_per_float = bits_per_float
        self.stored_bits: float | None = None
        self.note = ""

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this codec cannot run on this machine (a library built without it), or None."""
        return None

    @abstractmethod
    def reconstruct(self, train: list[torch.Tensor], test: list[torch.Tensor], floats: list[int]) -> list[torch.Tensor]:
        """Each test window rebuilt from floats[i] stored numbers, shaped and laid out like the window."""


# ---- time series ---------------------------------------------------------------------------------------
class _SeriesBaseline(Baseline):
    """Time-series windows (L, 2 * P * C (+ 2C with revin)): per patch, P steps x C channels of normalised values,
    then their observed mask (1 where a value was read), then with revin the window's mean and scale, which
    every method keeps (the probe counts them for all)."""

    def _widths(self, window: torch.Tensor) -> tuple[int, int]:
        """(P * C, C) of the windows: from the learned settings, or from the width (2PC) when not learned."""
        s = self.domain.settings
        if s.learned:
            return s.values_width, s.channels
        return window.shape[1] // 2, window.shape[1] // 2 // s.patch

    def values(self, window: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """A window -> normalised values (L*P, C) and the observed mask (L*P, C)."""
        x = window.double().numpy()
        width, channels = self._widths(window)
        return x[:, :width].reshape(-1, channels), x[:, width : 2 * width].reshape(-1, channels) > 0.5

    def as_window(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """Normalised values (L*P, C) -> a window like `like`, the rest of it kept."""
        out = like.clone().float()
        out[:, : self._widths(like)[0]] = torch.from_numpy(values.reshape(len(like), -1)).float()
        return out


@register_baseline("timeseries", "dct")
class SeriesDct(_SeriesBaseline):
    def reconstruct(self, train, test, floats):
        return [self.as_window(truncated_dct(*self.values(w), f), w) for w, f in zip(test, floats)]


@register_baseline("timeseries", "pca")
class SeriesPca(_SeriesBaseline):
    learns = True

    def reconstruct(self, train, test, floats):
        steps = max(len(w) for w in [*train, *test]) * self.domain.settings.patch
        pca = WindowPCA([self.values(w) for w in train], steps)
        return [self.as_window(pca.reconstruct(*self.values(w), f), w) for w, f in zip(test, floats)]


# ---- audio ---------------------------------------------------------------------------------------------
class _AudioBaseline(Baseline):
    """Audio windows (L, S + 1): per frame, S samples divided by the learned level (`scale`), then the share of
    them that is real. The codec sees a window's real samples at the file's level and at most as many stored
    numbers as it has real samples."""

    @abstractmethod
    def codec(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Samples (T,) -> their reconstruction (T,) from k stored numbers."""

    def reconstruct(self, train, test, floats):
        gain = self.domain.settings.scale or 1.0
        out = []
        for window, budget in zip(test, floats):
            s = window.shape[1] - 1
            real = int((window[:, s].float() * s).round().sum())
            x = window[:, :s].float().reshape(-1)[:real] * gain  # at the file's level
            y = (self.codec(x, min(int(budget), real)) if real else x) / gain
            rebuilt = torch.zeros(len(window) * s)
            rebuilt[:real] = y
            out.append(torch.cat([rebuilt.view(len(window), s), window[:, s:].float()], dim=1))  # (L, S + 1)
        return out


@register_baseline("audio", "dct")
class AudioDct(_AudioBaseline):
    def codec(self, x, k):
        from seqcompress.domains.audio_signal import dct, idct

        c = dct(x)
        c[k:] = 0
        return idct(c)


@register_baseline("audio", "mu_law_8bit")
class AudioMuLaw(_AudioBaseline):
    def codec(self, x, k):
        from seqcompress.domains.audio_signal import fourier_resample, mu_law_decode, mu_law_encode

        low = mu_law_decode(mu_law_encode(fourier_resample(x, max(k, 1))))
        return fourier_resample(low, len(x))


@register_baseline("audio", "opus")
class AudioOpus(Baseline):
    """Opus (Ogg/Opus through libsndfile) at the model's bit rate. The real samples of every test window, at the
    file's level, are joined in the order given into one signal and encoded once, asked for the budget's rate:
    sum(floats) x bits_per_float bits over the signal's duration at the model rate. Opus is a streaming codec
    and this is how it is used; the model codes each window alone (consecutive windows of a mono file join
    into the continuous audio, other joins are splices, which cost Opus a few bits). The decoded signal is cut
    back into the windows. `stored_bits`: the Opus packets produced (its VBR does not hit the rate asked for
    exactly; the Ogg container is not counted), `note`: asked and produced rates."""

    @classmethod
    def unavailable(cls) -> str | None:
        from seqcompress.domains.audio_opus import opus_problem

        return opus_problem()

    def reconstruct(self, train, test, floats):
        from seqcompress.domains.audio_opus import opus_round_trip

        codec, rate = self.domain.codec, self.domain.settings.sample_rate
        pieces = [codec.window_waveform(w) for w in test]  # real samples (k,) at the file's level
        signal = torch.cat(pieces) if pieces else torch.zeros(0)
        if not len(signal):
            self.stored_bits, self.note = 0.0, ""
            return [codec.waveform_window(p, w) for p, w in zip(pieces, test)]
        result = opus_round_trip(signal, rate, sum(floats) * self.bits_per_float * rate / len(signal))
        self.stored_bits, self.note = 8.0 * result.packet_bytes, result.describe()
        decoded = torch.split(result.samples, [len(p) for p in pieces])
        return [codec.waveform_window(y, w) for y, w in zip(decoded, test)]
