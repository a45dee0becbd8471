"""LSH sparse attention (Reformer): each query attends only to the keys that hash near it.

Queries and keys share one hashing: both are L2-normalised and projected by the same random rotation R
(head_dim x buckets/2) per round; an item's bucket is argmax([xR, -xR]), so a query lands in the bucket of
the keys it is most similar to in direction. This is what lets the reducing block, whose nq queries
(W_S X W_Q) and n keys differ in number and position, hash at all: the queries are not keys, but they live
in the same space and go through the same R.

Per round, the real keys are sorted by (bucket, position) and cut into chunks of `chunk` keys; padding keys
get a bucket of their own and sort after every real key, so padding never moves a chunk boundary (a padded
batch row is chunked exactly like the same row alone). Each query is placed by the same sort key among the
sorted keys (`searchsorted`) and attends to the keys of its chunk and the one before: 2·chunk keys. Queries
never share a chunk with each other, so a query's output depends only on itself and the keys. The rounds
are combined by their log-sum-exp, as one softmax over the union of the keys they saw would weigh them.

Cost O(rounds · (n log n + m · chunk)). With one bucket and chunk >= n every query sees every key: full
attention. The rotations are drawn once, from the model's seed, and saved with the model, so the hashing
(and the buckets the backward pass sees) is fixed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqcompress.kernels import Capabilities, Kernel, attend_gathered, register_kernel


@register_kernel("lsh")
class LSHAttention(Kernel):
    capabilities = Capabilities(
        resizing=True, key_mask=True, bias=True, rotary=True,
        complexity="O(r·(n log n + m·c)) for r hash rounds, chunks of c keys", max_length="any",
        options={"hash_buckets": 16, "hash_rounds": 2, "chunk": 64},
        summary="queries and keys hashed by a shared random rotation; a query sees its chunk of sorted keys",
    )

    def __init__(self, geometry, heads, head_dim, dropout, options) -> None:
        super().__init__(geometry, heads, head_dim, dropout, options)
        self.buckets, self.rounds = int(options["hash_buckets"]), int(options["hash_rounds"])
        self.chunk = int(options["chunk"])
        if self.buckets < 1 or (self.buckets > 1 and self.buckets % 2):
            raise ValueError(f"lsh attention needs hash_buckets 1 or even, got {self.buckets}")
        if self.rounds < 1 or self.chunk < 1:
            raise ValueError(f"lsh attention needs hash_rounds >= 1 and chunk >= 1, got {self.rounds} and {self.chunk}")
        # (rounds, H, Dh, buckets / 2): drawn from the model's seed; a persistent buffer, saved and restored exactly.
        half = max(self.buckets // 2, 1)
        self.register_buffer("rotations", torch.randn(self.rounds, heads, head_dim, half))

    def _bucket(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """(B, H, L, Dh) -> (B, H, L) bucket ids of round r."""
        if self.buckets == 1:
            return torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
        projected = torch.einsum("bhld,hdk->bhlk", F.normalize(x.float(), dim=-1), self.rotations[r].float())
        return torch.cat([projected, -projected], dim=-1).argmax(dim=-1)

    def forward(self, q, k, v, *, q_pos, k_pos, key_mask, q_spans, positions, state=None):
        b, h, m, d = q.shape
        n = k.shape[2]
        if m == 0 or n == 0:
            return q.new_zeros(b, h, m, d), state
        c = min(self.chunk, n)
        chunks = math.ceil(n / c)
        span = float(max(float(k_pos.max()), float(q_pos.max()), 0.0)) + 2.0  # sort key: bucket * span + position
        real = torch.ones(b, n, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
        n_real = real.sum(dim=1).clamp(min=1)  # (B,)
        outs, lses = [], []
        with torch.no_grad():
            hashes = [(self._bucket(q, r), self._bucket(k, r)) for r in range(self.rounds)]
        for q_bucket, k_bucket in hashes:
            with torch.no_grad():
                k_bucket = torch.where(real[:, None, :], k_bucket, self.buckets)  # padding: a bucket after all
                k_key = k_bucket.double() * span + k_pos.double()  # (B, H, N)
                sorted_key, order = torch.sort(k_key, dim=-1)
                q_key = q_bucket.double() * span + q_pos.double()  # (B, H, M)
                place = torch.searchsorted(sorted_key.contiguous(), q_key.contiguous())  # (B, H, M) in 0..N
                place = torch.minimum(place, (n_real - 1)[:, None, None])  # never past the last real key
                mine = place // c  # (B, H, M) the query's chunk
                slots = torch.arange(2 * c, device=q.device)  # the previous chunk, then its own
                idx = (mine[..., None] - 1) * c + slots  # (B, H, M, 2c) positions in the sorted keys
                inside = (idx >= 0) & (idx < chunks * c) & (idx < n)
                idx = idx.clamp(0, n - 1)
                key_idx = torch.gather(order, 2, idx.view(b, h, -1)).view(b, h, m, 2 * c)  # original key indices
                allowed = inside & torch.gather(real[:, None, :].expand(b, h, n), 2,
                                                key_idx.view(b, h, -1)).view(b, h, m, 2 * c)
            out, lse = attend_gathered(q, k, v, key_idx, allowed, q_pos, k_pos, positions, self)
            outs.append(out)
            lses.append(lse)
        lse_all = torch.stack(lses)  # (R, B, H, M)
        total = torch.logsumexp(lse_all, dim=0)
        share = torch.exp(lse_all - torch.where(torch.isfinite(total), total, 0.0))  # each round's weight
        share = torch.where(torch.isfinite(lse_all), share, 0.0)
        out = (share[..., None] * torch.stack(outs)).sum(dim=0)
        return out.to(q.dtype), state  # (B, H, M, Dh)
