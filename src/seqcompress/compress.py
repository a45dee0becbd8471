"""Sequences <-> latents <-> .sqz files: the compression API, usable without the CLI.

In memory:
    latents = encode(model, windows)                 # one (m_b, latent_dim) tensor per window
    outputs = decode(model, latents, lengths)        # one reconstruction per window
Files:
    report = encode_file(model, meta, "genome.txt", "genome.sqz", dtype="float16")
    report = decode_file(model, meta, "genome.sqz", "back.txt")

Windows are processed `batch_size` at a time and every batch is written as one chunk, so a large
file streams through memory. Quantisation (float16, bfloat16, int8) is applied per chunk; the
`evaluate_quantized` path applies exactly the same quantisation, so its metric is the metric of
what `decode` writes.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from seqcompress.attention import length_mask
from seqcompress.domain import Domain
from seqcompress.errors import InputError, ModelMismatchError
from seqcompress.format import LatentReader, LatentWriter, bytes_per_value, check_model, dequantize, make_header, quantize
from seqcompress.model import FINGERPRINT_NEUTRAL, SequenceAutoencoder
from seqcompress.train import collate

DEFAULT_BATCH = 8
Progress = Callable[[int, int], None]  # (windows done, windows in all)


def _device(model: SequenceAutoencoder) -> torch.device:
    return next(model.parameters()).device


def encode_batches(
    model: SequenceAutoencoder, windows: list[torch.Tensor], batch_size: int = DEFAULT_BATCH
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """For each batch of windows: its latent lengths and its real latent rows stacked, (sum m_b, latent_dim)."""
    model.eval()
    device = _device(model)
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            x, lengths = collate(windows[i : i + batch_size])
            z, latent_lengths = model.encode(x.to(device), lengths.to(device))  # (B, M, latent_dim), (B,)
            m = latent_lengths.tolist()
            yield m, torch.cat([z[b, : m[b]] for b in range(len(m))]).float().cpu()  # (sum m_b, latent_dim)


def decode_padded(model: SequenceAutoencoder, rows: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Latent rows of consecutive windows (sum m_b, latent_dim) -> model output (B, N, ...) on the CPU,
    N = max(lengths); positions past a window's length are zero."""
    model.eval()
    device = _device(model)
    m = [model.config.latent_length(n) for n in lengths]
    if sum(m) != rows.shape[0]:
        raise InputError(f"{rows.shape[0]} latent rows do not match windows needing {sum(m)}")
    padded = rows.new_zeros((len(m), max(m, default=0), rows.shape[1]))  # (B, M, latent_dim)
    start = 0
    for b, count in enumerate(m):
        padded[b, :count] = rows[start : start + count]
        start += count
    lengths_t = torch.tensor(lengths, device=device)
    with torch.inference_mode():
        out = model.decode(padded.to(device), torch.tensor(m, device=device), lengths_t)  # (B, N, ...)
        mask = length_mask(lengths_t, out.shape[1])  # (B, N)
        return out.masked_fill(~mask.view(*mask.shape, *[1] * (out.dim() - 2)), 0).cpu()


def decode_rows(
    model: SequenceAutoencoder,
    rows: torch.Tensor,
    lengths: list[int],
    prediction: Callable[[torch.Tensor], torch.Tensor] = lambda out: out,
) -> list[torch.Tensor]:
    """Latent rows of consecutive windows (sum m_b, latent_dim) -> one reconstruction per window.

    `prediction` turns model output (B, N, ...) into the form kept (e.g. logits -> token ids).
    """
    pred = prediction(decode_padded(model, rows, lengths))  # (B, N, ...)
    return [pred[b, :n] for b, n in enumerate(lengths)]


def encode(model: SequenceAutoencoder, windows: list[torch.Tensor], batch_size: int = DEFAULT_BATCH) -> list[torch.Tensor]:
    """One latent tensor (m_b, latent_dim) per window."""
    latents: list[torch.Tensor] = []
    for m, rows in encode_batches(model, windows, batch_size):
        latents += list(torch.split(rows, m))
    return latents


def decode(
    model: SequenceAutoencoder,
    latents: list[torch.Tensor],
    lengths: list[int],
    batch_size: int = DEFAULT_BATCH,
    prediction: Callable[[torch.Tensor], torch.Tensor] = lambda out: out,
) -> list[torch.Tensor]:
    """One reconstruction per window from its latents and its original length."""
    if len(latents) != len(lengths):
        raise InputError(f"{len(latents)} latent tensors but {len(lengths)} lengths")
    out: list[torch.Tensor] = []
    for i in range(0, len(latents), batch_size):
        out += decode_rows(model, torch.cat(latents[i : i + batch_size]), lengths[i : i + batch_size], prediction)
    return out


