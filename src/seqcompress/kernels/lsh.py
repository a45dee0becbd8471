"""LSH sparse attention (Reformer): each query attends only to the keys that hash near it.

Queries and keys share one hashing: both are L2-normalised and projected by the same random rotation R
(head_dim x buckets/2) per round; an item's bucket is argmax([xR, -xR]), so a query lands in the bucket of
the keys it is most similar to in direction. This is what lets the reducing block, whose nq queries
(W_S X W_Q) and n keys differ in number and position, hash at all: the queries are not keys, but they live
in the same space and go through the same R.

Per round, queries and keys are sorted together by (bucket, position) and cut into chunks of `chunk`
items; the queries of a chunk attend to the keys of that chunk and the one before
(`sorted_chunk_attention`; padding sorts after every real item, so a padded row is chunked exactly like
the row alone). The rounds are combined by their log-sum-exp, as one softmax over the union of the keys
they saw would weigh them.

Cost O(rounds · ((m + n) log(m + n) + (m + n) · chunk)). With one bucket and chunk >= m + n every query
sees every key: full attention. The rotations are drawn once, from the model's seed, and saved with the model, so the hashing
(and the buckets the backward pass sees) is fixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqcompress.kernels import Capabilities, Kernel, combine_rounds, register_kernel, sorted_chunk_attention


@register_kernel("lsh")
class LSHAttention(Kernel):
    capabilities = Capabilities(
        resizing=True, key_mask=True, bias=True, rotary=True,
        complexity="O(r·(n log n + n·c)) for r hash rounds, chunks of c items", max_length="any",
        options={"hash_buckets": 16, "hash_rounds": 2, "chunk": 64},
        summary="queries and keys hashed by a shared random rotation; a query sees its chunk of sorted keys", memory=True,
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

    def forward(self, q, k, v, *, q_pos, k_pos, key_mask, q_spans, positions, query_mask=None, state=None):
        b, h, m, d = q.shape
        if m == 0 or k.shape[2] == 0:
            return q.new_zeros(b, h, m, d), state
        outs, lses = [], []
        for r in range(self.rounds):
            with torch.no_grad():
                q_bucket, k_bucket = self._bucket(q, r), self._bucket(k, r)
            out, lse = sorted_chunk_attention(q, k, v, q_bucket, k_bucket, q_pos=q_pos, k_pos=k_pos,
                                              key_mask=key_mask, query_mask=query_mask, chunk=self.chunk,
                                              positions=positions, kernel=self)
            outs.append(out)
            lses.append(lse)
        return combine_rounds(outs, lses).to(q.dtype), state  # (B, H, M, Dh)
