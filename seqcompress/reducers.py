"""The length-changing layer of the autoencoder, and the baselines the probe compares it with.

Every encoder starts with one block that turns N rows into M = latent_length(N) rows, and every
decoder with one that turns M rows back into N. `ModelConfig.reducer` chooses how:

  attention  (default, this project) Q = W_S LN(X) W_Q with a learned W_S (m x n); keys and values
             from all n inputs; residual W_S X. See seqcompress/attention.py.
  perceiver  Perceiver-style learned latent queries: m learned vectors, layer-normed, cross-attend to the
             input (the decoder: n learned output queries, as in Perceiver IO); residual = the queries.
  linformer  Linformer-style projection of the sequence axis: E (k x n) applied to the values,
             E LN(X) W_V W_O, with no softmax; residual E X.
  meanpool   Funnel-style mean pooling: the queries are the fixed means of consecutive segments
             (the decoder copies each latent to its segment) and attend to all inputs; nothing
             about the length change is learned.

All four slice their (out_max, in_max) tables per sample exactly as W_S does, so every one of them
accepts variable lengths, never lets padding change a result, and has the same latent length.
The rest of the model (embedding, self-attention blocks, latent projection, head) is shared, so
their parameter counts differ only by the small length-changing tables (see `parameter_count`).
"""

from __future__ import annotations

import torch
from torch import nn

from seqcompress.attention import ResizeMatrix, pooling_matrix

REDUCERS = ("attention", "perceiver", "linformer", "meanpool")


class LearnedQueries(nn.Module):
    """Perceiver-style: the output rows are learned vectors that cross-attend to the input."""

    def __init__(self, out_max: int, d_model: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(out_max, d_model))  # (out_max, D)
        # Perceiver normalises the latent array before it cross-attends; without it these 0.02-scale queries
        # give near-uniform attention, every latent starts as the same average and training stalls.
        self.norm = nn.LayerNorm(d_model)

    def mix(self, x, xn, attn, in_mask, out_mask, all_real) -> torch.Tensor:
        m = out_mask.shape[1]
        if m > len(self.queries):
            raise ValueError(f"sequence of length {m} exceeds this model's maximum ({len(self.queries)})")
        q = self.queries[:m].expand(x.shape[0], m, -1)  # (B, M, D)
        return q + attn(self.norm(q), xn, None if all_real else in_mask)  # (B, M, D)


class SequenceProjection(nn.Module):
    """Linformer-style: a learned projection E of the sequence axis applied to the values, no softmax."""

    def __init__(self, out_max: int, in_max: int, ratio: float, d_model: int, init: str) -> None:
        super().__init__()
        self.projection = ResizeMatrix(out_max, in_max, ratio, init)  # E, sliced and masked per sample
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def mix(self, x, xn, attn, in_mask, out_mask, all_real) -> torch.Tensor:
        e = self.projection(out_mask, in_mask)  # (B, M, N)
        return e @ x + self.out(e @ self.value(xn))  # (B, M, D)


class FixedPooling(ResizeMatrix):
    """Funnel-style: W_S fixed at segment means (expanding: copies); the pooled queries attend to all inputs."""

    def __init__(self, out_max: int, in_max: int, ratio: float) -> None:
        nn.Module.__init__(self)
        self.out_max, self.in_max = out_max, in_max
        self.register_buffer("weight", pooling_matrix(out_max, in_max, ratio))  # saved, never trained


def make_resize(kind: str, out_max: int, in_max: int, ratio: float, d_model: int, init: str) -> tuple[nn.Module, bool]:
    """The length-changing module for `kind` and whether its block needs its own attention."""
    if kind == "attention":
        return ResizeMatrix(out_max, in_max, ratio, init), True
    if kind == "perceiver":
        return LearnedQueries(out_max, d_model), True
    if kind == "linformer":
        return SequenceProjection(out_max, in_max, ratio, d_model, init), False
    if kind == "meanpool":
        return FixedPooling(out_max, in_max, ratio), True
    raise ValueError(f"unknown reducer {kind!r}; choose one of {', '.join(REDUCERS)}")
