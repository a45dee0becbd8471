"""Low-rank attention (Linformer, Wang et al., 2020): keys and values projected along the sequence axis.

    K' = E K,  V' = F V,  E, F: (rank, n_max) learned, shared by the heads;  out = softmax(Q K'^T) V'

Variable length: a sample of L real keys uses the first r = ceil(L * rank / n_max) rows of E[:, :L]
(so the rank shrinks with the sample, as W_S does), and its padded keys are zeroed *before* the
projection, so padding neither leaks into K', V' nor receives a gradient. (Linformer's reference code
projects the padded keys too.) E and F start as segment means (projected key r is the mean of its
n_max / rank keys), which is where the probe's Linformer-style reducer starts, but here a softmax picks
among the projected keys. With rank = n_max, E = F = identity and this is full attention.
A projected key sits at the mean position of its segment: a relative bias (t5, alibi) sees that position;
rotary positions cannot be honoured (the projection mixes keys rotated by different angles).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqcompress.errors import InputError
from seqcompress.kernels import Capabilities, Kernel, open_keys, register_kernel, score_mask
from seqcompress.lengths import pooling_matrix


@register_kernel("lowrank")
class LowRankAttention(Kernel):
    capabilities = Capabilities(
        resizing=True, key_mask=True, bias=True, rotary=False, complexity="O(m·k + n·k) for rank k",
        max_length="n_max", options={"rank": 64}, summary="keys and values projected to k rows (Linformer)",
    )

    def __init__(self, geometry, heads, head_dim, dropout, options) -> None:
        super().__init__(geometry, heads, head_dim, dropout, options)
        n_max = geometry.k_max
        rank = int(options["rank"])
        if rank < 1:
            raise ValueError(f"lowrank attention needs rank >= 1, got {rank}")
        self.rank = min(rank, n_max)
        segments = pooling_matrix(self.rank, n_max, self.rank / n_max)  # (rank, n_max) segment means
        self.e_key = nn.Parameter(segments.clone())
        self.e_value = nn.Parameter(segments.clone())

    def forward(self, q, k, v, *, q_pos, k_pos, key_mask, q_spans, positions, query_mask=None, state=None):
        b, h, n, d = k.shape
        n_max = self.geometry.k_max
        if n > n_max:
            raise InputError(f"lowrank attention was built for at most {n_max} keys, got {n}")
        # (B, N, H*Dh) views of the projection output: the sequence-axis product needs no copy of K or V.
        k, v = k.transpose(1, 2).reshape(b, n, h * d), v.transpose(1, 2).reshape(b, n, h * d)
        if key_mask is None:  # every key real: one projection for the whole batch, nothing to mask
            r = (n - 1) * self.rank // n_max + 1  # rows whose segment holds a key: floor((n-1) rank / n_max) + 1
            e_key, e_value, row_mask = self.e_key[:r, :n], self.e_value[:r, :n], None  # (R, N)
        else:
            lengths = key_mask.sum(dim=1)  # (B,)
            rows = torch.where(lengths > 0, (lengths - 1) * self.rank // n_max + 1, 0)  # (B,) rows holding a real key
            r = max(int(rows.max()), 1) if b else 1
            row_mask = torch.arange(r, device=k.device)[None, :] < rows[:, None]  # (B, R)
            pair = (row_mask[:, :, None] & key_mask[:, None, :]).to(k.dtype)  # (B, R, N)
            e_key, e_value = self.e_key[:r, :n] * pair, self.e_value[:r, :n] * pair  # (B, R, N)
            real = key_mask[:, :, None]  # (B, N, 1)
            k = torch.where(real, k, 0.0)  # padded keys zeroed before projection: no leak, no gradient
            v = torch.where(real, v, 0.0)
        kp = torch.matmul(e_key, k).view(b, r, h, d).transpose(1, 2)  # (B, H, R, Dh)
        vp = torch.matmul(e_value, v).view(b, r, h, d).transpose(1, 2)  # (B, H, R, Dh)
        bias = None
        if positions is not None and positions.uses_bias:
            row = torch.arange(n, device=k.device) * self.rank // n_max  # (N,) the row that pools key j
            weight = torch.ones(b, n, device=k.device) if key_mask is None else key_mask.float()  # (B, N)
            total = weight.new_zeros(b, r).index_add_(1, row, weight * k_pos)  # (B, R)
            count = weight.new_zeros(b, r).index_add_(1, row, weight)
            centres = total / count.clamp(min=1)  # (B, R) mean position of each row's real keys
            bias = positions.bias(q_pos.expand(b, -1), centres).transpose(0, 1).to(q.dtype)  # (B, H, M, R)
        allowed = None if row_mask is None else open_keys(row_mask)[:, None, None, :]  # (B, 1, 1, R)
        mask = score_mask(allowed, bias)
        return F.scaled_dot_product_attention(q, kp, vp, attn_mask=mask, dropout_p=self.dropout_p), state
