"""Reducing (and expanding) attention blocks, with variable lengths and pluggable kernels and positions.

The idea (Biermann et al., arXiv 2310.14837): the output of attention has as many rows as there are
queries. A learned matrix W_S of shape (m, n) applied before the query projection,

    Q = W_S X W_Q,   K = X W_K,   V = X W_V,

turns n input rows into m output rows. With W_S of shape (n, m) the same block grows a latent sequence
back to length n. Without W_S it is ordinary self-attention.

Variable length ("masked W_S slicing"): a sample of length L uses W_S[:m, :L] where m = latent_length(L).
A batch pads every sample to the longest one; the masks in a `Layout` slice W_S per sample, mask padded
keys, and zero padded output rows, so padding never changes a result and never receives a gradient.

What is pluggable: the attention kernel (`seqcompress/kernels/`: full, lowrank, local, lsh, routing), the position
scheme (`seqcompress/positions/`: learned, none, t5, alibi, rope) and the resize (`seqcompress/resize.py`:
absolute or relative W_S). Blocks receive them constructed; positions are computed once per stack and
reach every block through its Layout.

Notation: B batch, N padded input length, M padded output length, D model width, H heads, Dh = D / H.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from seqcompress.kernels import Kernel
from seqcompress.lengths import latent_length, length_mask, pooling_matrix
from seqcompress.memory import MemoryRows
from seqcompress.positions import PositionScheme
from seqcompress.resize import RelativeResize, ResizeMatrix

__all__ = ["latent_length", "length_mask", "pooling_matrix", "ResizeMatrix", "RelativeResize", "Layout",
           "Attention", "Block"]


@dataclass
class Layout:
    """The rows one block reads (N) and writes (M): masks, positions and spans, shared by its sub-layers.

    in_mask (B, N), out_mask (B, M): True where real. all_real: no padding at all (SDPA may skip the mask).
    in_pos (N,), out_pos (M,): positions in input-index units. spans (M, 2): the keys each output row stands
    for (`Geometry.key_spans`). positions: the stack's scheme, or None. memory: the block's memory rows
    (`seqcompress.memory`), extra keys and values before the window's, or None.
    """

    in_mask: torch.Tensor
    out_mask: torch.Tensor
    all_real: bool
    in_pos: torch.Tensor
    out_pos: torch.Tensor
    spans: torch.Tensor
    positions: PositionScheme | None = None
    memory: MemoryRows | None = None

    @property
    def key_mask(self) -> torch.Tensor | None:
        return None if self.all_real else self.in_mask


class Attention(nn.Module):
    """Multi-head attention whose queries may come from a resized input; the scoring is the kernel's.

    queries: (B, M, D) already resized (W_S X); inputs: (B, N, D), the source of keys and values.
    """

    def __init__(self, d_model: int, heads: int, kernel: Kernel) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.kernel = kernel

    def forward(self, queries: torch.Tensor, inputs: torch.Tensor, layout: Layout) -> torch.Tensor:
        k_pos, key_mask, memory = layout.in_pos, layout.key_mask, layout.memory
        if memory is not None:  # memory rows are keys and values before the window's own (R + N of them)
            inputs = torch.cat([memory.states, inputs], dim=1)  # (B, R + N, D)
            k_pos = torch.cat([memory.pos, k_pos])
            if key_mask is not None or not memory.all_real:  # all real: no mask (SDPA's fastest path)
                key_mask = torch.cat([memory.mask, layout.in_mask], dim=1)
        b, m, d = queries.shape
        n, h = inputs.shape[1], self.heads
        q = self.q(queries).view(b, m, h, d // h).transpose(1, 2)  # (B, H, M, Dh)
        k, v = self.kv(inputs).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, N, Dh)
        scheme = layout.positions
        if scheme is not None and scheme.rotary:
            q, k = scheme.rotate(q, layout.out_pos), scheme.rotate(k, k_pos)
        y, _ = self.kernel(q, k, v, q_pos=layout.out_pos, k_pos=k_pos, key_mask=key_mask,
                           q_spans=layout.spans, positions=scheme,
                           query_mask=None if layout.all_real else layout.out_mask)  # (B, H, M, Dh)
        return self.out(y.transpose(1, 2).reshape(b, m, d))  # (B, M, D)


class Block(nn.Module):
    """Pre-norm transformer block; with a resize it changes the sequence length.

    y = W X + Attn(W LN(X), LN(X)) + P_out;  out = y + FFN(LN(y)), padded rows zeroed.
    The residual goes through W as well, because the input has N rows and the output M.
    P_out (learned positions of the output rows, absolute position schemes only) tells an expanded row
    which copy it is.

    `resize` is any module with `mix(x, xn, attn, layout)` (ResizeMatrix, RelativeResize, or the probe's
    baselines in seqcompress/reducers.py); `attn` is None for a resize that needs no attention.
    """

    def __init__(
        self,
        d_model: int,
        ffn_dim: int,
        attn: Attention | None,
        dropout: float = 0.0,
        resize: nn.Module | None = None,
        out_positions: int = 0,
    ) -> None:
        super().__init__()
        self.resize = resize
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = attn
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model), nn.Dropout(dropout)
        )
        self.positions = nn.Parameter(0.02 * torch.randn(out_positions, d_model)) if out_positions else None

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        """x: (B, N, D); returns (B, M, D) with rows outside layout.out_mask zero."""
        xn = self.norm1(x)  # (B, N, D)
        if layout.memory is not None:  # memory holds earlier inputs of this block: normalised as its own are
            layout = replace(layout, memory=layout.memory._replace(states=self.norm1(layout.memory.states)))
        if self.resize is not None:
            y = self.resize.mix(x, xn, self.attn, layout)  # (B, M, D)
        else:
            y = x + self.attn(xn, xn, layout)  # (B, N, D), M == N
        if self.positions is not None:
            y = y + self.positions[: y.shape[1]]  # (B, M, D)
        y = y + self.ffn(self.norm2(y))  # (B, M, D)
        return y if layout.all_real else y * layout.out_mask[:, :, None]  # (B, M, D), padded rows zero
