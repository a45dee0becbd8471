"""Lengths, masks and where each row sits: the geometry every length-changing block shares.

A reducing block maps N inputs to M = latent_length(N, ratio) outputs; an expanding block maps them
back. Latent i stands for the inputs j with floor(j * ratio) == i (the pooling segments), so on the
axis where input j spans [j, j + 1) it sits at (i + 0.5) / ratio, i.e. at index (i + 0.5) / ratio - 0.5,
the mean index of its segment. Positions here are in input-index units, so relative position schemes
see real distances between an input and a latent, or between two latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

__all__ = ["as_fraction", "dct_matrix", "latent_length", "length_mask", "pooling_matrix", "Geometry", "latent_positions"]


def as_fraction(ratio: float) -> Fraction:
    # Exact arithmetic so that e.g. ratio 0.3 and L = 10 gives 3 latents, not ceil(3.0000000000000004) = 4.
    return Fraction(ratio).limit_denominator(1_000_000)


def latent_length(length: int, ratio: float) -> int:
    """Number of latents for an input of `length` symbols: ceil(length * ratio), at least 1 (0 for 0)."""
    if length <= 0:
        return 0
    return max(1, math.ceil(length * as_fraction(ratio)))


def stage_lengths(length: int, ratios: list[float]) -> list[int]:
    """[L, m_1, ..., m_S]: the length after each reduction stage of the given ratios."""
    out = [length]
    for r in ratios:
        out.append(latent_length(out[-1], r))
    return out


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool mask, True where the position is real (not padding)."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]  # (B, size)


def dct_matrix(rows: int, points: int) -> torch.Tensor:
    """(rows, points): the first `rows` rows of the orthonormal DCT-II of `points` points (float32). W x keeps a
    sequence's `rows` lowest-frequency coefficients (a truncated DCT); the transpose rebuilds the sequence from
    them (the inverse transform, exact for what was kept)."""
    k = torch.arange(rows, dtype=torch.float64)[:, None]
    j = torch.arange(points, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * k * (j + 0.5) / points) * math.sqrt(2.0 / points)  # (rows, points)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


def pooling_matrix(out_max: int, in_max: int, ratio: float) -> torch.Tensor:
    """Reducing: row i averages the inputs j with floor(j * ratio) == i. Expanding: the transpose as a copy."""
    r = as_fraction(ratio)
    reducing = out_max <= in_max
    n, m = (in_max, out_max) if reducing else (out_max, in_max)
    pool = torch.zeros(m, n)  # (m, n)
    for j in range(n):
        pool[min(math.floor(j * r), m - 1), j] = 1.0
    if reducing:
        return pool / pool.sum(dim=1, keepdim=True).clamp(min=1.0)  # (m, n) averages
    return pool.T.contiguous()  # (n, m) copies


@dataclass(frozen=True)
class Geometry:
    """How the queries of one attention relate to its keys.

    kind "self": queries are the keys' own rows; "reduce": queries are latents at `ratio` per key;
    "expand": keys are latents at `ratio` per query. `q_max`/`k_max` are the longest lengths the
    model was built for (tables sized to them); kernels without tables accept any length.
    """

    kind: str
    q_max: int
    k_max: int
    ratio: float = 1.0  # latents per input symbol of this block (1 for "self")

    def key_spans(self, m: int, device: torch.device | None = None) -> torch.Tensor:
        """(m, 2) long: for each of m queries the first and last key index it stands for.

        self: [i, i]; reduce: the inputs pooled into latent i, [floor(i / r), ceil((i + 1) / r) - 1] (the
        floor keeps a real key in the span of every real latent); expand: [floor(i * r)] * 2.
        """
        i = torch.arange(m, device=device)
        if self.kind == "self":
            return torch.stack([i, i], dim=1)
        r = as_fraction(self.ratio)
        p, q = r.numerator, r.denominator
        if self.kind == "reduce":
            lo = (i * q) // p  # floor(i / r)
            hi = torch.maximum(lo, -((-(i + 1) * q) // p) - 1)  # ceil((i + 1) / r) - 1
            return torch.stack([lo, hi], dim=1)
        k = (i * p) // q  # floor(i * r)
        return torch.stack([k, k], dim=1)


def latent_positions(m: int, ratio: Fraction | float, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(m,) float: where latent i sits in input-index units, (i + 0.5) / ratio - 0.5 (computed in float64)."""
    return (torch.arange(m, device=device, dtype=torch.float64) + 0.5).div(float(as_fraction(ratio))).sub(0.5).to(dtype)
