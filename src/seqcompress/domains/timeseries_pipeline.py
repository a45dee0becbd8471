"""The scikit-learn estimator: series in, latent sequences out, and back, for any vector domain.

    from seqcompress.domains.timeseries import SequenceCompressor
    comp = SequenceCompressor(settings={"patch": 8}, ratio=0.25, latent_dim=16, max_steps=300)
    Z = comp.fit_transform(X)            # X (n_series, length, channels) -> Z (n_series, latent_len, latent_dim)
    X_hat = comp.inverse_transform(Z)    # (n_series, length, channels)

`SequenceCompressor` is a scikit-learn transformer (`BaseEstimator` + `TransformerMixin`: parameters,
cloning, `Pipeline`, `GridSearchCV`; it passes `sklearn.utils.estimator_checks.check_estimator`). The
series go through exactly the windows, normalisation and loss of the domain named by `domain`:
`"timeseries"` (patches of `patch` steps, channels named "0", "1", ...; NaN marks a missing value, never
trained on) or `"audio"` (frames of waveform samples at the model's `sample_rate`, each channel on its own).

Inputs (X):
- an array (n_series, length) of univariate series (scikit-learn's layout: a row is a sample, its
  columns its time steps) or (n_series, length, channels). Fitting on an array fixes the length:
  `n_features_in_` is it, and `transform` refuses series of another length, as scikit-learn expects;
- a list of arrays (length_i, channels) or (length_i,), lengths free;
- a pandas DataFrame: ONE series (rows are time steps, every column a numeric channel), length free.
Empty, sparse, complex and infinite input is refused with scikit-learn's messages (ValueError).

Lengths: `transform` returns one row per series, zero-padded to the longest series' latent length when
lengths differ. `inverse_transform(Z)` rebuilds series of the length every training series had
(`series_length_`); for variable-length series pass `lengths=[...]`. The output is an array (n_series,
length, channels) when all lengths are equal, otherwise a list of (length_i, channels) arrays, with the
reconstruction at every step, including steps that were NaN in the input (the model's fill-in).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.utils.validation import check_array, check_is_fitted, validate_data
except ImportError:  # pragma: no cover - scikit-learn is an optional dependency
    raise ImportError("SequenceCompressor is a scikit-learn estimator: pip install scikit-learn") from None

from seqcompress.compress import decode, encode, evaluate_quantized
from seqcompress.domain import Domain
from seqcompress.domains import get_domain
from seqcompress.errors import InputError
from seqcompress.model import ModelConfig, build_model
from seqcompress.train import TrainOptions, train


# ---- arrays <-> windows, per domain ---------------------------------------------------------------------
class SeriesArrays(ABC):
    """How a vector domain turns series, float64 arrays (length, channels), into model windows and back."""

    allow_nan = False  # whether NaN (a missing value) may appear in a series

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    @abstractmethod
    def learn(self, series: list[np.ndarray]) -> "SeriesArrays":
        """The same conversion on a domain that learned its normalisation from `series` (a new object)."""

    @abstractmethod
    def positions(self, length: int) -> int:
        """Model positions of one channel sequence of `length` steps (patches, frames)."""

    @abstractmethod
    def window_lengths(self, length: int, channels: int, seq_len: int) -> list[int]:
        """Positions of each window of a series of `length` steps and `channels` channels, in window order."""

    @abstractmethod
    def windows(self, values: np.ndarray, seq_len: int) -> list[torch.Tensor]:
        """A series (length, channels) -> its windows of at most seq_len positions, in window order."""

    @abstractmethod
    def values(self, windows: list[torch.Tensor], length: int, channels: int) -> np.ndarray:
        """A series' windows (model output) -> the series (length, channels) float64."""

    @staticmethod
    def split(positions: int, seq_len: int) -> list[int]:
        return [min(seq_len, positions - i) for i in range(0, positions, seq_len)]


