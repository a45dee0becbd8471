"""Sequences <-> latents <-> .sqz files: the compression pipeline, usable without the CLI.

In memory:
    latents = encode(model, windows)                 # one (m_b, latent_dim) tensor per window
    outputs = decode(model, latents, lengths)        # one reconstruction per window
Files (`-` is stdin or stdout):
    report = encode_file(model, meta, domain, "genome.fa", "genome.sqz", dtype="float16")
    report = decode_file(model, meta, domain, "genome.sqz", "back.fa")

Everything streams: the domain's codec yields pieces (a few windows and their side information) as it
reads; pieces are grouped into chunks of about `chunk_windows` windows, encoded `batch_size` windows at a
time and written as they are done; decode reads a chunk, decodes it and hands its pieces to the codec's
writer. Memory holds one chunk, never a file. A model with memory (`seqcompress.memory`) encodes and
decodes the windows in file order, each stack carrying its streams' memory from batch to batch and chunk
to chunk; each chunk stores its windows' links, so decode replays the same memory. Quantisation (float16,
bfloat16, int8) is per chunk, and
`evaluate_stream` groups and quantises exactly as `encode_file` does, so its metric is the metric of what
`decode` writes.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import json
import lzma
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from seqcompress.defaults import CHUNK_WINDOWS, DEFAULT_BATCH, STORED_DTYPE
from seqcompress import faults
from seqcompress.domain import Domain, Objective, Piece, check_data_paths
from seqcompress.errors import FormatError, InputError, ModelMismatchError
from seqcompress.format import LatentReader, LatentWriter, bytes_per_value, check_model, dequantize, make_header, quantize
from seqcompress.lengths import length_mask
from seqcompress.memory import Link, Memory, file_links, own_links
from seqcompress.model import FINGERPRINT_NEUTRAL, SequenceAutoencoder
from seqcompress.streams import input_path, output_file, sha256_of

OUTPUT_SLICE = 1 << 22  # values of model output computed at once when decoding (16 MB of float32)
Progress = Callable[[int, "int | None"], None]  # (windows done, windows in all when known)


def _device(model: SequenceAutoencoder) -> torch.device:
    return next(model.parameters()).device


def collate(windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad windows (L,) or (L, F) to the longest: (B, N) or (B, N, F) and lengths (B,)."""
    lengths = torch.tensor([len(w) for w in windows])
    n = int(lengths.max())
    batch = windows[0].new_zeros((len(windows), n, *windows[0].shape[1:]))  # (B, N, ...)
    for i, w in enumerate(windows):
        batch[i, : len(w)] = w
    return batch, lengths


# ---- in memory -----------------------------------------------------------------------------------------
def _plan(memory: Memory | None, links: list[Link] | None, lengths: list[int], first: int):
    """The memory plan of the windows first.. of a call, or None for a model without memory."""
    if memory is None:
        return None
    if links is None:
        raise InputError("a model with memory needs each window's link (stream and record start)")
    return memory.batch(links[first : first + len(lengths)], lengths)


