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

The arithmetic of the time-series codecs is in `seqcompress.classical`; the audio ones use the signal helpers
of `seqcompress.domains.audio_signal`.
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

__all__ = ["BASELINES", "Baseline", "baselines_for", "register_baseline"]

BASELINES: dict[str, dict[str, type["Baseline"]]] = {}  # domain name -> baseline name -> class


def register_baseline(domain_name: str, name: str) -> Callable[[type], type]:
    """File a Baseline class under `name` among the baselines of the domain `domain_name`."""
    return registrar(BASELINES.setdefault(domain_name, {}))(name)


def baselines_for(domain: Domain) -> dict[str, "Baseline"]:
    """The baselines of a domain, by name in sorted order (none for a domain without any)."""
    return {name: cls(domain) for name, cls in sorted(BASELINES.get(domain.name, {}).items())}


class Baseline(ABC):
    """A classical codec for one domain's windows. `learns`: it fits on training windows (the probe then passes
    every full training window it can cut; others get an empty list)."""

    name: ClassVar[str] = ""
    learns: ClassVar[bool] = False

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    @abstractmethod
    def reconstruct(self, train: list[torch.Tensor], test: list[torch.Tensor], floats: list[int]) -> list[torch.Tensor]:
        """Each test window rebuilt from floats[i] stored numbers, shaped and laid out like the window."""


# ---- time series ---------------------------------------------------------------------------------------
class _SeriesBaseline(Baseline):
    """Time-series windows (L, 2 * P * C): per patch, P steps x C channels of normalised values, then their
    observed mask (1 where a value was read)."""

    def values(self, window: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """A window (L, 2PC) -> normalised values (L*P, C) and the observed mask (L*P, C)."""
        x = window.double().numpy()
        width = x.shape[1] // 2
        channels = width // self.domain.settings.patch
        return x[:, :width].reshape(-1, channels), x[:, width:].reshape(-1, channels) > 0.5

    @staticmethod
    def as_window(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """Normalised values (L*P, C) -> a window like `like` (L, 2PC), its mask half kept."""
        out = like.clone().float()
        out[:, : like.shape[1] // 2] = torch.from_numpy(values.reshape(len(like), -1)).float()
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
