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

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as safetensors_bytes
from torch import nn

from seqcompress.attention import Block, latent_length, length_mask
from seqcompress.errors import InputError, ModelFileError
from seqcompress.atomic import atomic_write_bytes
from seqcompress.reducers import REDUCERS, make_resize

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
MODEL_FORMAT = "seqcompress-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    n_max: int = 128  # longest input (symbols per window); any length 1..n_max is accepted
    ratio: float = 0.5  # latents per input symbol; m = ceil(L * ratio), at least 1
    d_model: int = 256  # width of every block
    heads: int = 4  # attention heads per block
    layers: int = 2  # blocks in the encoder and again in the decoder (the first one resizes)
    ffn_dim: int = 1024  # hidden width of each feed-forward layer
    latent_dim: int = 256  # width of a stored latent vector (a projection when < d_model)
    dropout: float = 0.0  # dropout in attention and feed-forward layers
    positions: str = "learned"  # "learned" position embeddings, or "none" (only W_S/W_E know order)
    resize_init: str = "pool"  # W_S/W_E start as segment pooling ("pool") or N(0, 1/n) ("random")
    reducer: str = "attention"  # the length-changing layer: this project's, or a baseline (seqcompress/reducers.py)
    vocab_size: int = 0  # token domains: size of the vocabulary (0 for vector inputs)
    feature_dim: int = 0  # vector domains: features per input position (0 for token inputs)

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise InputError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.n_max < 1:
            raise InputError(f"n_max must be at least 1, got {self.n_max}")
        if (self.vocab_size > 0) == (self.feature_dim > 0):
            raise InputError("exactly one of vocab_size (tokens) and feature_dim (vectors) must be set")
        if self.positions not in ("learned", "none"):
            raise InputError(f"positions must be 'learned' or 'none', got {self.positions!r}")
        if self.layers < 1:
            raise InputError(f"layers must be at least 1, got {self.layers}")
        if self.reducer not in REDUCERS:
            raise InputError(f"reducer must be one of {', '.join(REDUCERS)}, got {self.reducer!r}")

    @property
    def m_max(self) -> int:
        """Latents of a full-length window."""
        return latent_length(self.n_max, self.ratio)

    def latent_length(self, length: int) -> int:
        return latent_length(length, self.ratio)


class SequenceAutoencoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        pos = c.positions == "learned"
        if c.vocab_size:
            self.embed: nn.Module = nn.Embedding(c.vocab_size, c.d_model)
            nn.init.normal_(self.embed.weight, std=0.02)
        else:
            self.embed = nn.Linear(c.feature_dim, c.d_model)
        self.in_positions = nn.Parameter(0.02 * torch.randn(c.n_max, c.d_model)) if pos else None

        def blocks(out_max: int, in_max: int) -> nn.ModuleList:
            resize, attention = make_resize(c.reducer, out_max, in_max, c.ratio, c.d_model, c.resize_init)
            first = Block(c.d_model, c.heads, c.ffn_dim, c.dropout, resize, out_max if pos else 0, attention)
            rest = [Block(c.d_model, c.heads, c.ffn_dim, c.dropout) for _ in range(c.layers - 1)]
            return nn.ModuleList([first, *rest])

        self.encoder = blocks(c.m_max, c.n_max)
        self.enc_norm = nn.LayerNorm(c.d_model)
        self.to_latent = nn.Linear(c.d_model, c.latent_dim) if c.latent_dim != c.d_model else nn.Identity()
        self.from_latent = nn.Linear(c.latent_dim, c.d_model) if c.latent_dim != c.d_model else nn.Identity()
        self.decoder = blocks(c.n_max, c.m_max)
        self.dec_norm = nn.LayerNorm(c.d_model)
        # Token domains: logits through the (tied) embedding matrix; vector domains: a linear map back.
        self.head = None if c.vocab_size else nn.Linear(c.d_model, c.feature_dim)

    # ---- lengths -------------------------------------------------------------------------
    def latent_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) input lengths -> (B,) latent lengths."""
        return torch.tensor([self.config.latent_length(int(n)) for n in lengths.tolist()], device=lengths.device)

    def _check_lengths(self, lengths: torch.Tensor, padded: int) -> None:
        longest = int(lengths.max()) if lengths.numel() else 0
        if longest > self.config.n_max:
            raise InputError(
                f"sequence of length {longest} is longer than this model's n_max={self.config.n_max}; "
                "split it into windows (domains do this when reading files)"
            )
        if longest > padded or (lengths.numel() and int(lengths.min()) < 0):
            raise InputError(f"lengths must lie in 0..{padded} (the padded length)")

    # ---- encoder / decoder ---------------------------------------------------------------
    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, N) ids or (B, N, F) vectors, lengths (B,) -> latents (B, M, latent_dim), latent lengths (B,).

        Latent rows beyond a sample's latent length are zero.
        """
        n = inputs.shape[1]
        self._check_lengths(lengths, n)
        latent_lengths = self.latent_lengths(lengths)
        m = int(latent_lengths.max()) if latent_lengths.numel() else 0
        in_mask, out_mask = length_mask(lengths, n), length_mask(latent_lengths, m)  # (B, N), (B, M)
        full = bool(in_mask.all()) and bool(out_mask.all())
        x = self.embed(inputs)  # (B, N, D)
        if self.in_positions is not None:
            x = x + self.in_positions[:n]  # (B, N, D)
        x = self.encoder[0](x, in_mask, out_mask, full)  # (B, M, D)
        for block in self.encoder[1:]:
            x = block(x, out_mask, out_mask, full)  # (B, M, D)
        z = self.to_latent(self.enc_norm(x))  # (B, M, latent_dim)
        return z * out_mask[:, :, None], latent_lengths

    def decode(self, latents: torch.Tensor, latent_lengths: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """latents (B, M, latent_dim) -> logits (B, N, V) or vectors (B, N, F), N = max(lengths).

        `lengths` are the original lengths: several lengths share one latent length.
        """
        n = int(lengths.max()) if lengths.numel() else 0
        self._check_lengths(lengths, n)
        expected = self.latent_lengths(lengths)
        if not torch.equal(expected.cpu(), latent_lengths.cpu()):
            raise InputError("latent lengths do not match the original lengths for this model's ratio")
        m = latents.shape[1]
        in_mask, out_mask = length_mask(latent_lengths, m), length_mask(lengths, n)  # (B, M), (B, N)
        full = bool(in_mask.all()) and bool(out_mask.all())
        x = self.from_latent(latents)  # (B, M, D)
        x = self.decoder[0](x, in_mask, out_mask, full)  # (B, N, D)
        for block in self.decoder[1:]:
            x = block(x, out_mask, out_mask, full)  # (B, N, D)
        x = self.dec_norm(x)  # (B, N, D)
        if self.head is None:
            return x @ self.embed.weight.T  # (B, N, V)
        return self.head(x)  # (B, N, F)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction (B, N, V|F), latents (B, M, latent_dim), latent lengths (B,)."""
        z, latent_lengths = self.encode(inputs, lengths)
        return self.decode(z, latent_lengths, lengths), z, latent_lengths

    # ---- persistence ---------------------------------------------------------------------
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fingerprint(self) -> str:
        """Hash of the config and every weight: latent files record it to refuse a different model."""
        config = asdict(self.config)
        if config["reducer"] == "attention":
            del config["reducer"]  # added after format 1: hashed only when set, so older models keep their hash
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:32]

    def save(self, directory: str | os.PathLike, domain: dict | None = None) -> None:
        """Write config.json (model config + the domain's state) and model.safetensors, atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, safetensors_bytes(weights))  # save_file would make it mode 0600
        meta = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "model": asdict(self.config),
            "domain": domain or {},
            "fingerprint": self.fingerprint(),
            "parameters": self.parameter_count(),
        }
        atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())


def read_model_meta(directory: str | os.PathLike) -> dict:
    """The parsed config.json of a model directory, or ModelFileError saying what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError(f"{directory} is not a model directory (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    path = directory / CONFIG_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelFileError(f"{directory} is not a model directory: {CONFIG_FILE} or {WEIGHTS_FILE} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a seqcompress model config")
    if meta.get("version", 0) > MODEL_FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer seqcompress (model format {meta['version']}); upgrade")
    return meta


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SequenceAutoencoder, dict]:
    """Load a saved model (eval mode) and its metadata (including the domain's state). No pickle."""
    meta = read_model_meta(directory)
    known = {f.name for f in fields(ModelConfig)}
    try:
        config = ModelConfig(**{k: v for k, v in meta["model"].items() if k in known})
        model = SequenceAutoencoder(config)
        state = load_file(str(Path(directory) / WEIGHTS_FILE), device="cpu")
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as exc:
        raise ModelFileError(f"cannot load the model in {directory}: {str(exc).splitlines()[0]}") from None
    if meta.get("fingerprint") and model.fingerprint() != meta["fingerprint"]:
        raise ModelFileError(f"{directory}: the weights do not match the fingerprint in {CONFIG_FILE}; the model was altered")
    return model.to(device).eval(), meta


def build_model(config: ModelConfig, seed: int = 0) -> SequenceAutoencoder:
    """A freshly initialised model, seeded for reproducibility."""
    torch.manual_seed(seed)
    return SequenceAutoencoder(config)
