"""Routing attention (Routing Transformer): content-based clusters; each query attends to its cluster's keys.

Queries and keys are routed to one of `clusters` clusters by the same router, so the reducing block's nq
queries and n keys, which differ in number and position, meet in one set of clusters:

- `router=kmeans` (default): nearest of K unit centroids per head by cosine similarity. The centroids are
  a buffer updated as an exponential moving average (`centroid_decay`) of the unit keys assigned to them,
  after each optimizer step (`after_step`, so a forward pass stays a pure function). The auxiliary loss is
  the commitment of the keys to their centroids (mean cosine distance), which keeps clusters tight.
- `router=learned`: the design document's routing matrix W_r (head_dim x K per head); route by
  argmax(x W_r). A query's output is scaled by its routing probability (as a mixture-of-experts gate, so W_r
  learns), and the auxiliary loss is the load balance K · sum_c f_c · P_c of the keys (Switch Transformer).

Queries and keys are then sorted together by (cluster, position) and cut into chunks of `chunk` items; the
queries of a chunk attend to the keys of that chunk and the one before (`sorted_chunk_attention`, shared
with lsh), so a query sees the keys of its cluster nearest to it in position, at a fixed cost per query
however the clusters are balanced. The auxiliary loss, times `aux_weight`, reaches the training loop
through `Kernel.aux_loss`. Padding is never routed (a padded row sorts and chunks like the row alone); a
query whose chunks hold no key gets a zero output, never NaN. With one cluster and chunk >= m + n every
query sees every key: full attention. Cost O(n·K + (m + n)·chunk).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from seqcompress.kernels import Capabilities, Kernel, register_kernel, sorted_chunk_attention

ROUTERS = ("kmeans", "learned")


@register_kernel("routing")
class RoutingAttention(Kernel):
    capabilities = Capabilities(
        resizing=True, key_mask=True, bias=True, rotary=True,
        complexity="O(n·K + n·c) for K clusters, chunks of c items", max_length="any",
        options={"clusters": 8, "chunk": 64, "router": "kmeans", "centroid_decay": 0.999, "aux_weight": 0.01},
        summary="queries and keys routed to content clusters (online k-means or a learned W_r)", memory=True,
    )

    def __init__(self, geometry, heads, head_dim, dropout, options) -> None:
        super().__init__(geometry, heads, head_dim, dropout, options)
        self.clusters, self.chunk = int(options["clusters"]), int(options["chunk"])
        self.router, self.decay, self.weight = str(options["router"]), float(options["centroid_decay"]), float(
            options["aux_weight"])
        if self.clusters < 1 or self.chunk < 1:
            raise ValueError(f"routing attention needs clusters >= 1 and chunk >= 1, got {self.clusters} and "
                             f"{self.chunk}")
        if self.router not in ROUTERS:
            raise ValueError(f"routing attention's router must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if not 0 <= self.decay < 1 or self.weight < 0:
            raise ValueError("routing attention needs centroid_decay in [0, 1) and aux_weight >= 0")
        # (H, K, Dh) unit centroids, saved with the model; the learned router is a parameter instead.
        self.register_buffer("centroids", F.normalize(torch.randn(heads, self.clusters, head_dim), dim=-1))
        self.route = (nn.Parameter(torch.randn(heads, head_dim, self.clusters) / math.sqrt(head_dim))
                      if self.router == "learned" else None)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, Dh) -> (B, H, L, K) routing scores."""
        if self.route is not None:
            return torch.einsum("bhld,hdk->bhlk", x.float(), self.route)
        return torch.einsum("bhld,hkd->bhlk", F.normalize(x.float(), dim=-1), self.centroids.float())

    def forward(self, q, k, v, *, q_pos, k_pos, key_mask, q_spans, positions, query_mask=None, state=None):
        b, h, m, d = q.shape
        n = k.shape[2]
        self.aux_loss = None
        if m == 0 or n == 0:
            return q.new_zeros(b, h, m, d), state
        real = torch.ones(b, n, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
        k_real = torch.where(real[:, None, :, None], k, 0.0)  # NaN padding never routed
        k_logits = self._logits(k_real)
        q_logits = self._logits(q)
        k_cluster, q_cluster = k_logits.argmax(dim=-1), q_logits.argmax(dim=-1)  # (B, H, N), (B, H, M)
        out, _ = sorted_chunk_attention(q, k, v, q_cluster, k_cluster, q_pos=q_pos, k_pos=k_pos, key_mask=key_mask,
                                        query_mask=query_mask, chunk=self.chunk, positions=positions, kernel=self)
        if self.route is not None:  # the gate through which W_r learns
            out = out * torch.softmax(q_logits, dim=-1).gather(-1, q_cluster[..., None])
        if self.training:
            self.aux_loss = self.weight * self._aux(k_real, k_logits, k_cluster, real)
        return out.to(q.dtype), state

    def _aux(self, k_real, k_logits, k_cluster, real) -> torch.Tensor:
        """Commitment (k-means) or balance (learned) over the real keys (`k_real`: padding zeroed); k-means also
        keeps the batch's cluster sums for `after_step`."""
        weight = real[:, None, :].expand_as(k_cluster).float()  # (B, H, N)
        count = weight.sum().clamp(min=1.0)
        if self.route is not None:  # K · sum_c f_c · P_c per head: 1 when balanced, K when all in one cluster
            per_head = weight.sum(dim=(0, 2)).clamp(min=1.0)[:, None]  # (H, 1)
            f = (F.one_hot(k_cluster, self.clusters).float() * weight[..., None]).sum(dim=(0, 2)) / per_head
            p = (torch.softmax(k_logits, dim=-1) * weight[..., None]).sum(dim=(0, 2)) / per_head
            return self.clusters * (f * p).sum(dim=-1).mean()
        # k-means logits are cosines to the centroids: the assigned one's is the largest.
        commitment = ((1 - k_logits.max(dim=-1).values) * weight).sum() / count
        with torch.no_grad():
            onehot = F.one_hot(k_cluster, self.clusters).float() * weight[..., None]  # (B, H, N, K)
            sums = torch.einsum("bhnk,bhnd->hkd", onehot, F.normalize(k_real.float(), dim=-1))
            counts = onehot.sum(dim=(0, 2))  # (H, K)
            if self.collect_statistics:
                pending = self._pending
                self._pending = (sums, counts) if pending is None else (pending[0] + sums, pending[1] + counts)
        return commitment

    @torch.no_grad()
    def after_step(self) -> None:
        """Move each centroid that received keys toward their mean direction (EMA); empty clusters stay."""
        parallel = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.route is not None or (self._pending is None and not parallel):
            return  # a learned router keeps no centroids
        sums, counts = self._pending if self._pending is not None else (
            torch.zeros_like(self.centroids, dtype=torch.float32), self.centroids.new_zeros(self.centroids.shape[:2]))
        self._pending = None
        if parallel:  # every process's keys move the centroids, as one process's would (each rank calls this)
            packed = torch.cat([sums.float().flatten(), counts.float().flatten()])
            dist.all_reduce(packed)
            sums, counts = packed[: sums.numel()].view_as(sums), packed[sums.numel():].view_as(counts)
        seen = counts > 0
        mean = sums / counts.clamp(min=1.0)[..., None]
        moved = F.normalize(self.decay * self.centroids + (1 - self.decay) * mean, dim=-1)
        self.centroids.copy_(torch.where(seen[..., None], moved, self.centroids))
