"""The length-changing layer of the autoencoder, and the baselines the probe compares it with.

Every encoder starts with one block (one per stage, with `stages`) that turns N rows into M rows, and
every decoder with one that turns M rows back into N. `ModelConfig.reducer` chooses how; a reducer is a
class plus one registration (`@register_reducer`), built by `build(out_max, in_max, ratio, d_model, config)`:

  attention  (default, this project) Q = W_S LN(X) W_Q with a learned W_S (m x n, absolute or relative;
             seqcompress/resize.py); keys and values from all n inputs through the model's kernel;
             residual W_S X. See seqcompress/attention.py.
  perceiver  Perceiver-style learned latent queries: m learned vectors, layer-normed, cross-attend to the
             input (the decoder: n learned output queries, as in Perceiver IO); residual = the queries.
  linformer  Linformer-style projection of the sequence axis: E (k x n) applied to the values,
             E LN(X) W_V W_O, with no softmax; residual E X.
  meanpool   Funnel-style mean pooling: the queries are the fixed means of consecutive segments
             (the decoder copies each latent to its segment) and attend to all inputs; nothing
             about the length change is learned.

All of them slice their (out_max, in_max) tables per sample exactly as W_S does, so every one of them
accepts variable lengths, never lets padding change a result, and has the same latent length.
The rest of the model (embedding, self-attention blocks, latent projection, head) is shared, so
their parameter counts differ only by the small length-changing tables (see `parameter_count`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from seqcompress.lengths import pooling_matrix
from seqcompress.registry import registrar
from seqcompress.resize import RelativeResize, ResizeMatrix

REDUCERS: dict[str, type] = {}


_register = registrar(REDUCERS)


def register_reducer(name: str, needs_attention: bool = True):
    def add(cls: type) -> type:
        cls.needs_attention = needs_attention
        return _register(name)(cls)

    return add


@register_reducer("attention")
class ReducingAttention:
    """W_S (or W_E): the absolute table or the relative profile, as `config.resize` says."""

    name: ClassVar[str]
    needs_attention: ClassVar[bool]

    @staticmethod
    def build(out_max: int, in_max: int, ratio: float, d_model: int, config) -> nn.Module:
        if config.resize == "relative":
            per_in = ratio if out_max <= in_max else 1 / ratio
            return RelativeResize(per_in, config.options.get("band", 1.0), config.resize_init)
        return ResizeMatrix(out_max, in_max, ratio, config.resize_init)


@register_reducer("perceiver")
class LearnedQueries(nn.Module):
    """Perceiver-style: the output rows are learned vectors that cross-attend to the input."""

    def __init__(self, out_max: int, d_model: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(out_max, d_model))  # (out_max, D)
        # Perceiver normalises the latent array before it cross-attends; without it these 0.02-scale queries
        # give near-uniform attention, every latent starts as the same average and training stalls.
        self.norm = nn.LayerNorm(d_model)

    @classmethod
    def build(cls, out_max, in_max, ratio, d_model, config) -> nn.Module:
        return cls(out_max, d_model)

    def mix(self, x, xn, attn, layout) -> torch.Tensor:
        m = layout.out_mask.shape[1]
        if m > len(self.queries):
            raise ValueError(f"sequence of length {m} exceeds this model's maximum ({len(self.queries)})")
        q = self.queries[:m].expand(x.shape[0], m, -1)  # (B, M, D)
        return q + attn(self.norm(q), xn, layout)  # (B, M, D)


@register_reducer("linformer", needs_attention=False)
class SequenceProjection(nn.Module):
    """Linformer-style: a learned projection E of the sequence axis applied to the values, no softmax."""

    def __init__(self, out_max: int, in_max: int, ratio: float, d_model: int, init: str) -> None:
        super().__init__()
        self.projection = ResizeMatrix(out_max, in_max, ratio, init)  # E, sliced and masked per sample
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    @classmethod
    def build(cls, out_max, in_max, ratio, d_model, config) -> nn.Module:
        return cls(out_max, in_max, ratio, d_model, config.resize_init)

    def mix(self, x, xn, attn, layout) -> torch.Tensor:
        e = self.projection(layout.out_mask, layout.in_mask)  # (B, M, N)
        return e @ x + self.out(e @ self.value(xn))  # (B, M, D)


@register_reducer("meanpool")
class FixedPooling(ResizeMatrix):
    """Funnel-style: W_S fixed at segment means (expanding: copies); the pooled queries attend to all inputs."""

    def __init__(self, out_max: int, in_max: int, ratio: float) -> None:
        nn.Module.__init__(self)
        self.out_max, self.in_max = out_max, in_max
        self.register_buffer("weight", pooling_matrix(out_max, in_max, ratio))  # saved, never trained

    @classmethod
    def build(cls, out_max, in_max, ratio, d_model, config) -> nn.Module:
        return cls(out_max, in_max, ratio)
