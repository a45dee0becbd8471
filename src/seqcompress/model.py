"""The reducing-attention autoencoder: n symbols -> m latents -> n symbols.

    input (B, N) token ids or (B, N, F) vectors
      -> embed + learned positions                        (B, N, D)
      -> encoder: reducing block (W_S: m x n) + self-attention blocks at length M   (B, M, D)
      -> latent projection                                (B, M, latent_dim)
      -> decoder: expanding block (W_E: n x m) + self-attention blocks at length N  (B, N, D)
      -> head: vocabulary logits (tied to the embedding) or vectors   (B, N, V) / (B, N, F)

Every sample in a batch has its own length L <= n_max and m = latent_length(L) latents.
The model never touches files: domains turn files into tensors, `seqcompress.compress` and
`seqcompress.format` turn latents into bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import math
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as safetensors_bytes
from torch import nn

from seqcompress.attention import Attention, Block, Layout
from seqcompress.errors import InputError, ModelFileError
from seqcompress import faults
from seqcompress.atomic import atomic_directory, finish_commit, interrupted_replacement
from seqcompress.kernels import KERNELS, Kernel, check_combination, make_kernel
from seqcompress.lengths import Geometry, latent_length, latent_positions, length_mask, stage_lengths
from seqcompress.memory import Link, Memory, MemoryBatch
from seqcompress.positions import POSITIONS, make_positions
from seqcompress.reducers import REDUCERS
from seqcompress.resize import DCT_STARTS, RESIZE_INITS, RESIZES

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
MODEL_FORMAT = "seqcompress-model"
MODEL_FORMAT_VERSION = 3  # 2: attention seam (kernels, position schemes, stages, relative resize); 3: fingerprint scheme 3
FINGERPRINT_SCHEME = 3  # 3: the domain's state is hashed too


def option_defaults(attention: str, positions: str, resize: str) -> dict:
    """Every option a kernel, position scheme and resize take, with its default."""
    takes = {**KERNELS[attention].capabilities.options, **POSITIONS[positions].options}
    if attention != "full":
        takes["scope"] = "all"  # the blocks the kernel serves: "all", or "resizing" (self-attention stays full)
    if resize == "relative":
        takes["band"] = 1.0
    return takes


# Fixed caps, checked before a config sizes anything: far above any model this project trains, far below
# what a hand-edited config.json could make a loader allocate (tested in tests/test_hostile.py).
_INT_LIMITS = {
    "n_max": (1, 1 << 24), "d_model": (1, 1 << 16), "heads": (1, 1024), "layers": (1, 256), "ffn_dim": (1, 1 << 20),
    "latent_dim": (1, 1 << 16), "vocab_size": (0, 1 << 24), "feature_dim": (0, 1 << 20), "memory": (0, 1 << 24),
}
_MAX_STAGES = 64
_MAX_OPTION = 1 << 24  # any numeric kernel, position or resize option


@dataclass
class ModelConfig:
    n_max: int = 128  # longest input (symbols per window); any length 1..n_max is accepted
    ratio: float = 0.5  # latents per input symbol; m = ceil(L * ratio), at least 1 (the product of `stages`)
    d_model: int = 256  # width of every block
    heads: int = 4  # attention heads per block
    layers: int = 2  # blocks in the encoder and again in the decoder (the first one resizes)
    ffn_dim: int = 1024  # hidden width of each feed-forward layer
    latent_dim: int = 256  # width of a stored latent vector (a projection when < d_model)
    dropout: float = 0.0  # dropout in attention and feed-forward layers
    positions: str = "learned"  # position scheme (seqcompress/positions/): learned, none, t5, alibi, rope
    resize_init: str = "pool"  # W_S/W_E start as segment pooling ("pool"), N(0, 1/n) ("random"), or the model as a
    # truncated DCT ("dct": vector inputs, see SequenceAutoencoder.start_as_dct; "pca": the same, with each
    # symbol's features on their principal axes in the training windows, `Domain.start_basis`)
    reducer: str = "attention"  # the length-changing layer: this project's, or a baseline (seqcompress/reducers.py)
    vocab_size: int = 0  # token domains: size of the vocabulary (0 for vector inputs)
    feature_dim: int = 0  # vector domains: features per input position (0 for token inputs)
    attention: str = "full"  # attention kernel of every block (seqcompress/kernels/): full, lowrank, local, lsh, routing
    resize: str = "absolute"  # W_S/W_E: a free table bounded by n_max ("absolute") or a relative profile
    stages: list[float] = field(default_factory=list)  # per-stage ratios, n -> n*s1 -> n*s1*s2 ...; [] is one stage
    options: dict = field(default_factory=dict)  # kernel, position and resize options by name (window, rank, ...)
    memory: int = 0  # symbols of the same record before a window that its blocks also attend to (seqcompress/memory.py)

    def __post_init__(self) -> None:
        for name, (low, high) in _INT_LIMITS.items():  # before anything is sized from them
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InputError(f"{name} must be a whole number from {low:,} to {high:,}, got {value!r}")
        for name in ("ratio", "dropout"):
            if not isinstance(getattr(self, name), (int, float)) or isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be a number, got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.heads:
            raise InputError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        if not isinstance(self.stages, list) or len(self.stages) > _MAX_STAGES:
            raise InputError(f"stages must be a list of at most {_MAX_STAGES} ratios, got {self.stages!r}")
        if not 0 < self.ratio <= 1:
            raise InputError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.n_max < 1:
            raise InputError(f"n_max must be at least 1, got {self.n_max}")
        if (self.vocab_size > 0) == (self.feature_dim > 0):
            raise InputError("exactly one of vocab_size (tokens) and feature_dim (vectors) must be set")
        if self.layers < 1:
            raise InputError(f"layers must be at least 1, got {self.layers}")
        for name, value, registry in (("reducer", self.reducer, REDUCERS), ("attention", self.attention, KERNELS),
                                      ("positions", self.positions, POSITIONS), ("resize", self.resize, RESIZES)):
            if value not in registry:
                raise InputError(f"{name} must be one of {', '.join(registry)}, got {value!r}")
        if self.resize_init not in RESIZE_INITS:
            raise InputError(f"resize_init must be one of {', '.join(RESIZE_INITS)}, got {self.resize_init!r}")
        self.stages = [float(s) for s in self.stages]
        if self.stages:
            if any(not 0 < s <= 1 for s in self.stages):
                raise InputError(f"every stage ratio must be in (0, 1], got {self.stages}")
            if abs(math.prod(self.stages) - self.ratio) > 1e-9:
                raise InputError(f"the stages {self.stages} multiply to {math.prod(self.stages):.6g}, not the ratio {self.ratio}")
        if self.resize_init in DCT_STARTS:
            start = f"resize_init {self.resize_init!r}"
            if self.vocab_size:
                raise InputError(f"{start} starts a model of vector inputs (time series, audio) as a "
                                 "truncated DCT; token inputs have no DCT")
            if self.reducer != "attention" or self.resize != "absolute" or len(self.stage_ratios) != 1:
                raise InputError(f"{start} needs reducer 'attention', resize 'absolute' and one stage: "
                                 "W_S and W_E are then one DCT and its inverse")
            if not self.feature_dim <= self.d_model or not self.latent_dim <= self.d_model:
                raise InputError(f"{start} carries the {self.feature_dim} input features and the "
                                 f"{self.latent_dim} latent floats in the model's width: d_model ({self.d_model}) "
                                 "must be at least both")
        if self.resize == "relative" and self.reducer != "attention":
            raise InputError(f"resize 'relative' shapes W_S of reducer 'attention'; reducer {self.reducer!r} has no W_S")
        if not isinstance(self.options, dict):
            raise InputError(f"options must be a mapping of option names to values, got {self.options!r}")
        takes = self.option_defaults()
        unknown = sorted(set(self.options) - set(takes))
        if unknown:
            raise InputError(f"option(s) {', '.join(unknown)} not used by attention {self.attention!r}, positions "
                             f"{self.positions!r} and resize {self.resize!r} (they take: {', '.join(takes) or 'none'})")
        # Saved in full: a default changed later must not rebuild a saved model differently.
        self.options = {**takes, **self.options}
        for key, value in self.options.items():  # sizes come from some of them (rank, buckets, band)
            if isinstance(value, bool) or (isinstance(value, (int, float)) and not abs(value) <= _MAX_OPTION):
                raise InputError(f"option {key} must be a number of at most {_MAX_OPTION:,}, got {value!r}")
        if self.memory > 64 * self.n_max:
            raise InputError(f"memory ({self.memory:,} symbols) may reach back at most 64 windows ({64 * self.n_max:,})")
        if self.options.get("scope", "all") not in ("all", "resizing"):
            raise InputError(f"option scope must be 'all' or 'resizing', got {self.options['scope']!r}")
        why = check_combination(self.attention, POSITIONS[self.positions], resizing=REDUCERS[self.reducer].needs_attention,
                                memory=self.memory > 0)
        if why:
            raise InputError(why)

    def option_defaults(self) -> dict:
        return option_defaults(self.attention, self.positions, self.resize)

    @property
    def stage_ratios(self) -> list[float]:
        return self.stages or [self.ratio]

    def stage_lengths(self, length: int) -> list[int]:
        """[L, m_1, ..., m_S]: the length after each stage."""
        return stage_lengths(length, self.stage_ratios)

    @property
    def m_max(self) -> int:
        """Latents of a full-length window."""
        return self.latent_length(self.n_max)

    def latent_length(self, length: int) -> int:
        return self.stage_lengths(length)[-1]

    @property
    def max_length(self) -> int | None:
        """The longest input this model takes: n_max, or None when nothing in it is sized to n_max
        (relative positions and resize, a kernel without a table), so it reduces windows of any length."""
        bounded = (POSITIONS[self.positions].absolute or self.resize == "absolute" or self.reducer != "attention"
                   or KERNELS[self.attention].capabilities.max_length != "any")
        return self.n_max if bounded else None


# Fingerprint scheme 2 hashes only the fields whose value differs from the neutral value below, so a
# field added later (with its neutral value here) never changes the fingerprint of a model saved before.
# These values are frozen: they are what the scheme hashes against, not the current defaults.
FINGERPRINT_NEUTRAL = {
    "n_max": 128, "ratio": 0.5, "d_model": 256, "heads": 4, "layers": 2, "ffn_dim": 1024, "latent_dim": 256,
    "dropout": 0.0, "positions": "learned", "resize_init": "pool", "reducer": "attention", "vocab_size": 0,
    "feature_dim": 0, "attention": "full", "resize": "absolute", "stages": [], "options": {}, "memory": 0,
}
# Scheme 1 (model format 1) hashed these fields, and `reducer` only when it was not "attention".
_SCHEME1_FIELDS = ("n_max", "ratio", "d_model", "heads", "layers", "ffn_dim", "latent_dim", "dropout", "positions",
                   "resize_init", "vocab_size", "feature_dim")


class SequenceAutoencoder(nn.Module):
    def __init__(self, config: ModelConfig, feature_basis: torch.Tensor | None = None) -> None:
        """A fresh model of `config`; a "dct" or "pca" start carries the features in `feature_basis`
        (`start_as_dct`)."""
        super().__init__()
        self.config = c = config
        scheme = POSITIONS[c.positions]
        absolute = scheme.absolute
        if c.vocab_size:
            self.embed: nn.Module = nn.Embedding(c.vocab_size, c.d_model)
            nn.init.normal_(self.embed.weight, std=0.02)
        else:
            self.embed = nn.Linear(c.feature_dim, c.d_model)
        self.in_positions = nn.Parameter(0.02 * torch.randn(c.n_max, c.d_model)) if absolute else None
        head_dim = c.d_model // c.heads
        # One position scheme per stack, handed to each of its blocks at call time (parameters, if any, shared).
        self.encoder_positions = make_positions(c.positions, c.heads, head_dim, c.options)
        self.decoder_positions = make_positions(c.positions, c.heads, head_dim, c.options)
        reducer = REDUCERS[c.reducer]
        maxes = c.stage_lengths(c.n_max)  # [n_max, m_1 max, ..., m_max]

        def attention(geometry: Geometry) -> Attention:
            # scope "resizing": the chosen kernel in the length-changing blocks, full attention in the others
            kernel = c.attention if geometry.kind != "self" or c.options.get("scope", "all") == "all" else "full"
            return Attention(c.d_model, c.heads, make_kernel(kernel, geometry, c.heads, head_dim, c.dropout, c.options))

        def resizing(out_max: int, in_max: int, ratio: float, kind: str) -> Block:
            resize = reducer.build(out_max, in_max, ratio, c.d_model, c)
            attn = attention(Geometry(kind, out_max, in_max, ratio)) if reducer.needs_attention else None
            return Block(c.d_model, c.ffn_dim, attn, c.dropout, resize, out_max if absolute else 0)

        def plain(length: int) -> Block:
            return Block(c.d_model, c.ffn_dim, attention(Geometry("self", length, length)), c.dropout)

        ratios = c.stage_ratios
        self.encoder = nn.ModuleList(
            [resizing(maxes[s + 1], maxes[s], r, "reduce") for s, r in enumerate(ratios)]
            + [plain(maxes[-1]) for _ in range(c.layers - 1)])
        # "dct" and "pca" leave out the two final norms: they would rescale every latent and every output row.
        self.enc_norm = nn.LayerNorm(c.d_model) if c.resize_init not in DCT_STARTS else nn.Identity()
        self.to_latent = nn.Linear(c.d_model, c.latent_dim) if c.latent_dim != c.d_model else nn.Identity()
        self.from_latent = nn.Linear(c.latent_dim, c.d_model) if c.latent_dim != c.d_model else nn.Identity()
        self.decoder = nn.ModuleList(
            [resizing(maxes[s], maxes[s + 1], ratios[s], "expand") for s in reversed(range(len(ratios)))]
            + [plain(c.n_max) for _ in range(c.layers - 1)])
        self.dec_norm = nn.LayerNorm(c.d_model) if c.resize_init not in DCT_STARTS else nn.Identity()
        # Token domains: logits through the (tied) embedding matrix; vector domains: a linear map back.
        self.head = None if c.vocab_size else nn.Linear(c.d_model, c.feature_dim)
        if c.resize_init in DCT_STARTS:
            self.start_as_dct(feature_basis)

    @torch.no_grad()
    def start_as_dct(self, basis: torch.Tensor | None = None) -> None:
        """Make this model compute the truncated DCT along the sequence: the classical codec it starts from.

        `basis` (feature_dim x feature_dim, orthonormal rows, most important first; default the identity) is
        the order in which the width carries a symbol's features: channel f holds <basis[f], x> and the head
        maps back with its transpose. A domain whose feature vector is itself a signal (an audio frame) gives
        its transform here (`Domain.feature_basis`), so that keeping the first latent_dim channels keeps the
        frame's lowest coefficients, not its first samples.

        Input feature f (coordinate f in `basis`) is carried in channel f of the width (the embedding, the head
        and the latent maps are identities on their first channels), every block's attention and feed-forward
        branch starts at zero (its output layer is zero: the residual passes unchanged, and training moves it
        from there), positions start at zero, and W_S/W_E are the DCT and its inverse (`resize_init` "dct"). A
        window of n_max symbols then keeps, per feature, its m lowest DCT coefficients, the first latent_dim
        features of each latent row being stored: with one value per feature and latent_dim features stored,
        that is exactly the truncated DCT at the same number of stored floats (tests/test_model.py); a shorter
        window gets the leading rows of the same matrices, close to its own DCT but not equal."""
        c = self.config
        eye = lambda rows, cols: torch.eye(rows, cols)  # noqa: E731
        carried = eye(c.d_model, c.feature_dim)  # (d_model, F): channel f <- feature f
        if basis is not None:
            basis = torch.as_tensor(basis, dtype=torch.float64)
            if basis.shape != (c.feature_dim, c.feature_dim):
                raise InputError(f"a feature basis for the DCT start must be {c.feature_dim} x {c.feature_dim}, "
                                 f"got {tuple(basis.shape)}")
            if not torch.allclose(basis @ basis.T, torch.eye(c.feature_dim, dtype=torch.float64), atol=1e-5):
                raise InputError("a feature basis for the DCT start must have orthonormal rows")
            carried = carried.double() @ basis
        self.embed.weight.copy_(carried)
        self.embed.bias.zero_()
        self.head.weight.copy_(carried.T)
        self.head.bias.zero_()
        for linear in (self.to_latent, self.from_latent):
            if isinstance(linear, nn.Linear):
                linear.weight.copy_(eye(*linear.weight.shape))
                linear.bias.zero_()
        if self.in_positions is not None:
            self.in_positions.zero_()
        for stack, expanding in ((self.encoder, False), (self.decoder, True)):
            for block in stack:
                if block.resize is not None:
                    block.resize.orient(expanding)
        for block in [*self.encoder, *self.decoder]:
            outputs = [block.ffn[2]] + ([block.attn.out] if block.attn is not None else [])
            for linear in outputs:
                linear.weight.zero_()
                linear.bias.zero_()
            if block.positions is not None:
                block.positions.zero_()

    # ---- lengths -------------------------------------------------------------------------
    def _check_lengths(self, lengths: torch.Tensor, padded: int) -> None:
        longest = int(lengths.max()) if lengths.numel() else 0
        limit = self.config.max_length
        if limit is not None and longest > limit:
            raise InputError(
                f"sequence of length {longest} is longer than this model's n_max={self.config.n_max}; "
                "split it into windows (domains do this when reading files)"
            )
        if longest > padded or (lengths.numel() and int(lengths.min()) < 0):
            raise InputError(f"lengths must lie in 0..{padded} (the padded length)")

    def _levels(self, lengths: torch.Tensor, padded: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
        """Per level (input, then after each stage): (lengths (B,), positions (L_pad,), whether no row is padding)
        of the batch on `device`;
        the input level is `padded` rows long (callers may pad past the longest sample). Computed from the
        lengths on the host: lengths given on the CPU (as training gives them) cost a GPU no wait."""
        per_sample = [self.config.stage_lengths(int(n)) for n in lengths.tolist()]
        levels, cumulative = [], 1.0
        for s in range(len(self.config.stage_ratios) + 1):
            if s:
                cumulative *= self.config.stage_ratios[s - 1]
            column = [p[s] for p in per_sample]
            ls = torch.tensor(column, dtype=torch.long).to(device, non_blocking=True)
            pad = padded if s == 0 else max(column, default=0)
            levels.append((ls, latent_positions(pad, cumulative, device), all(c == pad for c in column)))
        return levels

    def _layouts(self, levels, scheme, order: str) -> tuple[list[Layout], Layout]:
        """The resizing blocks' layouts (in stack order) and the layout of the self-attention blocks after them."""
        ratios = self.config.stage_ratios
        masks = [length_mask(ls, len(pos)) for ls, pos, _ in levels]
        full = all(no_padding for _, _, no_padding in levels)
        steps = range(len(ratios)) if order == "encode" else reversed(range(len(ratios)))
        layouts = []
        for s in steps:
            src, dst = (s, s + 1) if order == "encode" else (s + 1, s)
            geometry = Geometry("reduce" if order == "encode" else "expand", 0, 0, ratios[s])
            m = len(levels[dst][1])
            layouts.append(Layout(masks[src], masks[dst], full, levels[src][1], levels[dst][1],
                                  geometry.key_spans(m, masks[dst].device), scheme))
        last = len(levels) - 1 if order == "encode" else 0
        mask, pos = masks[last], levels[last][1]
        plain = Layout(mask, mask, full, pos, pos, Geometry("self", 0, 0).key_spans(len(pos), mask.device), scheme)
        return layouts, plain

    @staticmethod
    def _zero_padding(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # torch.where, not a product: 0 * NaN is NaN, and a NaN in padding must change nothing.
        return torch.where(mask if values.dim() == mask.dim() else mask[..., None], values, torch.zeros((), dtype=values.dtype))

    # ---- encoder / decoder ---------------------------------------------------------------
    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor, memory: MemoryBatch | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, N) ids or (B, N, F) vectors, lengths (B,) -> latents (B, M, latent_dim), latent lengths (B,).

        Latent rows beyond a sample's latent length are zero. `memory`: the encoder's memory plan for these
        windows (`memory_plan`), for a model with memory; without it every window is encoded alone.
        """
        n = inputs.shape[1]
        self._check_lengths(lengths, n)
        levels = self._levels(lengths, n, inputs.device)
        resizes, plain = self._layouts(levels, self.encoder_positions, "encode")
        inputs = self._zero_padding(inputs, length_mask(levels[0][0], n))
        x = self.embed(inputs)  # (B, N, D)
        if self.in_positions is not None:
            x = x + self.in_positions[:n]  # (B, N, D)
        key_levels = list(range(len(resizes))) + [len(resizes)] * (len(self.encoder) - len(resizes))  # each block's keys
        for i, (block, layout, level) in enumerate(zip(self.encoder, resizes + [plain] * len(self.encoder), key_levels)):
            x = block(x, self._remember(layout, memory, i, level, x))  # (B, M_s, D)
        if memory is not None:
            memory.close()
        z = self.to_latent(self.enc_norm(x))  # (B, M, latent_dim)
        return z * plain.out_mask[:, :, None], levels[-1][0]

    def decode(self, latents: torch.Tensor, latent_lengths: torch.Tensor, lengths: torch.Tensor, *,
               hidden: bool = False, memory: MemoryBatch | None = None, checked: bool = False) -> torch.Tensor:
        """latents (B, M, latent_dim) -> logits (B, N, V) or vectors (B, N, F), N = max(lengths); with `hidden`,
        the final states (B, N, D) before the output layer (`output` applies it, e.g. a few positions at a time,
        so that B x N x V logits of a large vocabulary never exist at once).

        `lengths` are the original lengths: several lengths share one latent length. `memory`: the decoder's
        memory plan (`memory_plan`), the windows in the order they were encoded. `checked`: the latent lengths
        are those `encode` returned for these lengths (`forward`), so they need no check (on a GPU, a wait).
        """
        n = int(lengths.max()) if lengths.numel() else 0
        self._check_lengths(lengths, n)
        levels = self._levels(lengths, n, latents.device)
        m = latents.shape[1]
        if not checked:
            if not torch.equal(levels[-1][0].cpu(), latent_lengths.cpu()):
                raise InputError("latent lengths do not match the original lengths for this model's ratio")
            if latent_lengths.numel() and m < int(latent_lengths.max()):
                raise InputError(f"latents have {m} rows, fewer than the latent length {int(latent_lengths.max())}")
        if m != len(levels[-1][1]):
            levels[-1] = (levels[-1][0], latent_positions(m, self.config.ratio, latents.device), False)
        resizes, plain = self._layouts(levels, self.decoder_positions, "decode")
        x = self.from_latent(self._zero_padding(latents, resizes[0].in_mask))  # (B, M, D)
        stages = len(resizes)
        key_levels = list(range(stages, 0, -1)) + [0] * (len(self.decoder) - stages)  # each block reads its keys here
        for i, (block, layout, level) in enumerate(zip(self.decoder, resizes + [plain] * len(self.decoder), key_levels)):
            x = block(x, self._remember(layout, memory, i, level, x))  # (B, N_s, D)
        if memory is not None:
            memory.close()
        x = self.dec_norm(x)  # (B, N, D)
        return x if hidden else self.output(x)

    def output(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Final states (..., D) -> logits (..., V) through the tied embedding, or vectors (..., F); written into
        `out` when given (a buffer reused across slices, so decoding allocates no new large block per slice)."""
        if out is None:
            return x @ self.embed.weight.T if self.head is None else self.head(x)  # (..., V) or (..., F)
        if self.head is None:
            return torch.matmul(x, self.embed.weight.T, out=out)
        return torch.matmul(x, self.head.weight.T, out=out).add_(self.head.bias)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor, links: list[Link] | None = None,
                memory: tuple[Memory, Memory] | None = None, hidden: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction (B, N, V|F) (with `hidden`, the final states (B, N, D) before the output layer: a
        sampled softmax computes only some of the logits), latents (B, M, latent_dim), latent lengths (B,). With memory and `links`
        (windows in stream order), each window also attends to the windows before it in the batch, and to what
        `memory` (the encoder's and the decoder's, `self.memory()`) carried from earlier calls. `lengths` (B,)
        may stay on the CPU when the inputs are on a GPU (training passes them so: no wait for the device)."""
        plans = (None, None)
        if self.config.memory and links is not None:
            stacks = memory or (self.memory(carry=False), self.memory(carry=False))
            plans = tuple(stack.batch(links, lengths.tolist()) for stack in stacks)
        z, latent_lengths = self.encode(inputs, lengths, plans[0])
        return self.decode(z, latent_lengths, lengths, hidden=hidden, memory=plans[1], checked=True), z, latent_lengths

    # ---- memory across windows (seqcompress/memory.py) -------------------------------------------
    def memory(self, carry: bool = True) -> Memory:
        """A fresh memory for one stack (encoder or decoder) of this model: `.batch(links, lengths)` plans a
        call of `encode` or `decode`; with `carry`, streams continue from call to call."""
        if not self.config.memory:
            raise InputError("this model has no memory (fit it with --memory)")
        return Memory(self.config.memory, self.config.n_max, self.config.stage_ratios, carry)

    @staticmethod
    def _remember(layout: Layout, memory: MemoryBatch | None, block: int, level: int, x: torch.Tensor) -> Layout:
        """The block's layout with its memory rows (gathered from earlier windows' inputs of this block)."""
        rows = memory.read(block, level, x) if memory is not None else None
        return layout if rows is None else dataclasses.replace(layout, memory=rows)

    # ---- what training adds to the domain's loss, and does after each step --------------------
    def aux_loss(self) -> torch.Tensor | None:
        """The sum of the auxiliary losses the last training forward left in the kernels (routing's
        commitment or balance), or None: the training loop adds it to the domain's loss."""
        losses = [m.aux_loss for m in self.modules() if isinstance(m, Kernel) and m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def after_step(self) -> None:
        """Let the kernels update their buffers (k-means centroids) after an optimizer step."""
        for m in self.modules():
            if isinstance(m, Kernel):
                m.after_step()

    @contextlib.contextmanager
    def statistics(self, collect: bool) -> Iterator[None]:
        """Within the block, training forwards leave (or, with `collect` False, do not leave) the statistics
        the kernels update their buffers from in `after_step`."""
        kernels = [m for m in self.modules() if isinstance(m, Kernel)]
        for m in kernels:
            m.collect_statistics = collect
        try:
            yield
        finally:
            for m in kernels:
                m.collect_statistics = True

    # ---- persistence ---------------------------------------------------------------------
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fingerprint(self, scheme: int = FINGERPRINT_SCHEME, domain: dict | None = None) -> str:
        """Hash of everything decode depends on: the config, the domain's state and every weight. Latent files
        record it to refuse a different model.

        Scheme 3 adds the domain's state (its "training" summary aside) to scheme 2, which hashes the config
        fields that differ from FINGERPRINT_NEUTRAL; scheme 1 is how models of format 1 were hashed. Models
        keep the scheme they were saved with, so they and their .sqz files still match.
        """
        config = asdict(self.config)
        if scheme == 1:
            hashed = {k: config[k] for k in _SCHEME1_FIELDS}
            if config["reducer"] != "attention":
                hashed["reducer"] = config["reducer"]
        elif scheme in (2, 3):
            hashed = {"fingerprint_scheme": 2,
                      **{k: v for k, v in config.items() if k not in FINGERPRINT_NEUTRAL or v != FINGERPRINT_NEUTRAL[k]}}
            if scheme == 3:
                hashed.update(fingerprint_scheme=3, domain={k: v for k, v in (domain or {}).items() if k != "training"})
        else:
            raise ModelFileError(f"unknown fingerprint scheme {scheme!r}")
        h = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:32]

    def save(self, directory: str | os.PathLike, domain: dict | None = None, drop: tuple[str, ...] = ()) -> None:
        """Write config.json (model config + the domain's state) and model.safetensors as one step: the
        directory is replaced as a whole (seqcompress.atomic), so a kill leaves the old model or the new one.
        Other entries of an existing directory are kept, except those named in `drop`."""
        domain = json.loads(json.dumps(domain or {}))  # what config.json will hold, hashed as it will be read
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "model": asdict(self.config),
            "domain": domain,
            "fingerprint": self.fingerprint(domain=domain),
            "fingerprint_scheme": FINGERPRINT_SCHEME,
            "parameters": self.parameter_count(),
        }
        with atomic_directory(directory, carry_over=True, drop=drop) as stage:
            (stage / WEIGHTS_FILE).write_bytes(safetensors_bytes(weights))
            faults.point("model-save:weights-written")
            (stage / CONFIG_FILE).write_bytes((json.dumps(meta, indent=2) + "\n").encode())
            faults.point("model-save:config-written")


