"""ALiBi (Press et al., 2022): a fixed, head-specific linear penalty on distance, -slope_h * |k - q|.

Bidirectional (the penalty is symmetric). Distances are in input-index units, so a latent one step
away at ratio 1/4 is four inputs away. No parameters; defined for any length.
"""

from __future__ import annotations

import math

import torch

from seqcompress.positions import PositionScheme, register_position


def alibi_slopes(heads: int) -> torch.Tensor:
    """The paper's geometric slopes 2^(-8 h / H); for H not a power of two, the power below plus every
    other slope of the power above (as in the reference code)."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return torch.tensor(power_of_two(heads))
    low = 2 ** math.floor(math.log2(heads))
    return torch.tensor(power_of_two(low) + power_of_two(2 * low)[0::2][: heads - low])


@register_position("alibi")
class ALiBi(PositionScheme):
    uses_bias = True
    relative = True
    description = "fixed linear distance penalty per head (no parameters)"

    def __init__(self, heads: int, head_dim: int, options: dict) -> None:
        super().__init__(heads, head_dim, options)
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)  # (H,)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        distance = (k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)).abs()  # (..., M, N)
        shape = (self.heads,) + (1,) * distance.dim()
        return -self.slopes.view(shape) * distance  # (H, ..., M, N)
