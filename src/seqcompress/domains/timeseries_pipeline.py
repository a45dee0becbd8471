"""A scikit-learn style transformer: time series in, latent sequences out, and back.

    from seqcompress.domains.timeseries import SequenceCompressor
    comp = SequenceCompressor(patch=8, ratio=0.25, latent_dim=16, max_steps=300)
    Z = comp.fit_transform(X)            # X (n_series, length, channels) -> Z (n_series, latent_len, latent_dim)
    X_hat = comp.inverse_transform(Z)    # (n_series, length, channels)

It follows scikit-learn's conventions without importing scikit-learn (an optional dev/test
dependency): the constructor only stores its parameters, learned state lives in attributes ending
in `_`, `get_params`/`set_params` make it clonable, so it works inside `sklearn.pipeline.Pipeline`
and `GridSearchCV`. The series go through exactly the same normalisation, patching and loss as the
`timeseries` domain (`TimeSeriesDomain`), with channels named "0", "1", ...

Inputs (X): a pandas DataFrame (one series: rows are time steps, every column a numeric channel),
a numpy array (n_series, length, channels) or (n_series, length) for univariate series, or a list
of arrays (length_i, channels) or (length_i,) of different lengths. NaN marks a missing value
(never trained on); an infinity is an InputError.

Lengths: `transform` returns one row per series, zero-padded to the longest series' latent length
when lengths differ. `inverse_transform(Z)` rebuilds series of the length every training series
had (`series_length_`); for variable-length series pass `lengths=[...]`, the number of time steps
of each series. The output is an array (n_series, length, channels) when all lengths are equal,
otherwise a list of (length_i, channels) arrays. It holds the reconstruction at every step,
including steps that were NaN in the input (the model's fill-in).
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import torch

from seqcompress.compress import decode, encode
from seqcompress.domains.timeseries import DEFAULT_PATCH, TimeSeriesDomain
from seqcompress.errors import InputError
from seqcompress.model import ModelConfig, build_model
from seqcompress.train import TrainOptions, train


def as_series(X, name: str = "X") -> list[np.ndarray]:
    """DataFrame, 3-D/2-D array or list of arrays -> a list of float64 (length, channels) arrays."""
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # a pandas DataFrame: one series
        try:
            return [_check_finite(np.asarray(X.to_numpy(dtype=np.float64)), name)]
        except (TypeError, ValueError):
            bad = [str(c) for c, kind in X.dtypes.items() if kind.kind not in "biuf"]
            raise InputError(f"{name}: column(s) {bad} are not numeric; drop them or encode them as numbers") from None
    if isinstance(X, (list, tuple)):
        series = [np.asarray(s, dtype=np.float64) for s in X]
        series = [s[:, None] if s.ndim == 1 else s for s in series]
        if not series or any(s.ndim != 2 for s in series):
            raise InputError(f"{name}: a list must hold at least one series, each (length,) or (length, channels)")
        return [_check_finite(s, name) for s in series]
    array = np.asarray(X, dtype=np.float64)
    if array.ndim == 2:
        array = array[:, :, None]  # (n_series, length): univariate series, one per row (scikit-learn's layout)
    if array.ndim != 3 or array.shape[0] == 0:
        raise InputError(f"{name}: expected an array (n_series, length, channels) or (n_series, length), "
                         f"got shape {array.shape}")
    return [_check_finite(s, name) for s in array]


def _check_finite(series: np.ndarray, name: str) -> np.ndarray:
    if series.shape[0] == 0:
        raise InputError(f"{name}: a series has no time steps")
    if series.shape[1] == 0:
        raise InputError(f"{name}: a series has no channels")
    if np.isinf(series).any():
        raise InputError(f"{name} holds an infinite value; only finite numbers and NaN (missing) are accepted")
    return series


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


class SequenceCompressor:
    """Compress time series into shorter latent sequences with a reducing-attention autoencoder.

    Parameters (stored as given; nothing is checked or learned before `fit`):
      patch        time steps per model position (token)
      seq_len      patches per window (n_max); None: enough for the longest training series
      ratio        latents per patch, in (0, 1]: a series of L patches gives ceil(L * ratio) latents
      latent_dim   floats per latent vector
      d_model, heads, layers   model width, attention heads, blocks in the encoder and in the decoder
      max_steps, epochs, minutes   training length (optimizer steps / passes / wall clock); the first reached
      batch_size, lr, lr_end   windows per step; the learning rate falls linearly from lr to lr_end over the run
      loss         "mse" or "huber" (robust; delta 1 standard deviation)
      seed         model initialisation and batch order
      device       "cpu", "cuda" or "auto" for training; transform and inverse_transform run on the CPU
      n_jobs       torch CPU threads while fitting and transforming (None: torch's default). Small models run
                   fastest on 1, and several threads on a busy machine can be many times slower than one.

    Fitted attributes: model_ (SequenceAutoencoder), domain_ (TimeSeriesDomain: normalisation),
    n_channels_, series_length_ (common length of the training series, or None), history_ (held-in
    metrics during training; there is no held-out split, a pipeline's cross-validation does that).
    """

    def __init__(
        self, patch: int = DEFAULT_PATCH, seq_len: int | None = None, ratio: float = 0.25, latent_dim: int = 16,
        d_model: int = 64, heads: int = 4, layers: int = 2, max_steps: int | None = 300, epochs: float | None = None,
        minutes: float | None = None, batch_size: int = 8, lr: float = 3e-3, lr_end: float = 3e-4,
        loss: str = "mse", seed: int = 0, device: str = "cpu", n_jobs: int | None = None,
    ) -> None:
        self.patch = patch
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
        self.loss = loss
        self.seed = seed
        self.device = device
        self.n_jobs = n_jobs

    # ---- scikit-learn's parameter protocol ------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor parameters (no nested estimators, so `deep` changes nothing)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "SequenceCompressor":
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for SequenceCompressor; valid: {sorted(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k]]
        return f"SequenceCompressor({', '.join(changed)})"

    def __sklearn_tags__(self):
        # Only scikit-learn calls this, so it may import scikit-learn.
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False), transformer_tags=TransformerTags(preserves_dtype=[]),
                    input_tags=InputTags(allow_nan=True, three_d_array=True, two_d_array=True),
                    non_deterministic=self.device != "cpu")

    # ---- fit / transform -----------------------------------------------------------------------------
    @_with_threads
    def fit(self, X, y=None) -> "SequenceCompressor":
        """Learn the normalisation from X and train the model on it. `y` is ignored."""
        series = as_series(X)
        channels = {s.shape[1] for s in series}
        if len(channels) != 1:
            raise InputError(f"X: all series need the same number of channels, got {sorted(channels)}")
        domain = TimeSeriesDomain(patch=self.patch, time_col=False, columns=[str(i) for i in range(channels.pop())],
                                  loss=self.loss)
        domain.learn_arrays(series)
        longest = max(-(-len(s) // self.patch) for s in series)
        n_max = self.seq_len or longest
        windows = [w for s in series for w in domain.series_windows(s, n_max, "X")]
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
        result = train(model, domain, windows, options)
        self.model_ = model.cpu().eval()
        self.domain_ = domain
        self.n_channels_ = domain.channels
        lengths = {len(s) for s in series}
        self.series_length_ = lengths.pop() if len(lengths) == 1 else None
        self.history_ = result.history
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise InputError("this SequenceCompressor is not fitted yet; call fit(X) first")

    def _window_lengths(self, length: int) -> list[int]:
        """Patches in each window of a series of `length` time steps."""
        patches = -(-length // self.domain_.patch)
        n_max = self.model_.config.n_max
        return [min(n_max, patches - i) for i in range(0, patches, n_max)]

    def latent_length(self, length: int) -> int:
        """Latent rows of a series of `length` time steps (summed over its windows)."""
        self._check_fitted()
        return sum(self.model_.config.latent_length(n) for n in self._window_lengths(length))

    @_with_threads
    def transform(self, X) -> np.ndarray:
        """Latents (n_series, latent_len, latent_dim) float32; rows past a shorter series' own latent length
        are zero."""
        self._check_fitted()
        series = as_series(X)
        for s in series:
            if s.shape[1] != self.n_channels_:
                raise InputError(f"X has {s.shape[1]} channel(s); this compressor was fit on {self.n_channels_}")
        n_max = self.model_.config.n_max
        windows, counts = [], []
        for s in series:
            pieces = self.domain_.series_windows(s, n_max, "X")
            windows += pieces
            counts.append(len(pieces))
        latents = encode(self.model_, windows)  # one (m_w, latent_dim) per window
        rows, start = [], 0
        for count in counts:
            rows.append(torch.cat(latents[start : start + count]))
            start += count
        out = np.zeros((len(series), max(len(r) for r in rows), self.model_.config.latent_dim), dtype=np.float32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r.numpy()
        return out

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X, y).transform(X)

    @_with_threads
    def inverse_transform(self, Z, lengths: list[int] | None = None):
        """Latents (n_series, latent_len, latent_dim) -> series (n_series, length, channels) float64, or a list
        of (length_i, channels) arrays when `lengths` differ. `lengths`: time steps of each series; default
        the training series' common length."""
        self._check_fitted()
        Z = np.asarray(Z, dtype=np.float32)
        if Z.ndim != 3 or Z.shape[2] != self.model_.config.latent_dim:
            raise InputError(f"Z: expected latents (n_series, latent_len, {self.model_.config.latent_dim}), "
                             f"got shape {Z.shape}")
        if lengths is None:
            if self.series_length_ is None:
                raise InputError("the training series had different lengths: pass lengths=[time steps of each series]")
            lengths = [self.series_length_] * len(Z)
        lengths = [int(n) for n in lengths]
        if len(lengths) != len(Z) or min(lengths, default=1) < 1:
            raise InputError(f"lengths: need one positive length per series ({len(Z)}), got {len(lengths)}")
        latents, window_lengths = [], []
        for z, length in zip(Z, lengths):
            windows = self._window_lengths(length)
            m = [self.model_.config.latent_length(n) for n in windows]
            if sum(m) > len(z):
                raise InputError(f"a series of {length} steps needs {sum(m)} latent rows; Z has {len(z)}")
            latents += list(torch.split(torch.from_numpy(z[: sum(m)].copy()), m))
            window_lengths += windows
        outputs = decode(self.model_, latents, window_lengths)  # one (L_w, 2 * patch * C) per window
        series, start = [], 0
        for length in lengths:
            count = len(self._window_lengths(length))
            series.append(self.domain_.windows_values(outputs[start : start + count], length))
            start += count
        return np.stack(series) if len(set(lengths)) == 1 else series

    def score(self, X, y=None) -> float:
        """Minus the NRMSE of X's reconstruction over its observed values (higher is better, as
        scikit-learn's model selection expects)."""
        series = as_series(X)
        rebuilt = self.inverse_transform(self.transform(series), [len(s) for s in series])
        return -reconstruction_nrmse(series, rebuilt, self.domain_.scale)


def reconstruction_nrmse(series: list[np.ndarray], rebuilt, scale: np.ndarray) -> float:
    """sqrt(mean over observed values of ((x_hat - x) / sigma_c)^2): the domain's `nrmse` on arrays."""
    sq, n = 0.0, 0
    for s, r in zip(series, rebuilt):
        seen = ~np.isnan(s)
        sq += float((((np.asarray(r) - s) / scale)[seen] ** 2).sum())
        n += int(seen.sum())
    return math.sqrt(sq / n) if n else float("nan")


__all__ = ["SequenceCompressor", "as_series", "reconstruction_nrmse"]
