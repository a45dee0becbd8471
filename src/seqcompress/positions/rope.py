"""Rotary positions (RoPE, Su et al., 2021): queries and keys rotated by angle pos * theta^(-2i/d), so a
score depends on the distance k - q only. Positions may be fractional (a latent sits between inputs).
No parameters; defined for any length. Kernels that mix keys along the sequence (low-rank) cannot use it.
"""

from __future__ import annotations

import torch

from seqcompress.positions import PositionScheme, register_position


@register_position("rope")
class RotaryPositions(PositionScheme):
    rotary = True
    relative = True
    options = {"rope_theta": 10_000.0}
    description = "queries and keys rotated by position (no parameters)"

    def __init__(self, heads: int, head_dim: int, options: dict) -> None:
        super().__init__(heads, head_dim, options)
        if head_dim % 2:
            raise ValueError(f"rope positions need an even head width, got {head_dim}")
        theta = float(options["rope_theta"])
        self.register_buffer("inv_freq", theta ** (-torch.arange(0, head_dim, 2).float() / head_dim), persistent=False)

    def rotate(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        angles = pos.float()[:, None] * self.inv_freq[None, :]  # (L, Dh/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, L, Dh/2) each
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)  # (B, H, L, Dh)
