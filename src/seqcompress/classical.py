"""Classical codecs for continuous windows, used as baselines at the model's storage budget.

Both keep a given number of floats per window and fit them by least squares on the observed
values only, so missing values and a shorter last window are handled the way the model handles
them (not scored, not used):

- truncated DCT: per channel, the lowest-frequency orthonormal DCT-II coefficients;
- PCA on windows: the leading principal components of full training windows.

Arrays are numpy float64: a window is (n, C) values with an (n, C) boolean `observed` mask.
`seqcompress.baselines` wraps these for the probe (it knows how a domain lays out its windows).
"""

from __future__ import annotations

import math

import numpy as np


def dct_basis(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis (n, n): column k is the k-th cosine."""
    t = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    basis = np.cos(np.pi * (t + 0.5) * k / n) * math.sqrt(2 / n)
    basis[:, 0] /= math.sqrt(2)
    return basis


def least_squares(basis: np.ndarray, x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """basis (n, k) fit to x (n,) on the observed rows only; the reconstruction (n,)."""
    if not observed.any() or basis.shape[1] == 0:
        return np.zeros(len(x))
    coef, *_ = np.linalg.lstsq(basis[observed], x[observed], rcond=None)
    return basis @ coef


def truncated_dct(values: np.ndarray, observed: np.ndarray, floats: int) -> np.ndarray:
    """(n, C) -> (n, C) from floats // C low-frequency coefficients per channel."""
    n, c = values.shape
    basis = dct_basis(n)[:, : max(0, min(n, floats // c))]
    return np.stack([least_squares(basis, values[:, j], observed[:, j]) for j in range(c)], axis=1)


class WindowPCA:
    """Principal components of full training windows (each flattened to n_max * C values)."""

    def __init__(self, windows: list[tuple[np.ndarray, np.ndarray]], n_max: int) -> None:
        full = [v.reshape(-1) for v, seen in windows if v.shape[0] == n_max and seen.all()]
        if len(full) < 2:
            full = []  # one window has no variance to analyse: keep only the mean (of nothing: zero)
        self.n_max = n_max
        self.mean: np.ndarray | None = None  # (n_max * C,); None without training windows
        self.components = np.zeros((0, 0))
        if full:
            data = np.stack(full)  # (windows, n_max * C)
            self.mean = data.mean(0)
            _, _, vt = np.linalg.svd(data - self.mean, full_matrices=False)
            self.components = vt  # (r, n_max * C), r = min(windows, n_max * C)

    def reconstruct(self, values: np.ndarray, observed: np.ndarray, floats: int) -> np.ndarray:
        """(n, C) -> (n, C) from the first `floats` components (fewer when the training data has fewer; zeros,
        the normalised mean, when it has none)."""
        n, c = values.shape
        if self.mean is None:
            return np.zeros((n, c))
        k = min(floats, len(self.components))
        mean = self.mean.reshape(self.n_max, c)[:n]  # (n, C)
        comp = self.components[:k].T.reshape(self.n_max, c, k)[:n].reshape(n * c, k)  # a shorter window's rows
        rec = least_squares(comp, (values - mean).reshape(-1), observed.reshape(-1))
        return rec.reshape(n, c) + mean


def principal_axes(windows) -> np.ndarray | None:
    """The principal axes of the symbols of `windows` (each (n, F); NaN marks a value not observed): the
    eigenvectors of their second-moment matrix (not centred: a linear map with no offset keeps the mean
    through them), as orthonormal rows (F x F), largest eigenvalue first; None when no symbol holds a value.
    Each entry of the matrix is the mean product over the symbols where both features are observed
    (pairwise complete), so a gap neither enters as a zero nor costs the rest of its row. Read one window at
    a time, in float64: a pass over a stream in F x F memory."""
    moment, count = None, None
    for window in windows:
        x = np.asarray(window, dtype=np.float64)
        if not x.size:
            continue
        x = x.reshape(len(x), -1)
        seen = np.isfinite(x)
        x, seen = np.where(seen, x, 0.0), seen.astype(np.float64)
        moment = x.T @ x if moment is None else moment + x.T @ x
        count = seen.T @ seen if count is None else count + seen.T @ seen
    if count is None or not count.any():
        return None
    values, vectors = np.linalg.eigh(np.divide(moment, count, out=np.zeros_like(moment), where=count > 0))
    axes = vectors[:, ::-1].T.copy()  # eigh's order is ascending
    axes *= np.where(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    return axes

