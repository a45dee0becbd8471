"""The learned length-changing matrices W_S (reducing, m x n) and W_E (expanding, n x m).

absolute  (the paper's) a free (out_max, in_max) table, sliced per sample: W[:m, :L]. Bounded by n_max,
          and dense: at n = 16k a W_S alone is 8k x 16k floats (512 MB, four times that with AdamW).
relative  W[i, j] = w(j - c_i): one learned profile over a band of offsets around row i's centre c_i
          (`seqcompress/lengths.py`), shared by every row. It is defined for any length, so one model
          reduces windows longer than any it was trained on, and it is banded: O(m · band) memory.

Both start as segment pooling (reducing: each output row averages the inputs that map to it;
expanding: each output row copies its latent), slice per sample so that padding never changes a result,
and expose `apply(values, layout)` (W · values) and `mix(x, xn, attn, layout)`, the sub-layer of a Block:
W X + Attn(W LN(X), LN(X)).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from seqcompress.lengths import as_fraction, dct_matrix, latent_positions, pooling_matrix

__all__ = ["DCT_STARTS", "RESIZES", "RESIZE_INITS", "ResizeMatrix", "RelativeResize"]

RESIZES = ("absolute", "relative")


# How W_S/W_E start (ModelConfig.resize_init). "dct": W_S keeps the lowest-frequency DCT coefficients and W_E
# inverts them, and the whole model starts as that truncated DCT (`SequenceAutoencoder`, seqcompress/model.py);
# "pca" is the same start with each symbol's features on their principal axes in the training windows.
RESIZE_INITS = ("pool", "random", "dct", "pca")
DCT_STARTS = ("dct", "pca")  # the starts whose W_S/W_E are the truncated DCT and its inverse

class ResizeMatrix(nn.Module):
    """The absolute table: (out_max, in_max), sliced and masked per sample.

    init="pool" starts as segment pooling, so a fresh model already passes each symbol's information
    through the bottleneck; init="random" is N(0, 1/in_max); init="dct" is the truncated DCT of in_max points
    (reducing) or its inverse (expanding), and a sample shorter than in_max adds the fixed difference between
    the DCT of its own length and that slice (`_length_offsets`): a fresh model is the truncated DCT of every
    window, the last short one of a file too, and training moves the shared table from there.
    """

    per_length = False  # "dct": each sample's own length is a DCT of that length (set in __init__)
    expanding = False  # "dct": W_E, the inverse transform (`orient`)

    def __init__(self, out_max: int, in_max: int, ratio: float, init: str = "pool") -> None:
        super().__init__()
        self.out_max, self.in_max = out_max, in_max
        weight = torch.randn(out_max, in_max) / math.sqrt(in_max)  # (out_max, in_max)
        if init == "pool":
            weight = 0.01 * weight + pooling_matrix(out_max, in_max, ratio)
        elif init in DCT_STARTS:
            weight = _dct_table(out_max, in_max, out_max > in_max).clone()
        elif init != "random":
            raise ValueError(f"unknown resize init {init!r} (expected one of {', '.join(RESIZE_INITS)})")
        self.weight = nn.Parameter(weight)
        self.per_length = init in DCT_STARTS
        self.expanding = out_max > in_max

    @torch.no_grad()
    def orient(self, expanding: bool) -> None:
        """"dct": make this table the truncated DCT (reducing) or its inverse (expanding). The shape alone cannot
        say which when the two lengths are equal (ratio 1), so the model says it (`start_as_dct`)."""
        self.expanding = expanding
        self.weight.copy_(_dct_table(self.out_max, self.in_max, expanding))
    def forward(self, out_mask: torch.Tensor, in_mask: torch.Tensor) -> torch.Tensor:
        """Per-sample W[:out_len, :in_len], zero elsewhere: (B, M, N) from masks (B, M) and (B, N)."""
        m, n = out_mask.shape[1], in_mask.shape[1]
        if m > self.out_max or n > self.in_max:
            raise ValueError(f"sequence of length {max(m, n)} exceeds this model's maximum ({self.in_max})")
        pair_mask = out_mask[:, :, None] & in_mask[:, None, :]  # (B, M, N)
        return self.weight[:m, :n] * pair_mask  # (B, M, N)

    def _length_offsets(self, out_mask: torch.Tensor, in_mask: torch.Tensor) -> torch.Tensor:
        """(B, M, N): per sample, DCT(own length) - the table's slice at init, zero for a full-length sample. Reads
        the lengths off the masks (on a GPU a wait, paid only by dct models on batches with padding)."""
        reducing = not self.expanding
        offsets = torch.zeros(out_mask.shape[0], out_mask.shape[1], in_mask.shape[1], device=out_mask.device)
        pairs = torch.stack([out_mask.sum(1), in_mask.sum(1)], 1).tolist()  # (out_len, in_len) per sample
        for out_len, in_len in {tuple(p) for p in pairs}:
            length = in_len if reducing else out_len
            if length in (0, self.in_max if reducing else self.out_max):
                continue
            rows = [b for b, p in enumerate(pairs) if tuple(p) == (out_len, in_len)]
            offset = _dct_offset(self.out_max, self.in_max, out_len, in_len, self.expanding)
            offsets[rows, :out_len, :in_len] = offset.to(offsets.device)
        return offsets

    def matrices(self, layout) -> torch.Tensor:
        """(B, M, N): each sample's W; with "dct", a sample shorter than the table gets its own length's DCT
        offset (only when the batch has padding, so a batch of full windows costs nothing more)."""
        w = self(layout.out_mask, layout.in_mask)
        return w + self._length_offsets(layout.out_mask, layout.in_mask) if self.per_length and not layout.all_real else w

    def apply(self, values: torch.Tensor, layout) -> torch.Tensor:
        return self.matrices(layout) @ values  # (B, M, D)

    def mix(self, x, xn, attn, layout) -> torch.Tensor:
        w = self.matrices(layout)  # (B, M, N)
        return w @ x + attn(w @ xn, xn, layout)  # (B, M, D)


@functools.lru_cache(maxsize=8)
def _dct_table(out_max: int, in_max: int, expanding: bool) -> torch.Tensor:
    """The (out_max, in_max) "dct" table: out_max coefficient rows of the in_max-point DCT, or the transpose of the
    inverse's. Cached, read-only (callers clone)."""
    return dct_matrix(in_max, out_max).T.contiguous() if expanding else dct_matrix(out_max, in_max)


