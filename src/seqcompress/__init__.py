"""seqcompress: shorten sequences into latent sequences with a reducing-attention autoencoder, and rebuild them.

    import seqcompress
    summary = seqcompress.fit("dna", ["genome.fa"], "dna_model", seq_len=512, ratio=0.75, max_minutes=10)
    c = seqcompress.load("dna_model")
    c.encode_file("reads.fa", "reads.sqz")
    c.decode_file("reads.sqz", "back.fa")

Imports are lazy, so `import seqcompress` (and `seqcompress --help`) stays fast.
"""

from __future__ import annotations

import os

__all__ = ["fit", "load"]


def load(model_dir: str | os.PathLike, device: str = "auto"):
    """A saved model and its domain: a `seqcompress.compressor.Compressor`."""
    from seqcompress.compressor import Compressor

    return Compressor.load(model_dir, device)


def fit(domain, paths, out_dir: str | os.PathLike, *, settings: dict | None = None, seq_len: int | None = None,
        ratio: float | None = None, latent_len: int | None = None, model: dict | None = None, resume: bool = False,
        force: bool = False, **train_options) -> dict:
    """Train a model on data files (the domain's bundled sample when `paths` is empty) and save it in `out_dir`.

    `domain` is a registered name ("text", "dna", ...) or a Domain; `settings` its settings (e.g. {"k": 3});
    `model` ModelConfig fields (d_model, attention, ...); `train_options` TrainOptions fields (max_minutes,
    epochs, max_steps, batch_size, lr, seed, device, ...). Returns the training summary."""
    from seqcompress.api import fit as fit_files
    from seqcompress.domains import domain_class
    from seqcompress.train import TrainOptions

    if isinstance(domain, str):
        cls = domain_class(domain)
        domain = cls(cls.settings_class(**(settings or {})))
    elif settings:
        domain = domain.with_settings(**settings)
    if "epochs" not in train_options:  # one epoch unless another limit is given (as on the command line)
        limited = train_options.get("max_steps") is not None or train_options.get("max_minutes") is not None
        train_options["epochs"] = None if limited else 1.0
    return fit_files(domain, list(paths or []), out_dir, seq_len=seq_len, ratio=ratio, latent_len=latent_len,
                     model_options=model, options=TrainOptions(**train_options), resume=resume, force=force)