class TimeSeriesArrays(SeriesArrays):
    """The timeseries domain: all channels in one patch vector, missing values allowed."""

    allow_nan = True

    def learn(self, series: list[np.ndarray]) -> "TimeSeriesArrays":
        if self.domain.settings.revin:
            raise InputError("revin keeps each window's mean and scale beside its latents, which the estimator's "
                             "arrays have no place for; use it with files (fit, encode, decode)")
        return TimeSeriesArrays(self.domain.learn_arrays(series))

    def positions(self, length: int) -> int:
        return -(-length // self.domain.settings.patch)

    def window_lengths(self, length: int, channels: int, seq_len: int) -> list[int]:
        return self.split(self.positions(length), seq_len)

    def windows(self, values: np.ndarray, seq_len: int) -> list[torch.Tensor]:
        return self.domain.codec.series_windows(values, seq_len, "X")

    def values(self, windows: list[torch.Tensor], length: int, channels: int) -> np.ndarray:
        return self.domain.codec.series_values(windows, length)


class AudioArrays(SeriesArrays):
    """The audio domain: waveforms at the model's sample rate, in the windows an audio file gives: one window
    per channel for each step of seq_len frames (channel 0 first), the level learned as the RMS of every
    sample (1 for silence), as `AudioDomain.learn` does for files."""

    def learn(self, series: list[np.ndarray]) -> "AudioArrays":
        energy = sum(float(np.square(s).sum()) for s in series)
        rms = math.sqrt(energy / max(sum(s.size for s in series), 1))
        return AudioArrays(self.domain.with_settings(scale=rms if rms > 1e-5 else 1.0))

    def positions(self, length: int) -> int:
        return -(-length // self.domain.settings.frame_samples)

    def window_lengths(self, length: int, channels: int, seq_len: int) -> list[int]:
        return [n for n in self.split(self.positions(length), seq_len) for _ in range(channels)]

    def windows(self, values: np.ndarray, seq_len: int) -> list[torch.Tensor]:
        settings, codec = self.domain.settings, self.domain.codec
        x = torch.from_numpy(np.ascontiguousarray(values.T)).float() / settings.gain  # (C, T)
        step = seq_len * settings.frame_samples
        return [w for t in range(0, x.shape[1], step) for w in codec.frame_windows(x[:, t : t + step])]

    def values(self, windows: list[torch.Tensor], length: int, channels: int) -> np.ndarray:
        waves = [self.domain.codec.windows_waveform(windows[c::channels], length) for c in range(channels)]
        return torch.stack(waves, dim=1).double().numpy()


ARRAYS: dict[str, type[SeriesArrays]] = {"timeseries": TimeSeriesArrays, "audio": AudioArrays}


def _with_threads(method):
    """Run an estimator method with torch limited to `self.n_jobs` CPU threads (restored afterwards)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.n_jobs is None:
            return method(self, *args, **kwargs)
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, int(self.n_jobs)))
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def _is_frame(X) -> bool:
    return hasattr(X, "columns") and hasattr(X, "to_numpy") and getattr(X, "ndim", 0) == 2


def _frame_series(frame, finite) -> np.ndarray:
    """A DataFrame: one series (length, channels), every column a numeric channel (the index is ignored)."""
    bad = [str(c) for c, kind in frame.dtypes.items() if getattr(kind, "kind", "O") not in "biuf"]
    if bad:
        raise ValueError(f"X: column(s) {bad} are not numeric; drop them or encode them as numbers")
    return check_array(frame, dtype=np.float64, ensure_all_finite=finite, input_name="X")


def _list_series(items, finite) -> list[np.ndarray]:
    """A list of series (length_i, channels) or (length_i,)."""
    if not items:
        raise ValueError("X: a list must hold at least one series, each (length,) or (length, channels)")
    series = [check_array(s, dtype=np.float64, ensure_2d=False, ensure_all_finite=finite, input_name="X")
              for s in items]
    series = [s[:, None] if s.ndim == 1 else s for s in series]
    if any(s.ndim != 2 or s.shape[1] == 0 for s in series):
        raise ValueError("X: each series of a list must be (length,) or (length, channels)")
    return series


class SequenceCompressor(TransformerMixin, BaseEstimator):
    """Compress series into shorter latent sequences with a reducing-attention autoencoder.

    Parameters (stored as given; checked when `fit` runs):
      domain       the vector domain whose windows, normalisation and loss are used: "timeseries" or "audio"
      settings     the domain's options by name, e.g. {"patch": 8, "loss": "huber"} (timeseries) or
                   {"sample_rate": 16000, "frame_ms": 20} (audio); None: the domain's defaults
      seq_len      positions (patches, frames) per window (n_max); None: enough for the longest training series
      ratio        latents per position, in (0, 1]: a window of L positions gives ceil(L * ratio) latents
      latent_dim   floats per latent vector
      d_model, heads, layers   model width, attention heads, blocks in the encoder and in the decoder
      max_steps, epochs, minutes   training length (optimizer steps / passes / wall clock); the first reached
      batch_size   windows per training step and per encoding batch
      lr, lr_end   the learning rate falls linearly from lr to lr_end over the run
      seed         model initialisation and batch order
      device       "cpu", "cuda" or "auto" for training; transform and inverse_transform run on the CPU
      n_jobs       torch CPU threads while fitting and transforming (None: torch's default). Small models run
                   fastest on 1, and several threads on a busy machine can be many times slower than one.

    Fitted attributes: model_ (SequenceAutoencoder), domain_ (the domain with its learned normalisation),
    n_channels_, series_length_ (common length of the training series, or None), n_features_in_ (the series
    length, when fit on an array), history_ (held-in metrics during training; there is no held-out split, a
    pipeline's cross-validation does that).
    """

    def __init__(
        self, domain: str = "timeseries", settings: dict | None = None, seq_len: int | None = None,
        ratio: float = 0.25, latent_dim: int = 16, d_model: int = 64, heads: int = 4, layers: int = 2,
        max_steps: int | None = 300, epochs: float | None = None, minutes: float | None = None, batch_size: int = 8,
        lr: float = 3e-3, lr_end: float = 3e-4, seed: int = 0, device: str = "cpu", n_jobs: int | None = None,
    ) -> None:
        self.domain = domain
        self.settings = settings
        self.seq_len = seq_len
        self.ratio = ratio
        self.latent_dim = latent_dim
        self.d_model = d_model
        self.heads = heads
        self.layers = layers
        self.max_steps = max_steps
        self.epochs = epochs
        self.minutes = minutes
        self.batch_size = batch_size
        self.lr = lr
        self.lr_end = lr_end
        self.seed = seed
        self.device = device
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = getattr(ARRAYS.get(self.domain), "allow_nan", False)
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []  # latents are float32 whatever the input
        tags.non_deterministic = self.device != "cpu"
        return tags

    # ---- input ---------------------------------------------------------------------------------------
    def _arrays_class(self) -> type[SeriesArrays]:
        if self.domain not in ARRAYS:
            raise ValueError(f"domain must be a vector domain ({', '.join(sorted(ARRAYS))}), got {self.domain!r}")
        return ARRAYS[self.domain]

    def _new_domain(self) -> Domain:
        self._arrays_class()
        base = get_domain(self.domain)
        given = dict(self.settings or {})
        unknown = sorted(set(given) - set(base.settings_class.names()))
        if unknown:
            raise ValueError(f"settings: {base.name} has no option(s) {unknown}; it takes "
                             f"{', '.join(base.settings_class.names())}")
        return base.with_settings(**given) if given else base

    def _series(self, X, *, reset: bool) -> list[np.ndarray]:
        """X -> a list of float64 (length, channels) arrays. Arrays go through scikit-learn's `validate_data`:
        with `reset` (fit) it records the length as `n_features_in_`, else it refuses another length. Lists
        and DataFrames have free lengths: fitting on one clears `n_features_in_`; after fitting on an array,
        their series must have its length too."""
        finite = "allow-nan" if self._arrays_class().allow_nan else True
        if not (_is_frame(X) or isinstance(X, (list, tuple))):
            array = validate_data(self, X, reset=reset, allow_nd=True, dtype=np.float64, ensure_all_finite=finite,
                                  ensure_min_samples=1, ensure_min_features=1)
            if array.ndim == 2:
                array = array[:, :, None]  # (n_series, length): univariate series, one per row (scikit-learn's layout)
            if array.ndim != 3 or 0 in array.shape:
                raise ValueError(f"X: expected an array (n_series, length) or (n_series, length, channels) of at "
                                 f"least one step and channel, got shape {array.shape}")
            return list(array)
        series = [_frame_series(X, finite)] if _is_frame(X) else _list_series(X, finite)
        if reset:
            for name in ("n_features_in_", "feature_names_in_"):
                self.__dict__.pop(name, None)
        elif hasattr(self, "n_features_in_"):
            for s in series:
                if len(s) != self.n_features_in_:
                    raise ValueError(f"X has {len(s)} features, but {type(self).__name__} is expecting "
                                     f"{self.n_features_in_} features as input (time steps of each series)")
        return series

    def _arrays(self) -> SeriesArrays:
        return self._arrays_class()(self.domain_)

    # ---- fit / transform -----------------------------------------------------------------------------
    @_with_threads
    def fit(self, X, y=None) -> "SequenceCompressor":
        """Learn the normalisation from X and train the model on it. `y` is ignored."""
        series = self._series(X, reset=True)
        channels = {s.shape[1] for s in series}
        if len(channels) != 1:
            raise ValueError(f"X: all series need the same number of channels, got {sorted(channels)}")
        arrays = self._arrays_class()(self._new_domain()).learn(series)
        domain = arrays.domain
        n_max = self.seq_len or max(arrays.positions(len(s)) for s in series)
        windows = [w for s in series for w in arrays.windows(s, n_max)]
        config = ModelConfig(n_max=n_max, ratio=self.ratio, d_model=self.d_model, heads=self.heads, layers=self.layers,
                             ffn_dim=4 * self.d_model, latent_dim=self.latent_dim, **domain.model_fields())
        model = build_model(config, seed=self.seed)
        # The learning rate falls from lr to lr_end over the whole run when its length is known in steps or
        # epochs (the CLI's 5-epoch decay would be over within a few dozen steps on a small X).
        steps_per_epoch = math.ceil(len(windows) / self.batch_size)
        decay = min([x for x in (self.max_steps and self.max_steps / steps_per_epoch, self.epochs) if x], default=5.0)
        options = TrainOptions(epochs=self.epochs, max_steps=self.max_steps, max_minutes=self.minutes,
                               batch_size=self.batch_size, lr=self.lr, lr_end=self.lr_end, decay_epochs=decay,
                               seed=self.seed, device=self.device, val_fraction=0.0)
        result = train(model, domain.objective, windows, options)
        self.model_ = model.cpu().eval()
        self.domain_ = domain
        self.n_channels_ = channels.pop()
        lengths = {len(s) for s in series}
        self.series_length_ = lengths.pop() if len(lengths) == 1 else None
        self.history_ = result.history
        return self

    def _checked_series(self, X) -> list[np.ndarray]:
        check_is_fitted(self)
        series = self._series(X, reset=False)
        for s in series:
            if s.shape[1] != self.n_channels_:
                raise ValueError(f"X has {s.shape[1]} channel(s); this compressor was fit on {self.n_channels_}")
        return series

    def _windows(self, series: list[np.ndarray]) -> tuple[list[torch.Tensor], list[int]]:
        """Every series' windows, in order, and how many each series has."""
        arrays, n_max = self._arrays(), self.model_.config.n_max
        windows, counts = [], []
        for s in series:
            pieces = arrays.windows(s, n_max)
            windows += pieces
            counts.append(len(pieces))
        return windows, counts

    def _encode(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """One latent tensor (m_w, latent_dim) per window, encoded in batches of exactly batch_size windows of one
        length (zero windows fill the last batch of each length): a window's latents then do not depend on which
        windows share its batch, so transforming a subset of X gives exactly those rows of transforming X."""
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        out: list[torch.Tensor] = [torch.empty(0)] * len(windows)
        size = self.batch_size
        for members in by_length.values():
            for start in range(0, len(members), size):
                chosen = members[start : start + size]
                batch = [windows[i] for i in chosen]
                batch += [torch.zeros_like(batch[0])] * (size - len(batch))
                for i, z in zip(chosen, encode(self.model_, batch, size)):
                    out[i] = z
        return out

    def latent_length(self, length: int) -> int:
        """Latent rows of a series of `length` time steps (summed over its windows)."""
        check_is_fitted(self)
        lengths = self._arrays().window_lengths(length, self.n_channels_, self.model_.config.n_max)
        return sum(self.model_.config.latent_length(n) for n in lengths)

    @_with_threads
    def transform(self, X) -> np.ndarray:
        """Latents (n_series, latent_len, latent_dim) float32; rows past a shorter series' own latent length
        are zero."""
        series = self._checked_series(X)
        windows, counts = self._windows(series)
        latents = self._encode(windows)  # one (m_w, latent_dim) per window
        rows, start = [], 0
        for count in counts:
            rows.append(torch.cat(latents[start : start + count]))
            start += count
        out = np.zeros((len(series), max(len(r) for r in rows), self.model_.config.latent_dim), dtype=np.float32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r.numpy()
        return out

    @_with_threads
    def inverse_transform(self, Z, lengths: list[int] | None = None):
        """Latents (n_series, latent_len, latent_dim) -> series (n_series, length, channels) float64, or a list
        of (length_i, channels) arrays when `lengths` differ. `lengths`: time steps of each series; default
        the training series' common length."""
        check_is_fitted(self)
        dim = self.model_.config.latent_dim
        Z = check_array(Z, dtype=np.float32, allow_nd=True, ensure_2d=False, input_name="Z")
        if Z.ndim != 3 or Z.shape[2] != dim:
            raise ValueError(f"Z: expected latents (n_series, latent_len, {dim}), got shape {Z.shape}")
        if lengths is None:
            if self.series_length_ is None:
                raise ValueError("the training series had different lengths: pass lengths=[time steps of each series]")
            lengths = [self.series_length_] * len(Z)
        lengths = [int(n) for n in lengths]
        if len(lengths) != len(Z) or min(lengths, default=1) < 1:
            raise ValueError(f"lengths: need one positive length per series ({len(Z)}), got {lengths}")
        arrays, n_max, c = self._arrays(), self.model_.config.n_max, self.n_channels_
        latents, window_lengths, counts = [], [], []
        for z, length in zip(Z, lengths):
            windows = arrays.window_lengths(length, c, n_max)
            m = [self.model_.config.latent_length(n) for n in windows]
            if sum(m) > len(z):
                raise ValueError(f"a series of {length} steps needs {sum(m)} latent rows; Z has {len(z)}")
            latents += list(torch.split(torch.from_numpy(z[: sum(m)].copy()), m))
            window_lengths += windows
            counts.append(len(windows))
        outputs = decode(self.model_, latents, window_lengths, self.batch_size, self.domain_.objective.prediction)
        series, start = [], 0
        for length, count in zip(lengths, counts):
            series.append(arrays.values(outputs[start : start + count], length, c))
            start += count
        return np.stack(series) if len(set(lengths)) == 1 else series

    @_with_threads
    def score(self, X, y=None) -> float:
        """The domain's headline metric of X's reconstruction (transform, then inverse_transform), signed so
        that higher is better as scikit-learn's model selection expects: minus the NRMSE over observed values
        for timeseries, the SI-SDR for audio."""
        windows, _ = self._windows(self._checked_series(X))
        objective = self.domain_.objective
        value = evaluate_quantized(self.model_, objective, windows, "float32", self.batch_size)[objective.metric_name]
        return value if objective.higher_is_better else -value


__all__ = ["ARRAYS", "AudioArrays", "SequenceCompressor", "SeriesArrays", "TimeSeriesArrays"]
