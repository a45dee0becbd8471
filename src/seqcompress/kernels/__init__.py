"""Attention kernels: the seam every attention mechanism plugs into.

A kernel is one module plus one registration (`@register_kernel("name")`, imported at the bottom):

    kernel(q, k, v, *, q_pos, k_pos, key_mask, q_spans, positions, state=None) -> (out, state)

    q (B, H, M, Dh), k and v (B, H, N, Dh), already projected (and rotated, for rotary positions);
    q_pos (M,), k_pos (N,) float positions in input-index units; key_mask (B, N) bool, True = real key,
    or None when every key is real; q_spans (M, 2) the first and last key each query stands for
    (`Geometry.key_spans`); positions the stack's PositionScheme (its `bias` is the kernel's to apply on
    whichever keys it scores); state is carried between calls by kernels that keep one (None here).
    Returns out (B, H, M, Dh) and the new state.

Every kernel declares its `Capabilities`; `check_combination` refuses at model build what a kernel
cannot do, with one line that says why. Options come from `ModelConfig.options` by the names the
kernel declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqcompress.lengths import Geometry
from seqcompress.registry import registrar

__all__ = ["KERNELS", "Capabilities", "Kernel", "register_kernel", "make_kernel", "open_keys", "score_mask",
           "attend_gathered"]

KERNELS: dict[str, type["Kernel"]] = {}


@dataclass(frozen=True)
class Capabilities:
    resizing: bool  # queries may differ from keys in number and position (reducing and expanding blocks)
    key_mask: bool  # honours a key-padding mask exactly
    bias: bool  # applies a relative-position bias (t5, alibi)
    rotary: bool  # keys keep their own positions, so rotary positions (rope) apply
    complexity: str  # time and memory per head in m queries, n keys
    max_length: str  # "any", or "n_max" when a learned table is sized to the longest input
    options: dict[str, object] = field(default_factory=dict)  # option name -> default
    summary: str = ""


register_kernel = registrar(KERNELS)


class Kernel(nn.Module):
    """A kernel may also keep learned state that is not a parameter (k-means centroids): it then sets
    `aux_loss` in a training forward (a term the training loop adds to the domain's loss) and updates its
    buffers in `after_step`, which the training loop calls after each optimizer step, so that a forward
    pass itself stays a function of parameters and buffers."""

    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities]
    aux_loss: torch.Tensor | None = None

    def __init__(self, geometry: Geometry, heads: int, head_dim: int, dropout: float, options: dict) -> None:
        super().__init__()
        self.geometry, self.heads, self.head_dim, self.dropout = geometry, heads, head_dim, dropout

    @property
    def dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def after_step(self) -> None:
        """Update buffers from what the last training forward saw (nothing by default)."""


def make_kernel(name: str, geometry: Geometry, heads: int, head_dim: int, dropout: float, options: dict) -> Kernel:
    cls = KERNELS[name]
    own = {k: options.get(k, v) for k, v in cls.capabilities.options.items()}
    return cls(geometry, heads, head_dim, dropout, own)


def check_combination(kernel: str, positions, resizing: bool) -> str | None:
    """Why `kernel` cannot run with this position scheme class (or in a resizing block), or None."""
    caps = KERNELS[kernel].capabilities
    if positions.rotary and not caps.rotary:
        return (f"attention {kernel!r} cannot use {positions.name!r} positions: its keys do not keep their own "
                "positions to rotate by (use t5 or alibi)")
    if positions.uses_bias and not caps.bias:
        return f"attention {kernel!r} cannot apply the {positions.name!r} position bias"
    if resizing and not caps.resizing:
        return f"attention {kernel!r} cannot serve a reducing or expanding block (queries and keys must coincide)"
    return None


def open_keys(key_mask: torch.Tensor) -> torch.Tensor:
    """A row with no real key attends to its padding instead of producing NaN (its output is zeroed by the
    caller): (..., N) bool -> (..., N) bool with every all-False row made all-True."""
    return key_mask | ~key_mask.any(dim=-1, keepdim=True)


def score_mask(allowed: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The attn_mask for SDPA: the boolean `allowed` as is, or the float bias with -inf where not allowed."""
    if bias is None:
        return allowed
    if allowed is None:
        return bias
    return bias.masked_fill(~allowed, float("-inf"))


QUERY_SLICE = 1024  # queries whose gathered keys are held at once (attend_gathered)


def attend_gathered(q, k, v, key_idx, allowed, q_pos, k_pos, positions, kernel: Kernel):
    """Each query's softmax over its own gathered keys (the sparse kernels: lsh, routing).

    key_idx (B, H, M, W) the keys each query scores, allowed (B, H, M, W) which of them count (padding and
    empty slots do not; NaN in them never reaches the output). Computed QUERY_SLICE queries at a time, since
    the gathered keys of every query at once would be M x W x Dh per head. Returns the output (B, H, M, Dh),
    float32, zero for a query with no allowed key, and each query's log-sum-exp (B, H, M), -inf for those."""
    b, h, m, d = q.shape
    outs, lses = [], []
    for start in range(0, m, QUERY_SLICE):
        sl = slice(start, min(m, start + QUERY_SLICE))
        idx, ok = key_idx[:, :, sl], allowed[:, :, sl]
        s_m, width = idx.shape[2], idx.shape[3]
        flat = idx.reshape(b, h, -1, 1).expand(-1, -1, -1, d)
        kg = torch.gather(k, 2, flat).view(b, h, s_m, width, d)
        vg = torch.gather(v, 2, flat).view(b, h, s_m, width, d).masked_fill(~ok[..., None], 0.0)
        scores = torch.einsum("bhmd,bhmkd->bhmk", q[:, :, sl].float(), kg.float()) / math.sqrt(d)
        if positions is not None and positions.uses_bias:
            scores = scores + _own_head_bias(positions, q_pos[sl], k_pos[idx], b, h, s_m)
        scores = scores.masked_fill(~ok, float("-inf"))  # padding keys (NaN included) drop out here
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, S)
        weights = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
        weights = F.dropout(weights, kernel.dropout_p, kernel.training)
        outs.append(torch.einsum("bhmk,bhmkd->bhmd", weights, vg.float()))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _own_head_bias(positions, q_pos: torch.Tensor, k_pos: torch.Tensor, b: int, h: int, m: int) -> torch.Tensor:
    """The position bias of each head for its own gathered keys: (B, H, M, W)."""
    bias = positions.bias(q_pos.expand(b, h, m)[..., None], k_pos)  # (H, B, H, M, 1, W): every head's bias
    return torch.diagonal(bias, dim1=0, dim2=2).squeeze(-3).movedim(-1, 1).float()  # each head its own


# One line per kernel: importing the module registers it.
from seqcompress.kernels import full, local, lowrank, lsh, routing  # noqa: E402,F401
