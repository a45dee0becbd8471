"""A trained model and its domain, ready to use: what `seqcompress.load(model_dir)` returns.

    import seqcompress
    c = seqcompress.load("dna_model")
    c.encode_file("genome.fa", "genome.sqz")            # streamed; "-" for stdin/stdout
    c.decode_file("genome.sqz", "back.fa")
    latents = c.encode(c.windows("reads.fa"))           # in memory: one (m, latent_dim) tensor per window
    windows = c.decode(latents, [len(w) for w in c.windows("reads.fa")])
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from seqcompress import compress
from seqcompress.defaults import CHUNK_WINDOWS, DEFAULT_BATCH, STORED_DTYPE
from seqcompress.domain import Domain


class Compressor:
    """Encode and decode sequences and files with one saved model. Build it with `Compressor.load`."""

    def __init__(self, model, meta: dict, domain: Domain) -> None:
        self.model, self.meta, self.domain = model, meta, domain

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str = "auto") -> "Compressor":
        from seqcompress.api import load

        return cls(*load(model_dir, device))

    @property
    def config(self):
        return self.model.config

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def windows(self, path: str | os.PathLike) -> list[torch.Tensor]:
        """A file's windows, as the model sees them (for files that fit in memory; files stream in encode_file)."""
        return self.domain.load_windows([Path(path)], self.config.n_max)

    def encode(self, windows: list[torch.Tensor], batch_size: int = DEFAULT_BATCH) -> list[torch.Tensor]:
        """One latent tensor (m, latent_dim) per window."""
        return compress.encode(self.model, windows, batch_size)

    def decode(self, latents: list[torch.Tensor], lengths: list[int], batch_size: int = DEFAULT_BATCH) -> list[torch.Tensor]:
        """One reconstruction per window, in the form windows have (token ids, or vectors)."""
        return compress.decode(self.model, latents, lengths, batch_size, self.domain.objective.prediction)

    def encode_file(self, path: str | os.PathLike, out: str | os.PathLike, dtype: str = STORED_DTYPE,
                    codec: str = "zlib", batch_size: int = DEFAULT_BATCH, chunk_windows: int = CHUNK_WINDOWS,
                    **settings) -> dict:
        """Encode a file into a .sqz file; `settings` are the domain's encode settings (e.g. qualities="drop")."""
        domain = self.domain.with_settings(**settings) if settings else self.domain
        return compress.encode_file(self.model, self.meta, domain, path, out, dtype, codec, batch_size, chunk_windows)

    def decode_file(self, sqz: str | os.PathLike, out: str | os.PathLike, force_model: bool = False,
                    batch_size: int = DEFAULT_BATCH) -> dict:
        """Rebuild a data file from a .sqz file this model wrote."""
        return compress.decode_file(self.model, self.meta, self.domain, sqz, out, force_model, batch_size)

    def evaluate(self, paths: list[str | os.PathLike], dtype: str = STORED_DTYPE) -> dict[str, float]:
        """The domain's metrics on files, through the storage `encode_file` uses."""
        pieces = self.domain.pieces([Path(p) for p in paths], self.config.n_max)  # memory resets at each file
        return compress.evaluate_stream(self.model, self.domain.objective, pieces, dtype).values
