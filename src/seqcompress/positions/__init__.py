"""Position schemes: how attention learns where a row is.

A scheme is one module plus one registration (`@register_position("name")`, imported below). The
model builds one scheme per stack (encoder, decoder) and hands it to every block at call time, with
the positions of that block's queries and keys in input-index units (`seqcompress/lengths.py`), so
relative schemes see real distances between inputs and latents.

What a scheme may do, declared on its class:
  absolute  learned embeddings added to the input rows and to the output rows of each resizing block
  bias      bias(q_pos, k_pos) -> (H, ..., M, N): an additive score bias from relative distance (T5, ALiBi)
  rotary    rotate(x, pos): queries and keys rotated by their positions before the scores (RoPE)
A kernel that cannot honour `bias` or `rotary` says so in its capabilities and the model refuses the pair.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from seqcompress.registry import registrar

__all__ = ["POSITIONS", "PositionScheme", "register_position", "make_positions"]

POSITIONS: dict[str, type["PositionScheme"]] = {}


register_position = registrar(POSITIONS)


class PositionScheme(nn.Module):
    name: ClassVar[str] = ""
    absolute: ClassVar[bool] = False
    uses_bias: ClassVar[bool] = False
    rotary: ClassVar[bool] = False
    relative: ClassVar[bool] = False  # needs no table sized to n_max, so it works at any length
    options: ClassVar[dict[str, object]] = {}  # option name -> default (ModelConfig.options)
    description: ClassVar[str] = ""

    def __init__(self, heads: int, head_dim: int, options: dict) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """q_pos (..., M), k_pos (..., N) float -> additive score bias (H, ..., M, N), or None."""
        return None

    def rotate(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x (B, H, L, Dh) rotated by pos (L,); the identity unless the scheme is rotary."""
        return x


def make_positions(name: str, heads: int, head_dim: int, options: dict) -> PositionScheme:
    cls = POSITIONS[name]
    return cls(heads, head_dim, {k: options.get(k, v) for k, v in cls.options.items()})


# One line per scheme: importing the module registers it.
from seqcompress.positions import absolute, alibi, rope, t5  # noqa: E402,F401
