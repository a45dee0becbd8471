"""Full softmax attention over every key (the paper's), through PyTorch's scaled_dot_product_attention."""

from __future__ import annotations

import torch.nn.functional as F

from seqcompress.kernels import Capabilities, Kernel, open_keys, register_kernel, score_mask


@register_kernel("full")
class FullAttention(Kernel):
    capabilities = Capabilities(
        resizing=True, key_mask=True, bias=True, rotary=True, complexity="O(m·n) time, O(m + n) memory (SDPA)",
        max_length="any", summary="every query scores every key", memory=True,
    )

    def forward(self, q, k, v, *, q_pos, k_pos, key_mask, q_spans, positions, query_mask=None, state=None):
        allowed = None if key_mask is None else open_keys(key_mask)[:, None, None, :]  # (B, 1, 1, N)
        bias = positions.bias(q_pos, k_pos) if positions is not None else None  # (H, M, N)
        mask = score_mask(allowed, None if bias is None else bias[None].to(q.dtype))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout_p), state  # (B, H, M, Dh)