def evaluate_quantized(
    model: SequenceAutoencoder, domain: Domain, windows: list[torch.Tensor], dtype: str = "float32",
    batch_size: int = DEFAULT_BATCH, on_progress: Progress | None = None,
) -> dict[str, float]:
    """The domain's metrics after encode -> store as `dtype` -> decode, chunked exactly as encode_file does."""
    totals: dict[str, float] = {}
    done = 0
    for m, rows in encode_batches(model, windows, batch_size):
        batch = windows[done : done + len(m)]
        stored = dequantize(quantize(rows, dtype))
        lengths = [len(w) for w in batch]
        model_out = decode_padded(model, stored, lengths).float()  # (B, N, ...)
        target, lengths_t = collate(batch)
        mask = length_mask(lengths_t, target.shape[1])  # (B, N)
        for key, value in domain.metric_totals(model_out, target, mask).items():
            totals[key] = totals.get(key, 0.0) + value
        done += len(m)
        if on_progress:
            on_progress(done, len(windows))
    return domain.metric_values(totals)


# ---- files -------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_summary(model: SequenceAutoencoder, meta: dict) -> dict:
    c = model.config
    summary = {"fingerprint": meta["fingerprint"], "n_max": c.n_max, "ratio": c.ratio, "latent_dim": c.latent_dim}
    # The attention seam's choices, only where they differ from the paper's (headers before it stay the same).
    for key in ("stages", "attention", "positions", "resize"):
        if getattr(c, key) != FINGERPRINT_NEUTRAL[key]:
            summary[key] = getattr(c, key)
    return summary


def encode_file(
    model: SequenceAutoencoder, meta: dict, domain: Domain, path: str | os.PathLike, out: str | os.PathLike,
    dtype: str = "float16", codec: str = "zlib", batch_size: int = DEFAULT_BATCH,
    on_progress: Progress | None = None,
) -> dict:
    """Encode a data file into a .sqz latent file (written atomically). Returns the size report."""
    path, out = Path(path), Path(out)
    windows, side = domain.read(path, model.config.n_max)
    if not windows:
        raise InputError(f"{path}: no sequences to encode")
    lengths = [len(w) for w in windows]
    latent_lengths = [model.config.latent_length(n) for n in lengths]
    header = make_header(
        domain=domain.name, model=_model_summary(model, meta), dtype=dtype, codec=codec, lengths=lengths,
        latent_lengths=latent_lengths, windows_per_chunk=batch_size,
        source={"name": path.name, "size": path.stat().st_size, "sha256": _sha256(path)}, side=side,
    )
    done = 0
    with LatentWriter(out, header) as writer:
        for m, rows in encode_batches(model, windows, batch_size):
            writer.add(rows)
            done += len(m)
            if on_progress:
                on_progress(done, len(windows))
    symbols = sum(lengths)
    return {
        "input": str(path), "output": str(out), "domain": domain.name, "dtype": dtype, "codec": codec,
        "windows": len(windows), "symbols": symbols, "latents": sum(latent_lengths),
        "latent_floats_per_symbol": sum(latent_lengths) * model.config.latent_dim / symbols,
        "input_bytes": path.stat().st_size, "sqz_bytes": out.stat().st_size,
        "raw_latent_bytes": sum(latent_lengths) * model.config.latent_dim * bytes_per_value(dtype),
        "sqz_bits_per_symbol": 8 * out.stat().st_size / symbols,
        "side_bytes": len(json.dumps(side, sort_keys=True, separators=(",", ":"))),
        "reference_bits_per_symbol": domain.size_references(),
    }


def decode_file(
    model: SequenceAutoencoder, meta: dict, domain: Domain, sqz: str | os.PathLike, out: str | os.PathLike,
    force_model: bool = False, on_progress: Progress | None = None,
) -> dict:
    """Rebuild a data file from a .sqz latent file with the model that wrote it (written atomically)."""
    reader = LatentReader(sqz)
    header = reader.header
    if header["domain"] != domain.name:
        raise ModelMismatchError(f"{sqz} holds {header['domain']} latents; the model is a {domain.name} model")
    c = model.config
    check_model(header, meta["fingerprint"], c.n_max, c.ratio, c.latent_dim, force=force_model, stages=c.stages)
    per_chunk = header["payload"]["windows_per_chunk"]
    windows: list[torch.Tensor] = []
    for index, rows in enumerate(reader.chunks()):
        lengths = reader.lengths[index * per_chunk : (index + 1) * per_chunk]
        windows += decode_rows(model, rows, lengths, domain.prediction)
        if on_progress:
            on_progress(len(windows), len(reader.lengths))
    domain.write(Path(out), windows, header["side"])
    return {"input": str(sqz), "output": str(out), "domain": domain.name, "windows": len(windows),
            "symbols": sum(reader.lengths), "source": header["source"], "note": domain.decode_note(header["side"])}


def classical_sizes(path: str | os.PathLike) -> dict[str, int]:
    """What gzip -9, bzip2 -9 and xz -9 make of the same file, measured now (standard library)."""
    data = Path(path).read_bytes()
    return {
        "gzip-9": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "bz2-9": len(bz2.compress(data, 9)),
        "xz-9": len(lzma.compress(data, preset=9)),
    }