@functools.lru_cache(maxsize=16)  # a few lengths per model (a file's last window); at most 16 (out_len, in_len)
def _dct_offset(out_max: int, in_max: int, out_len: int, in_len: int, expanding: bool) -> torch.Tensor:
    """The DCT of a sample's own length minus the table's slice, (out_len, in_len)."""
    own = _dct_table(out_len, in_len, expanding)
    return own - _dct_table(out_max, in_max, expanding)[:out_len, :in_len]


class RelativeResize(nn.Module):
    """W[i, j] = w(j - c_i) over a learned band of offsets, for any length.

    `per_in` is output rows per input row (ratio when reducing, 1 / ratio when expanding). Row i sits at
    c_i = (i + 0.5) / per_in - 0.5 in input-index units. The profile w is a table on a grid of half an
    input (half a latent when expanding), linearly interpolated, covering the row's own segment and
    `band` segments on either side.
    """

    def __init__(self, per_in: float, band: float = 1.0, init: str = "pool") -> None:
        super().__init__()
        self.per_in = as_fraction(per_in)
        segment = max(1.0, 1.0 / float(self.per_in))  # a row's own segment, in input rows
        self.step = 0.5 * min(1.0, 1.0 / float(self.per_in))  # grid spacing in input rows
        self.half_width = (0.5 + float(band)) * segment
        self.grid = math.ceil(self.half_width / self.step)
        self.reach = math.ceil(self.half_width) + 1  # integer offsets gathered on each side
        g = torch.arange(-self.grid, self.grid + 1) * self.step  # (2G + 1,) offsets in input rows
        if init == "pool":
            inside = g.abs() < 0.5 * segment
            edge = (g.abs() - 0.5 * segment).abs() < 1e-9
            height = min(1.0, float(self.per_in))
            table = height * (inside.float() + 0.5 * edge.float())
        elif init == "random":
            table = torch.randn(len(g)) * min(1.0, float(self.per_in))
        else:
            raise ValueError(f"unknown resize init {init!r} (expected 'pool' or 'random')")
        self.profile = nn.Parameter(table)  # (2G + 1,)

    def band_weights(self, m: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (m, K) of the input rows each output row reads, and their weights (m, K)."""
        c = latent_positions(m, self.per_in, device, torch.float64)  # (m,) row centres in input rows
        offsets = torch.arange(-self.reach, self.reach + 1, device=device)  # (K,)
        idx = torch.round(c).long()[:, None] + offsets[None, :]  # (m, K)
        u = ((idx - c[:, None]) / self.step + self.grid).float()  # (m, K) grid coordinate
        u0 = torch.floor(u)
        t = u - u0
        table = nn.functional.pad(self.profile, (1, 1))  # zero beyond the band on both sides
        i0 = (u0.long() + 1).clamp(0, len(table) - 1)
        i1 = (u0.long() + 2).clamp(0, len(table) - 1)
        weights = (1 - t) * table[i0] + t * table[i1]  # (m, K)
        outside = (u < -1) | (u > 2 * self.grid + 1)
        return idx, weights.masked_fill(outside, 0.0)

    def apply(self, values: torch.Tensor, layout) -> torch.Tensor:
        """W · values: (B, N, D) -> (B, M, D) with W sliced to each sample's lengths."""
        m, n = layout.out_mask.shape[1], values.shape[1]
        idx, weights = self.band_weights(m, n, values.device)  # (M, K), (M, K)
        inside = (idx >= 0) & (idx < n)
        safe = idx.clamp(0, max(n - 1, 0))
        real = layout.in_mask[:, safe] & inside[None] & layout.out_mask[:, :, None]  # (B, M, K)
        w = weights[None] * real  # (B, M, K)
        gathered = values[:, safe.reshape(-1)].view(values.shape[0], m, -1, values.shape[2])  # (B, M, K, D)
        return torch.einsum("bmk,bmkd->bmd", w.to(values.dtype), gathered)  # (B, M, D)

    def mix(self, x, xn, attn, layout) -> torch.Tensor:
        return self.apply(x, layout) + attn(self.apply(xn, layout), xn, layout)  # (B, M, D)