MAX_CONFIG_BYTES = 16 * 1024 * 1024  # config.json: the config and the domain's state (a vocabulary at most)
MAX_WEIGHTS_HEADER_BYTES = 16 * 1024 * 1024  # the JSON header of model.safetensors: names, shapes and offsets


def read_model_meta(directory: str | os.PathLike) -> dict:
    """The parsed and checked config.json of a model directory, or ModelFileError saying what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        kept = interrupted_replacement(directory)
        if kept is not None:
            raise ModelFileError(f"{directory} is missing: a save that was interrupted left the previous model at "
                                 f"{kept}; rename it back to {directory.name}")
        raise ModelFileError(f"{directory} is not a model directory (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    finish_commit(directory)  # a save that was interrupted in the middle of its in-place commit
    path = directory / CONFIG_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelFileError(f"{directory} is not a model directory: {CONFIG_FILE} or {WEIGHTS_FILE} is missing")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{path} is {path.stat().st_size:,} bytes, more than a model config can be "
                             f"({MAX_CONFIG_BYTES:,})")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        why = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ModelFileError(f"{path} is not valid JSON: {why}") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a seqcompress model config")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path}: the model format version must be a whole number, got {version!r}")
    if version > MODEL_FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer seqcompress (model format {version}); upgrade")
    meta.setdefault("domain", {})
    for key, kind in (("model", dict), ("domain", dict), ("fingerprint", str)):
        if not isinstance(meta.get(key), kind) or (key != "domain" and not meta[key]):
            raise ModelFileError(f"{path} has no valid {key!r} entry; the model cannot be checked or loaded")
    scheme = meta.setdefault("fingerprint_scheme", 1)  # format-1 models record none
    if scheme not in (1, 2, 3):
        raise ModelFileError(f"{path}: unknown fingerprint scheme {scheme!r}")
    return meta


def _weights_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Tensor names -> (dtype, shape) from the JSON header of a safetensors file, read without its data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        (length,) = struct.unpack("<Q", raw) if len(raw) == 8 else (size,)
        if length > min(size - 8, MAX_WEIGHTS_HEADER_BYTES):
            raise ModelFileError(f"{path} is not a valid safetensors file: its header length does not fit the file")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
            return {k: (v["dtype"], list(v["shape"])) for k, v in header.items() if k != "__metadata__"}
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError, KeyError, TypeError):
            raise ModelFileError(f"{path} is not a valid safetensors file: its header is not readable") from None


def parameter_estimate(c: ModelConfig) -> int:
    """About how many values the model of config `c` holds (within a factor of 2 of the exact count for every
    kernel, position scheme, resize and reducer; tests/test_model.py), computed without building it."""
    d, lengths = c.d_model, c.stage_lengths(c.n_max)
    blocks = 2 * (len(lengths) - 1 + c.layers - 1)
    total = blocks * (4 * d * d + 2 * d * c.ffn_dim) + (c.vocab_size or 2 * c.feature_dim) * d
    total += 2 * d * c.latent_dim if c.latent_dim != d else 0
    if POSITIONS[c.positions].absolute:
        total += d * (c.n_max + sum(lengths))  # the input table and each resizing block's output table
    if c.attention == "lowrank":
        total += blocks * 2 * min(int(c.options.get("rank", 1)), c.n_max) * c.n_max
    if c.attention == "lsh":  # the saved rotations
        total += blocks * int(c.options.get("hash_rounds", 1)) * d * max(int(c.options.get("hash_buckets", 2)) // 2, 1)
    if c.attention == "routing":  # the saved centroids (and W_r)
        total += blocks * 2 * d * int(c.options.get("clusters", 1))
    if c.positions == "t5":
        total += 2 * int(c.options.get("buckets", 0)) * c.heads  # one bias table per stack
    for n, m in zip(lengths, lengths[1:]):
        if c.reducer != "attention" or c.resize == "absolute":
            total += 2 * n * m  # W_S and W_E (or the baseline's sequence projection)
        if c.reducer == "perceiver":
            total += (n + m) * d
    if c.reducer == "attention" and c.resize == "relative":  # a band profile per stage and direction
        band = float(c.options.get("band", 1.0))
        total += sum(2 * math.ceil(4 * (0.5 + band) / r + 3) for r in c.stage_ratios)
    return total


def check_config_against_weights(config: ModelConfig, path: Path) -> None:
    """Refuse a config whose model would hold far more than the weights file (a config.json edited to ask for
    gigabytes), before anything is allocated; the exact names and shapes are checked when the weights load."""
    _weights_header(path)
    needed = parameter_estimate(config) * 4  # float32
    if needed > 2 * path.stat().st_size + (1 << 20):
        raise ModelFileError(f"{CONFIG_FILE} does not match {WEIGHTS_FILE}: the config describes a model of about "
                             f"{needed:,} bytes, the weights file holds {path.stat().st_size:,}")


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SequenceAutoencoder, dict]:
    """Load a saved model (eval mode) and its metadata (including the domain's state). No pickle.

    Every number in config.json is checked against fixed caps, and the model it describes against the size of
    the weights file, before the model is built; the weights must then match it name for name and shape for
    shape, and the fingerprint is checked over config, domain state and weights."""
    meta = read_model_meta(directory)
    weights = Path(directory) / WEIGHTS_FILE
    known = {f.name for f in fields(ModelConfig)}
    try:
        config = ModelConfig(**{k: v for k, v in meta["model"].items() if k in known})
        check_config_against_weights(config, weights)
        model = SequenceAutoencoder(config)
        model.load_state_dict(load_file(str(weights), device="cpu"))
    except InputError as exc:
        raise ModelFileError(f"the model in {directory} has an invalid config: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as exc:
        raise ModelFileError(f"cannot load the model in {directory}: {' '.join(str(exc).split())}") from None
    scheme = meta["fingerprint_scheme"]
    if model.fingerprint(scheme, meta["domain"]) != meta["fingerprint"]:
        raise ModelFileError(f"{directory}: the weights or settings do not match the fingerprint in {CONFIG_FILE}; "
                             "the model was altered")
    return model.to(device).eval(), meta


def build_model(config: ModelConfig, seed: int = 0,
                feature_basis: torch.Tensor | None = None) -> SequenceAutoencoder:
    """A freshly initialised model, seeded for reproducibility; a "dct" or "pca" start carries the features in
    `feature_basis` (`Domain.start_basis`; see `SequenceAutoencoder.start_as_dct`)."""
    torch.manual_seed(seed)
    try:
        return SequenceAutoencoder(config, feature_basis)
    except ValueError as exc:  # an option value a kernel, scheme or resize refuses
        raise InputError(str(exc)) from None