def encode_batches(
    model: SequenceAutoencoder, windows: list[torch.Tensor], batch_size: int = DEFAULT_BATCH,
    links: list[Link] | None = None, memory: Memory | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """For each batch of windows: its latent lengths and its real latent rows stacked, (sum m_b, latent_dim).
    With `memory` (the encoder's, `model.memory()`), the windows are consecutive in their file and `links`
    gives each one's Link."""
    model.eval()
    device = _device(model)
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            x, lengths = collate(windows[i : i + batch_size])
            plan = _plan(memory, links, lengths.tolist(), i)
            z, latent_lengths = model.encode(x.to(device), lengths.to(device), plan)  # (B, M, latent_dim), (B,)
            m = latent_lengths.tolist()
            yield m, torch.cat([z[b, : m[b]] for b in range(len(m))]).float().cpu()  # (sum m_b, latent_dim)


def encode_rows(model: SequenceAutoencoder, windows: list[torch.Tensor], batch_size: int = DEFAULT_BATCH,
                links: list[Link] | None = None, memory: Memory | None = None) -> torch.Tensor:
    """The real latent rows of consecutive windows, stacked: (sum m_b, latent_dim)."""
    parts = [rows for _, rows in encode_batches(model, windows, batch_size, links, memory)]
    return torch.cat(parts) if parts else torch.zeros(0, model.config.latent_dim)


def decode_padded(model: SequenceAutoencoder, rows: torch.Tensor, lengths: list[int], plan=None) -> torch.Tensor:
    """Latent rows of consecutive windows (sum m_b, latent_dim) -> model output (B, N, ...) on the CPU,
    N = max(lengths); positions past a window's length are zero. `plan`: the decoder's memory plan."""
    model.eval()
    device = _device(model)
    m = [model.config.latent_length(n) for n in lengths]
    padded = _pad_rows(rows, m)  # (B, M, latent_dim)
    lengths_t = torch.tensor(lengths, device=device)
    with torch.inference_mode():
        out = model.decode(padded.to(device), torch.tensor(m, device=device), lengths_t, memory=plan)  # (B, N, ...)
        mask = length_mask(lengths_t, out.shape[1])  # (B, N)
        return out.masked_fill(~mask.view(*mask.shape, *[1] * (out.dim() - 2)), 0).cpu()


def decode_rows(
    model: SequenceAutoencoder, rows: torch.Tensor, lengths: list[int], batch_size: int = DEFAULT_BATCH,
    prediction: Callable[[torch.Tensor], torch.Tensor] = lambda out: out,
    links: list[Link] | None = None, memory: Memory | None = None,
) -> list[torch.Tensor]:
    """Latent rows of consecutive windows (sum m_b, latent_dim) -> one reconstruction per window, decoded
    `batch_size` windows at a time; `prediction` turns model output (B, N, ...) into the form kept. With
    `memory` (the decoder's), `links` gives each window's Link, as at encode.

    The output layer and `prediction` run on slices of positions holding at most OUTPUT_SLICE values, so a
    30,522-way vocabulary never materialises B x N x V logits (500 MB for 8 windows of 512 tokens)."""
    model.eval()
    device = _device(model)
    width = model.config.vocab_size or model.config.feature_dim or 1
    out: list[torch.Tensor] = []
    start = 0
    for i in range(0, len(lengths), batch_size):
        batch = lengths[i : i + batch_size]
        m = [model.config.latent_length(n) for n in batch]
        padded = _pad_rows(rows[start : start + sum(m)], m)  # (B, M, latent_dim)
        start += sum(m)
        with torch.inference_mode():
            states = model.decode(padded.to(device), torch.tensor(m, device=device), torch.tensor(batch, device=device),
                                  hidden=True, memory=_plan(memory, links, batch, i))  # (B, N, D)
            step = max(1, OUTPUT_SLICE // (len(batch) * width))
            buffer = states.new_empty(len(batch) * step * width)  # reused by every slice of this batch
            slices = []
            for s in range(0, states.shape[1], step):
                part = states[:, s : s + step]  # (B, s, D)
                logits = model.output(part, out=buffer[: part.shape[0] * part.shape[1] * width].view(
                    part.shape[0], part.shape[1], width))
                slices.append(prediction(logits).cpu())
            pred = torch.cat(slices, dim=1)  # (B, N, ...)
        out += [pred[b, :n] for b, n in enumerate(batch)]
    if start != rows.shape[0]:
        raise FormatError(f"{rows.shape[0]} latent rows do not match windows needing {start}")
    return out


def _pad_rows(rows: torch.Tensor, m: list[int]) -> torch.Tensor:
    """Real latent rows of consecutive windows (sum m, latent_dim) -> zero-padded (B, max m, latent_dim)."""
    if sum(m) != rows.shape[0]:
        raise FormatError(f"{rows.shape[0]} latent rows do not match windows needing {sum(m)}")
    padded = rows.new_zeros((len(m), max(m, default=0), rows.shape[1]))
    start = 0
    for b, count in enumerate(m):
        padded[b, :count] = rows[start : start + count]
        start += count
    return padded


def _in_memory(model: SequenceAutoencoder, links: list[Link] | None, count: int):
    """(links, memory) for in-memory windows: without links each window is a record of its own."""
    if not model.config.memory:
        return None, None
    return own_links(links, count), model.memory()


def encode(model: SequenceAutoencoder, windows: list[torch.Tensor], batch_size: int = DEFAULT_BATCH,
           links: list[Link] | None = None) -> list[torch.Tensor]:
    """One latent tensor (m_b, latent_dim) per window (for a model with memory, `links` in file order)."""
    latents: list[torch.Tensor] = []
    links, memory = _in_memory(model, links, len(windows))
    for m, rows in encode_batches(model, windows, batch_size, links, memory):
        latents += list(torch.split(rows, m))
    return latents


def decode(
    model: SequenceAutoencoder, latents: list[torch.Tensor], lengths: list[int], batch_size: int = DEFAULT_BATCH,
    prediction: Callable[[torch.Tensor], torch.Tensor] = lambda out: out, links: list[Link] | None = None,
) -> list[torch.Tensor]:
    """One reconstruction per window from its latents and its original length (and its link, as at encode)."""
    if len(latents) != len(lengths):
        raise InputError(f"{len(latents)} latent tensors but {len(lengths)} lengths")
    if not latents:
        return []
    links, memory = _in_memory(model, links, len(lengths))
    return decode_rows(model, torch.cat(latents), lengths, batch_size, prediction, links, memory)


# ---- chunks: pieces grouped, encoded and quantised as a file stores them ------------------------------
def group_chunks(pieces: Iterable[Piece], chunk_windows: int = CHUNK_WINDOWS) -> Iterator[list[Piece]]:
    """Consecutive pieces grouped until a group holds at least `chunk_windows` windows (the last one fewer)."""
    if chunk_windows < 1:
        raise InputError(f"chunk_windows must be at least 1, got {chunk_windows}")
    group: list[Piece] = []
    count = 0
    for piece in pieces:
        group.append(piece)
        count += len(piece.windows)
        if count >= chunk_windows:
            yield group
            group, count = [], 0
    if group:
        yield group


def as_pieces(windows: Iterable[torch.Tensor], links: Iterable[Link] | None = None) -> Iterator[Piece]:
    """Windows without side information (in-memory data), one piece each; without `links`, every window is
    a record of its own (a model with memory sees no memory)."""
    windows = list(windows)
    yield from (Piece([window], {}, [link]) for window, link in zip(windows, own_links(links, len(windows))))


@dataclass
class Evaluation:
    values: dict[str, float]
    windows: int = 0
    symbols: int = 0


def evaluate_stream(
    model: SequenceAutoencoder, objective: Objective, pieces: Iterable[Piece], dtype: str = "float32",
    batch_size: int = DEFAULT_BATCH, chunk_windows: int = CHUNK_WINDOWS, on_progress: Progress | None = None,
) -> Evaluation:
    """The objective's metrics after encode -> store as `dtype` -> decode, chunked exactly as encode_file is."""
    totals = objective.accumulator()
    windows = symbols = 0
    encoder, decoder = (model.memory(), model.memory()) if model.config.memory else (None, None)
    for group in group_chunks(file_links(pieces), chunk_windows):
        chunk = [w for piece in group for w in piece.windows]
        links = [link for piece in group for link in piece.links]
        if not chunk:
            continue
        stored = dequantize(quantize(encode_rows(model, chunk, batch_size, links, encoder), dtype))
        start = 0
        for i in range(0, len(chunk), batch_size):
            batch = chunk[i : i + batch_size]
            lengths = [len(w) for w in batch]
            count = sum(model.config.latent_length(n) for n in lengths)
            out = decode_padded(model, stored[start : start + count], lengths,
                                _plan(decoder, links, lengths, i)).float()  # (B, N, ...)
            start += count
            target, lengths_t = collate(batch)
            totals.add(out, target, length_mask(lengths_t, target.shape[1]))
        windows += len(chunk)
        symbols += sum(len(w) for w in chunk)
        if on_progress:
            on_progress(windows, None)
    if not windows:
        raise InputError("no data: the input produced no sequences")
    return Evaluation(totals.values(), windows, symbols)


def evaluate_quantized(
    model: SequenceAutoencoder, domain: Domain | Objective, windows: list[torch.Tensor], dtype: str = "float32",
    batch_size: int = DEFAULT_BATCH, on_progress: Progress | None = None, links: list[Link] | None = None,
) -> dict[str, float]:
    """`evaluate_stream` of in-memory windows (each its own piece, with its Link if given): the metrics."""
    objective = domain.objective if isinstance(domain, Domain) else domain
    return evaluate_stream(model, objective, as_pieces(windows, links), dtype, batch_size,
                           on_progress=on_progress).values


# ---- files -------------------------------------------------------------------------------------
def _model_summary(model: SequenceAutoencoder, meta: dict) -> dict:
    c = model.config
    summary = {"fingerprint": meta["fingerprint"], "n_max": c.n_max, "ratio": c.ratio, "latent_dim": c.latent_dim}
    # The attention seam's choices, only where they differ from the paper's (headers before it stay the same).
    for key in ("stages", "attention", "positions", "resize", "memory"):
        if getattr(c, key) != FINGERPRINT_NEUTRAL[key]:
            summary[key] = getattr(c, key)
    return summary


def encode_file(
    model: SequenceAutoencoder, meta: dict, domain: Domain, path: str | os.PathLike, out: str | os.PathLike,
    dtype: str = STORED_DTYPE, codec: str = "zlib", batch_size: int = DEFAULT_BATCH,
    chunk_windows: int = CHUNK_WINDOWS, on_progress: Progress | None = None, overwrite: bool = True,
) -> dict:
    """Encode a data file (`-`: stdin) into a .sqz latent file (`-`: stdout), streamed and written
    atomically (over an existing file only with `overwrite`). `domain` carries any encode options
    (`domain.with_settings(qualities="drop")`). Returns the size report."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    header = make_header(domain=domain.name, settings=header_settings(domain.state()), model=_model_summary(model, meta),
                         dtype=dtype, codec=codec)
    with input_path(path, suffix=Path(str(path)).suffix) as source:
        check_data_paths([source])
        pieces = file_links(domain.codec.iter_windows(source, model.config.n_max))
        memory = model.memory() if model.config.memory else None
        with output_file(out, overwrite) as stream:
            writer = LatentWriter(stream, header)
            for group in group_chunks(pieces, chunk_windows):
                windows = [w for piece in group for w in piece.windows]
                links = [link for piece in group for link in piece.links]
                writer.add([len(w) for w in windows], [(len(p.windows), p.side) for p in group],
                           encode_rows(model, windows, batch_size, links, memory), links if memory else None)
                faults.point("encode:chunk-written")
                if on_progress:
                    on_progress(writer.windows, None)
            if not writer.windows:
                raise InputError(f"{path}: no sequences to encode")
            size = source.stat().st_size
            sqz_bytes = writer.finish({"name": Path(str(path)).name, "size": size, "sha256": sha256_of(source)})
        references = domain.codec.references(source, writer.symbols)
    symbols, latents, dim = writer.symbols, writer.rows, model.config.latent_dim
    return {
        "input": str(path), "output": str(out), "domain": domain.name, "dtype": dtype, "codec": codec,
        "windows": writer.windows, "symbols": symbols, "latents": latents,
        "latent_floats_per_symbol": latents * dim / symbols,
        "input_bytes": size, "sqz_bytes": sqz_bytes, "raw_latent_bytes": latents * dim * bytes_per_value(dtype),
        "sqz_bits_per_symbol": 8 * sqz_bytes / symbols, "side_bytes": writer.side_bytes,
        "reference_bits_per_symbol": references,
    }


HEADER_SETTING_BYTES = 1024  # a domain setting longer than this (as JSON) is stored in a header as its digest


def header_settings(state: dict) -> dict:
    """The domain settings a .sqz header keeps: each one as it is, or, when its JSON is longer than
    HEADER_SETTING_BYTES (a learned vocabulary), "sha256:" and the digest of its JSON. Decoding compares settings
    only (the model's fingerprint already covers them), so a small file does not carry its model's vocabulary."""
    out = {}
    for key, value in state.items():
        text = json.dumps(value, sort_keys=True)
        out[key] = value if len(text) <= HEADER_SETTING_BYTES else "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return out


def _writer_domain(domain: Domain, reader: LatentReader, force: bool) -> Domain:
    """The model's domain with the file's encode options; a file whose domain settings differ from the model's
    (a changed normalisation, another k-mer size) is refused unless forced."""
    if reader.version == 1:
        return domain
    saved = reader.header["settings"]
    encode_names = set(domain.settings_class.encode_names())
    # Compared as headers keep them (a file written before digests were kept has the full values: digested too);
    # a setting added after the file was written is missing from its header: it had that setting's default.
    ours = {k: v for k, v in header_settings(domain.settings.state()).items() if k not in encode_names}
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(domain.settings_class)}
    theirs = {k: v for k, v in header_settings({**defaults, **saved}).items() if k in ours}
    if theirs != ours and not force:
        changed = sorted(k for k in ours if theirs.get(k) != ours[k])
        raise ModelMismatchError(f"this latent file was written with other {domain.name} settings than the model "
                                 f"has ({', '.join(changed)}); decode it with the model that encoded it")
    changes = {k: saved[k] for k in encode_names if k in saved}
    return domain.with_settings(**changes) if changes else domain


def _decoded_pieces(
    reader: LatentReader, domain: Domain, model: SequenceAutoencoder, batch_size: int, on_progress: Progress | None,
) -> Iterator[tuple[list[torch.Tensor], dict]]:
    """Each piece's reconstructed windows and side information, in file order. Format-1 files kept one side
    block for the whole file: the codec's legacy mapping turns it into pieces, whose windows are collected
    across chunks."""
    n_max, done = model.config.n_max, 0
    memory = model.memory() if model.config.memory else None
    legacy = iter(domain.codec.legacy_pieces(reader.side, reader.lengths)) if reader.version == 1 else None
    pending = next(legacy, None) if legacy is not None else None
    buffer: list[torch.Tensor] = []
    for chunk in reader.chunks():
        if any(n > n_max for n in chunk.lengths):
            raise FormatError(f"{reader.name} holds a window longer than the model's n_max ({n_max})")
        if memory is not None and chunk.links is None:
            raise FormatError(f"{reader.name} has no window links, which a model with memory needs to decode it")
        windows = decode_rows(model, chunk.latents, chunk.lengths, batch_size, domain.objective.prediction,
                              chunk.links, memory)
        done += len(windows)
        if legacy is None:
            start = 0
            for count, side in chunk.pieces or []:
                yield windows[start : start + count], side
                start += count
        else:
            buffer += windows
            while pending is not None and len(buffer) >= pending[0]:
                yield buffer[: pending[0]], pending[1]
                buffer, pending = buffer[pending[0] :], next(legacy, None)
        if on_progress:
            on_progress(done, reader.windows)
    if legacy is not None:
        while pending is not None and pending[0] == 0:
            yield [], pending[1]
            pending = next(legacy, None)
        if pending is not None or buffer:
            raise FormatError(f"{reader.name}: its side information does not match its {reader.windows} windows")


def decode_file(
    model: SequenceAutoencoder, meta: dict, domain: Domain, sqz: str | os.PathLike, out: str | os.PathLike,
    force_model: bool = False, batch_size: int = DEFAULT_BATCH, on_progress: Progress | None = None,
    overwrite: bool = True,
) -> dict:
    """Rebuild a data file (`-`: stdout) from a .sqz latent file (`-`: stdin) with the model that wrote it,
    streamed and written atomically (over an existing file only with `overwrite`)."""
    with input_path(sqz, suffix=".sqz") as source:
        reader = LatentReader(source)
        reader.name = str(sqz)
        header = reader.header
        if header["domain"] != domain.name:
            raise ModelMismatchError(f"{sqz} holds {header['domain']} latents; the model is a {domain.name} model")
        c = model.config
        check_model(header, meta["fingerprint"], c.n_max, c.ratio, c.latent_dim, force=force_model, stages=c.stages,
                    memory=c.memory)
        writer_domain = _writer_domain(domain, reader, force_model)
        with output_file(out, overwrite) as stream:
            writer = writer_domain.codec.open_writer(stream, Path(str(out)).name,
                                                     {**header, "settings": writer_domain.state()})
            for windows, side in _decoded_pieces(reader, writer_domain, model, batch_size, on_progress):
                writer.write(windows, side)
                faults.point("decode:piece-written")
            report = writer.close() or {}
    return {"input": str(sqz), "output": str(out), "domain": domain.name, "windows": reader.windows,
            "symbols": reader.symbols, "source": reader.source, "note": report.get("note"),
            "format_version": reader.version}


def classical_sizes(path: str | os.PathLike) -> dict[str, int]:
    """What gzip -9, bzip2 -9 and xz -9 make of the same file, measured now, streamed (standard library; the
    gzip stream is what `gzip.compress(data, 9, mtime=0)` writes)."""
    engines = {"gzip-9": zlib.compressobj(9, zlib.DEFLATED, 31), "bz2-9": bz2.BZ2Compressor(9),
               "xz-9": lzma.LZMACompressor(preset=9)}
    sizes = dict.fromkeys(engines, 0)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for name, engine in engines.items():
                sizes[name] += len(engine.compress(block))
    return {name: sizes[name] + len(engine.flush()) for name, engine in engines.items()}
