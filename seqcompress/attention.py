"""Reducing (and expanding) scaled dot-product attention, with variable lengths.

The idea (Biermann et al., arXiv 2310.14837): the output of attention has as many rows as
there are queries. A learned matrix W_S of shape (m, n) applied before the query projection,

    Q = W_S X W_Q,   K = X W_K,   V = X W_V,

turns n input rows into m output rows. With W_S of shape (n, m) the same block grows a
latent sequence back to length n. Without W_S it is ordinary self-attention.

Variable length ("masked W_S slicing"): a sample of length L uses W_S[:m, :L] where
m = latent_length(L). A batch pads every sample to the longest one; this module builds a
per-sample mask over W_S in one batched operation, masks padded keys, and zeroes padded
output rows, so padding never changes a result and never receives a gradient.

Notation: B batch, N padded input length, M padded output length, D model width,
H heads, Dh = D / H.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["latent_length", "length_mask", "pooling_matrix", "ResizeMatrix", "Attention", "Block"]


def _as_fraction(ratio: float) -> Fraction:
    # Exact arithmetic so that e.g. ratio 0.3 and L = 10 gives 3 latents, not ceil(3.0000000000000004) = 4.
    return Fraction(ratio).limit_denominator(1_000_000)


def latent_length(length: int, ratio: float) -> int:
    """Number of latents for an input of `length` symbols: ceil(length * ratio), at least 1 (0 for 0)."""
    if length <= 0:
        return 0
    return max(1, math.ceil(length * _as_fraction(ratio)))


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool mask, True where the position is real (not padding)."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]  # (B, size)


class ResizeMatrix(nn.Module):
    """The learned length-changing matrix: (out_max, in_max), sliced and masked per sample.

    init="pool" starts as segment pooling (reducing: each output row averages the inputs that
    map to it; expanding: each output row copies its latent), so a fresh model already passes
    each symbol's information through the bottleneck; init="random" is N(0, 1/in_max).
    """

    def __init__(self, out_max: int, in_max: int, ratio: float, init: str = "pool") -> None:
        super().__init__()
        self.out_max, self.in_max = out_max, in_max
        weight = torch.randn(out_max, in_max) / math.sqrt(in_max)  # (out_max, in_max)
        if init == "pool":
            weight = 0.01 * weight + pooling_matrix(out_max, in_max, ratio)
        elif init != "random":
            raise ValueError(f"unknown resize init {init!r} (expected 'pool' or 'random')")
        self.weight = nn.Parameter(weight)

    def forward(self, out_mask: torch.Tensor, in_mask: torch.Tensor) -> torch.Tensor:
        """Per-sample W[:out_len, :in_len], zero elsewhere: (B, M, N) from masks (B, M) and (B, N)."""
        m, n = out_mask.shape[1], in_mask.shape[1]
        if m > self.out_max or n > self.in_max:
            raise ValueError(f"sequence of length {max(m, n)} exceeds this model's maximum ({self.in_max})")
        pair_mask = out_mask[:, :, None] & in_mask[:, None, :]  # (B, M, N)
        return self.weight[:m, :n] * pair_mask  # (B, M, N)

    def mix(self, x, xn, attn, in_mask, out_mask, all_real) -> torch.Tensor:
        """The length-changing sub-layer of a Block: W X + Attn(W LN(X), LN(X)), (B, N, D) -> (B, M, D)."""
        w = self(out_mask, in_mask)  # (B, M, N)
        return w @ x + attn(w @ xn, xn, None if all_real else in_mask)  # (B, M, D)


def pooling_matrix(out_max: int, in_max: int, ratio: float) -> torch.Tensor:
    """Reducing: row i averages the inputs j with floor(j * ratio) == i. Expanding: the transpose as a copy."""
    r = _as_fraction(ratio)
    reducing = out_max <= in_max
    n, m = (in_max, out_max) if reducing else (out_max, in_max)
    pool = torch.zeros(m, n)  # (m, n)
    for j in range(n):
        pool[min(math.floor(j * r), m - 1), j] = 1.0
    if reducing:
        return pool / pool.sum(dim=1, keepdim=True).clamp(min=1.0)  # (m, n) averages
    return pool.T.contiguous()  # (n, m) copies


class Attention(nn.Module):
    """Multi-head scaled dot-product attention whose queries may come from a resized input.

    queries: (B, M, D) already resized (W_S X); keys and values: (B, N, D) from all inputs.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, queries: torch.Tensor, inputs: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, m, d = queries.shape
        n, h = inputs.shape[1], self.heads
        q = self.q(queries).view(b, m, h, d // h).transpose(1, 2)  # (B, H, M, Dh)
        k, v = self.kv(inputs).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, N, Dh)
        attn_mask = None
        if key_mask is not None:
            # A sample with no real key (length 0) attends to its padding instead of producing NaN;
            # its output rows are zeroed by the caller anyway.
            key_mask = key_mask | ~key_mask.any(dim=1, keepdim=True)  # (B, N)
            attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, N), True = attend
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, M, Dh)
        return self.out(y.transpose(1, 2).reshape(b, m, d))  # (B, M, D)


class Block(nn.Module):
    """Pre-norm transformer block; with a ResizeMatrix it changes the sequence length.

    y = W X + Attn(W LN(X), LN(X)) + P_out;  out = y + FFN(LN(y)), padded rows zeroed.
    The residual goes through W as well, because the input has N rows and the output M.
    P_out (learned positions of the output rows) tells an expanded row which copy it is.

    `resize` may be any module with the ResizeMatrix.mix signature (the probe's baselines in
    seqcompress/reducers.py); attention=False leaves out the attention a resize does not use.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        resize: nn.Module | None = None,
        out_positions: int = 0,
        attention: bool = True,
    ) -> None:
        super().__init__()
        self.resize = resize
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, dropout) if attention else None
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model), nn.Dropout(dropout)
        )
        self.positions = nn.Parameter(0.02 * torch.randn(out_positions, d_model)) if out_positions else None

    def forward(
        self, x: torch.Tensor, in_mask: torch.Tensor, out_mask: torch.Tensor, all_real: bool = False
    ) -> torch.Tensor:
        """x: (B, N, D) with in_mask (B, N); returns (B, M, D) with rows outside out_mask (B, M) zero.

        all_real=True promises that no position is padding, which lets SDPA skip the mask.
        """
        xn = self.norm1(x)  # (B, N, D)
        if self.resize is not None:
            y = self.resize.mix(x, xn, self.attn, in_mask, out_mask, all_real)  # (B, M, D)
        else:
            y = x + self.attn(xn, xn, None if all_real else in_mask)  # (B, N, D), M == N
        if self.positions is not None:
            y = y + self.positions[: y.shape[1]]  # (B, M, D)
        y = y + self.ffn(self.norm2(y))  # (B, M, D)
        return y if all_real else y * out_mask[:, :, None]  # (B, M, D), padded rows zero
