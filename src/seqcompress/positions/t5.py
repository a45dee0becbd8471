"""T5 relative position bias (Raffel et al., 2020): a learned scalar per head and distance bucket.

Buckets are bidirectional: half for keys before the query, half after; within each half, exact
buckets for distances below buckets/4 and logarithmic ones up to `max_distance`, beyond which all
distances share the last bucket. Distances (input-index units) are rounded to the nearest integer.
One table per stack, shared by its blocks (as T5 and x-transformers do).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqcompress.positions import PositionScheme, register_position


def t5_buckets(relative: torch.Tensor, buckets: int, max_distance: int) -> torch.Tensor:
    """Integer relative distances (key - query) -> bucket ids in [0, buckets)."""
    half = buckets // 2
    ids = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    large = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return ids + torch.where(distance < exact, distance, large)


@register_position("t5")
class T5Bias(PositionScheme):
    uses_bias = True
    relative = True
    options = {"buckets": 32, "max_distance": 128}
    description = "learned bias per head and log-spaced distance bucket"

    def __init__(self, heads: int, head_dim: int, options: dict) -> None:
        super().__init__(heads, head_dim, options)
        self.buckets, self.max_distance = int(options["buckets"]), int(options["max_distance"])
        if self.buckets < 4 or self.max_distance < self.buckets // 4 + 1:
            raise ValueError(f"t5 positions need buckets >= 4 and max_distance > buckets / 4, got "
                             f"{self.buckets} and {self.max_distance}")
        self.table = nn.Parameter(torch.zeros(self.buckets, heads))  # (buckets, H); zero: no bias at start

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        relative = torch.round(k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)).long()  # (..., M, N)
        b = self.table[t5_buckets(relative, self.buckets, self.max_distance)]  # (..., M, N, H)
        return b.movedim(-1, 0)  # (H, ..., M, N)
