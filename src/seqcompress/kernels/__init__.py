"""Attention kernels: the seam every attention mechanism plugs into.

A kernel is one module plus one registration (`@register_kernel("name")`, imported at the bottom):

    kernel(q, k, v, *, q_pos, k_pos, key_mask, q_spans, positions, query_mask=None, state=None) -> (out, state)

    q (B, H, M, Dh), k and v (B, H, N, Dh), already projected (and rotated, for rotary positions);
    q_pos (M,), k_pos (N,) float positions in input-index units; key_mask (B, N) bool, True = real key,
    or None when every key is real; q_spans (M, 2) the first and last key each query stands for
    (`Geometry.key_spans`); positions the stack's PositionScheme (its `bias` is the kernel's to apply on
    whichever keys it scores); query_mask (B, M) bool, True = real query, or None (only kernels whose queries
    interact, like the sorted-chunk ones, need it); state is carried between calls by kernels that keep one.
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
           "sorted_chunk_attention", "combine_rounds"]

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
    memory: bool = False  # takes extra keys with their own positions before the window's (`--memory`)


register_kernel = registrar(KERNELS)


class Kernel(nn.Module):
    """A kernel may also keep learned state that is not a parameter (k-means centroids): it then sets
    `aux_loss` in a training forward (a term the training loop adds to the domain's loss) and updates its
    buffers in `after_step`, which the training loop calls after each optimizer step, so that a forward
    pass itself stays a function of parameters and buffers. The statistics for `after_step` add up over the
    forwards of a step (gradient accumulation) and are summed over the processes of a data-parallel job;
    a forward with `collect_statistics` False (an empty share's placeholder) leaves none."""

    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities]
    aux_loss: torch.Tensor | None = None
    collect_statistics: bool = True

    def __init__(self, geometry: Geometry, heads: int, head_dim: int, dropout: float, options: dict) -> None:
        super().__init__()
        self.geometry, self.heads, self.head_dim, self.dropout = geometry, heads, head_dim, dropout

    @property
    def dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def after_step(self) -> None:
        """Update buffers from what the step's training forwards saw (nothing by default)."""


def make_kernel(name: str, geometry: Geometry, heads: int, head_dim: int, dropout: float, options: dict) -> Kernel:
    cls = KERNELS[name]
    own = {k: options.get(k, v) for k, v in cls.capabilities.options.items()}
    return cls(geometry, heads, head_dim, dropout, own)


def check_combination(kernel: str, positions, resizing: bool, memory: bool = False) -> str | None:
    """Why `kernel` cannot run with this position scheme class (in a resizing block, with memory), or None."""
    caps = KERNELS[kernel].capabilities
    if positions.rotary and not caps.rotary:
        return (f"attention {kernel!r} cannot use {positions.name!r} positions: its keys do not keep their own "
                "positions to rotate by (use t5 or alibi)")
    if positions.uses_bias and not caps.bias:
        return f"attention {kernel!r} cannot apply the {positions.name!r} position bias"
    if resizing and not caps.resizing:
        return f"attention {kernel!r} cannot serve a reducing or expanding block (queries and keys must coincide)"
    if memory and not caps.memory:
        return (f"attention {kernel!r} cannot use memory: its keys are tied to the window's own places "
                f"(use full, lsh or routing with --memory)")
    if memory and not (positions.uses_bias or positions.rotary):
        return (f"memory needs relative positions (t5, alibi or rope): with {positions.name!r} positions a memory row "
                "has the same place as the window's own row")
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


def sorted_chunk_attention(q, k, v, q_bucket, k_bucket, *, q_pos, k_pos, key_mask, query_mask, chunk: int,
                           positions, kernel: Kernel):
    """Attention within chunks of queries and keys sorted together by (bucket, position): the core of the
    content-based sparse kernels (lsh: random-rotation buckets; routing: clusters).

    Queries and keys are one sequence of M + N items, sorted by bucket, then position (a key before a
    query at the same place); padding items of either kind go after every real one, so a padded row is
    sorted and chunked exactly like the row alone. The sequence is cut into chunks of `chunk` items; the
    queries of a chunk attend to the keys of that chunk and the one before. Nothing is duplicated beyond
    those two chunks: O((M + N) · chunk) time and memory. Returns the output (B, H, M, Dh) in float32, zero
    for a query whose two chunks hold no real key, and each query's log-sum-exp (B, H, M), -inf for those.
    """
    b, h, m, d = q.shape
    n = k.shape[2]
    dev = q.device
    c = chunk
    items = m + n
    chunks = math.ceil(items / c)
    length = chunks * c
    real_k = torch.ones(b, n, dtype=torch.bool, device=dev) if key_mask is None else key_mask
    real_q = torch.ones(b, m, dtype=torch.bool, device=dev) if query_mask is None else query_mask
    with torch.no_grad():
        top = int(max(int(q_bucket.max()), int(k_bucket.max()))) + 1 if items else 1
        low = min(float(k_pos.min()) if n else 0.0, float(q_pos.min()) if m else 0.0, 0.0)  # memory keys sit before 0
        span = float(max(float(k_pos.max()) if n else 0.0, float(q_pos.max()) if m else 0.0, 0.0)) - low + 2.0
        k_key = torch.where(real_k[:, None, :], k_bucket, top).double() * span + (k_pos.double() - low)
        q_key = torch.where(real_q[:, None, :], q_bucket, top).double() * span + (q_pos.double() - low) + 0.5
        order = torch.cat([q_key, k_key], dim=-1).argsort(dim=-1, stable=True)  # (B, H, M + N) item per slot
        order = F.pad(order, (0, length - items), value=items)  # (B, H, L); index `items` is an empty slot
        is_key = order >= m
        is_key &= order < items
        key_slot_real = is_key & torch.gather(F.pad(torch.cat([torch.zeros_like(real_q), real_k], 1), (0, 1)),
                                              1, order.flatten(1)).view(b, h, length)
    zero = q.new_zeros(b, h, 1, d)
    pool_q = torch.cat([q, torch.zeros_like(k), zero], dim=2)  # (B, H, M + N + 1, Dh): queries, key rows, empty
    pool_k = torch.cat([torch.zeros_like(q), k, zero], dim=2)
    pool_v = torch.cat([torch.zeros_like(q), v, zero], dim=2)
    slot = order[..., None].expand(-1, -1, -1, d)
    qs = torch.gather(pool_q, 2, slot).view(b, h, chunks, c, d)
    ks = torch.gather(pool_k, 2, slot).view(b, h, chunks, c, d)
    vs = torch.gather(pool_v, 2, slot).view(b, h, chunks, c, d)
    ok = key_slot_real.view(b, h, chunks, c)

    def with_previous(x):  # (B, H, C, c, ...) -> (B, H, C, 2c, ...): the chunk before, then the chunk
        before = torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, :-1]], dim=2)
        return torch.cat([before, x], dim=3)

    kk, vv, allowed = with_previous(ks), with_previous(vs), with_previous(ok)
    vv = vv.masked_fill(~allowed[..., None], 0.0)  # padding values (NaN included) never reach the output
    scores = torch.matmul(qs.float(), kk.float().transpose(-1, -2)) / math.sqrt(d)  # (B, H, C, c, 2c)
    if positions is not None and positions.uses_bias:
        pos = F.pad(torch.cat([q_pos, k_pos]), (0, 1))[order]  # (B, H, L) each slot's position
        qp, kp = pos.view(b, h, chunks, c), with_previous(pos.view(b, h, chunks, c))
        scores = scores + torch.stack([positions.bias(qp[:, i], kp[:, i])[i] for i in range(h)], dim=1).float()
    scores = scores.masked_fill(~allowed[:, :, :, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, C, c)
    weights = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    weights = F.dropout(weights, kernel.dropout_p, kernel.training)
    out = torch.matmul(weights, vv.float()).view(b, h, length, d)
    where = order.argsort(dim=-1)[..., :m]  # (B, H, M) the slot of each query
    out = torch.gather(out, 2, where[..., None].expand(-1, -1, -1, d))
    return out, torch.gather(lse.view(b, h, length), 2, where)


def combine_rounds(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Outputs of several attention rounds over different key sets, weighted as one softmax over all of them
    would weigh them: by each round's share of the total log-sum-exp (a round that saw no key weighs 0)."""
    if len(outs) == 1:
        return outs[0]
    lse_all = torch.stack(lses)  # (R, B, H, M)
    total = torch.logsumexp(lse_all, dim=0)
    share = torch.exp(lse_all - torch.where(torch.isfinite(total), total, 0.0))
    share = torch.where(torch.isfinite(lse_all), share, 0.0)
    return (share[..., None] * torch.stack(outs)).sum(dim=0)


# One line per kernel: importing the module registers it.
from seqcompress.kernels import full, local, lowrank, lsh, routing  # noqa: E402,F401
