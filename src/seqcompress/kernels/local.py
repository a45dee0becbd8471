"""Segmented (local) attention: each query attends only to the keys of its own segment, +- `window` keys.

A query's segment is the span of keys it stands for (`Geometry.key_spans`): itself in self-attention,
the inputs pooled into it for a reducing block (so a local reducing block starts where the Linformer
projection starts, a segment mean, but keeps a softmax over a neighbourhood), the latent it was copied
from for an expanding block.

Cost O(n·w): queries are cut into blocks; each block gathers the contiguous band of keys its queries
can reach, and SDPA runs on (blocks, block queries, band keys) with a mask for each query's own window.
No n x n score matrix exists at any point. With window >= n this is full attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqcompress.kernels import Capabilities, Kernel, open_keys, register_kernel, score_mask


@register_kernel("local")
class LocalAttention(Kernel):
    capabilities = Capabilities(
        resizing=True, key_mask=True, bias=True, rotary=True, complexity="O(n·w) time and memory for window w",
        max_length="any", options={"window": 64}, summary="each query sees its segment +- w keys",
    )

    def __init__(self, geometry, heads, head_dim, dropout, options) -> None:
        super().__init__(geometry, heads, head_dim, dropout, options)
        self.window = int(options["window"])
        if self.window < 0:
            raise ValueError(f"local attention needs window >= 0, got {self.window}")

    def forward(self, q, k, v, *, q_pos, k_pos, key_mask, q_spans, positions, query_mask=None, state=None):
        b, h, m, d = q.shape
        n = k.shape[2]
        w = self.window
        if m == 0 or n == 0:
            return q.new_zeros(b, h, m, d), state
        # Queries per block: about as many as cover 2 windows of keys, so a band is ~4 windows wide (the least memory:
        # gathered keys grow as band / block, scores as band).
        block = max(8, min(256, math.ceil(2 * max(w, 1) * m / max(n, 1))))
        blocks = math.ceil(m / block) if m else 0
        pad = blocks * block - m
        spans = F.pad(q_spans, (0, 0, 0, pad), value=-1) if pad else q_spans  # (Mb, 2); padded queries see nothing
        if pad:
            spans[m:] = spans[m - 1]
        lo, hi = (spans[:, 0] - w).clamp(min=0), (spans[:, 1] + w).clamp(max=n - 1)  # (Mb,) each query's window
        lo_b, hi_b = lo.view(blocks, block), hi.view(blocks, block)
        start = lo_b.min(dim=1).values  # (blocks,)
        band = int((hi_b.max(dim=1).values - start).max()) + 1 if blocks else 1
        idx = start[:, None] + torch.arange(band, device=q.device)[None, :]  # (blocks, band) key indices
        inside = (idx >= 0) & (idx < n)  # (blocks, band)
        gather = idx.clamp(0, max(n - 1, 0)).reshape(-1)  # (blocks * band,)
        kb = k[:, :, gather].view(b, h, blocks, band, d)  # (B, H, blocks, band, Dh)
        vb = v[:, :, gather].view(b, h, blocks, band, d)
        qb = F.pad(q, (0, 0, 0, pad)).view(b, h, blocks, block, d)  # (B, H, blocks, block, Dh)
        j = idx[:, None, :]  # (blocks, 1, band)
        allowed = inside[:, None, :] & (j >= lo_b[:, :, None]) & (j <= hi_b[:, :, None])  # (blocks, block, band)
        if key_mask is not None:
            real = key_mask[:, gather].view(b, blocks, 1, band)  # (B, blocks, 1, band)
            allowed = allowed[None] & real  # (B, blocks, block, band)
        else:
            allowed = allowed[None]  # (1, blocks, block, band)
        allowed = open_keys(allowed)[:, None]  # (B|1, 1, blocks, block, band)
        bias = None
        if positions is not None and positions.uses_bias:
            qp = F.pad(q_pos, (0, pad), value=float(q_pos[-1]) if m else 0.0).view(blocks, block)
            kp = k_pos[gather].view(blocks, band)
            bias = positions.bias(qp, kp)[None].to(q.dtype)  # (1, H, blocks, block, band)
        y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=score_mask(allowed, bias), dropout_p=self.dropout_p)
        return y.reshape(b, h, blocks * block, d)[:, :, :m], state  # (B, H, M, Dh)
