"""The .sqz latent file: the only module that reads or writes its bytes.

Layout (all integers little-endian):

    magic        8 bytes   b"\\x89SQZ\\r\\n\\x1a\\n"
    version      u16       FORMAT_VERSION
    header_len   u32       at most MAX_HEADER_BYTES
    header       UTF-8 JSON (sorted keys, no time stamps: the same input gives the same bytes)
    chunks       header["payload"]["chunks"] times:
                   chunk_len  u64, then chunk_len bytes: safetensors bytes, zlib-compressed if
                   header["payload"]["codec"] == "zlib"; tensors "latents" (rows, latent_dim) in
                   the stored dtype, plus "scale" (1,) float32 for int8
    checksum     32 bytes  SHA-256 of everything before it

Chunks let a writer stream window batches to disk and a reader stream them back, so a 50 MB
input never holds all its latents in memory. The reader never unpickles and never trusts a
size: lengths are capped and checked against the file size, the header is validated field by
field, every tensor's dtype and shape is checked against the header, and the checksum is
verified before any chunk is handed out. Every failure is a FormatError that says what is
wrong; a file from another model is a ModelMismatchError.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from seqcompress.atomic import atomic_open
from seqcompress.errors import FormatError, ModelMismatchError

MAGIC = b"\x89SQZ\r\n\x1a\n"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_CHUNK_BYTES = 1024 * 1024 * 1024
_PREFIX = struct.Struct("<8sHI")  # magic, version, header_len
_CHUNK_LEN = struct.Struct("<Q")
_CHECKSUM_BYTES = 32

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}
CODECS = ("zlib", "none")


# ---- latent values <-> stored tensors --------------------------------------------------------------
def quantize(latents: torch.Tensor, dtype: str) -> dict[str, torch.Tensor]:
    """Float latents (rows, dim) -> the tensors stored for `dtype` (int8: symmetric, one scale per chunk)."""
    if dtype not in DTYPES:
        raise FormatError(f"unknown latent dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    latents = latents.detach().float().cpu().contiguous()
    if dtype != "int8":
        return {"latents": latents.to(DTYPES[dtype])}
    peak = float(latents.abs().max()) if latents.numel() else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    q = torch.clamp(torch.round(latents / scale), -127, 127).to(torch.int8)
    return {"latents": q, "scale": torch.tensor([scale], dtype=torch.float32)}


def dequantize(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    latents = tensors["latents"]
    if latents.dtype == torch.int8:
        return latents.float() * tensors["scale"][0]
    return latents.float()


def bytes_per_value(dtype: str) -> int:
    return torch.finfo(DTYPES[dtype]).bits // 8 if dtype != "int8" else 1


# ---- header ------------------------------------------------------------------------------------------
def chunk_rows(latent_lengths: list[int], windows_per_chunk: int) -> list[int]:
    """Latent rows in each chunk when windows are written `windows_per_chunk` at a time."""
    return [sum(latent_lengths[i : i + windows_per_chunk]) for i in range(0, len(latent_lengths), windows_per_chunk)]


def run_length(values: list[int]) -> list[list[int]]:
    """[512, 512, 512, 7] -> [[512, 3], [7, 1]]: window lengths are mostly equal."""
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return runs


def expand_runs(runs: list[list[int]]) -> list[int]:
    return [v for v, count in runs for _ in range(count)]


def make_header(
    *,
    domain: str,
    model: dict,
    dtype: str,
    codec: str,
    lengths: list[int],
    latent_lengths: list[int],
    windows_per_chunk: int,
    source: dict,
    side: dict,
) -> dict:
    """The JSON header; `model` holds fingerprint, n_max, ratio, latent_dim."""
    if dtype not in DTYPES:
        raise FormatError(f"unknown latent dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if codec not in CODECS:
        raise FormatError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    return {
        "format": "seqcompress-latents",
        "format_version": FORMAT_VERSION,
        "domain": domain,
        "model": model,
        "windows": {"count": len(lengths), "lengths": run_length(lengths), "latent_lengths": run_length(latent_lengths)},
        "payload": {
            "dtype": dtype,
            "codec": codec,
            "windows_per_chunk": windows_per_chunk,
            "chunks": math.ceil(len(lengths) / windows_per_chunk) if lengths else 0,
        },
        "source": source,
        "side": side,
    }


def _check_header(header: object) -> dict:
    """Validate the structure and types of a parsed header; FormatError on anything unexpected."""

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise FormatError(f"invalid header: {what}")

    def is_int(v: object, low: int = 0) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def runs_ok(runs: object) -> bool:
        return isinstance(runs, list) and all(
            isinstance(r, list) and len(r) == 2 and is_int(r[0]) and is_int(r[1], 1) for r in runs
        )

    need(isinstance(header, dict), "not a JSON object")
    assert isinstance(header, dict)
    need(header.get("format") == "seqcompress-latents", "not a seqcompress latent header")
    need(isinstance(header.get("domain"), str), "domain missing")
    model = header.get("model")
    need(isinstance(model, dict), "model section missing")
    need(isinstance(model.get("fingerprint"), str), "model fingerprint missing")
    need(is_int(model.get("n_max"), 1) and is_int(model.get("latent_dim"), 1), "model n_max/latent_dim invalid")
    need(isinstance(model.get("ratio"), (int, float)) and not isinstance(model.get("ratio"), bool)
         and 0 < model["ratio"] <= 1, "model ratio invalid")
    stages = model.get("stages", [])
    need(isinstance(stages, list) and len(stages) <= 64 and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s <= 1 for s in stages), "model stages invalid")
    windows = header.get("windows")
    need(isinstance(windows, dict) and is_int(windows.get("count")), "window count missing")
    need(runs_ok(windows.get("lengths")) and runs_ok(windows.get("latent_lengths")), "window lengths invalid")
    need(sum(c for _, c in windows["lengths"]) == windows["count"] == sum(c for _, c in windows["latent_lengths"]),
         "window lengths do not add up to the window count")
    need(windows["count"] <= 1 << 32, "too many windows")
    payload = header.get("payload")
    need(isinstance(payload, dict), "payload section missing")
    need(payload.get("dtype") in DTYPES and payload.get("codec") in CODECS, "payload dtype/codec unknown")
    need(is_int(payload.get("windows_per_chunk"), 1) and is_int(payload.get("chunks")), "chunking invalid")
    need(payload["chunks"] == math.ceil(windows["count"] / payload["windows_per_chunk"]), "chunk count invalid")
    need(isinstance(header.get("source"), dict) and isinstance(header.get("side"), dict), "source/side missing")
    return header


def window_lengths(header: dict) -> tuple[list[int], list[int]]:
    """Original and latent lengths of every window, from a validated header."""
    return expand_runs(header["windows"]["lengths"]), expand_runs(header["windows"]["latent_lengths"])


def check_model(header: dict, fingerprint: str, n_max: int, ratio: float, latent_dim: int, force: bool = False,
                stages: list[float] | None = None) -> None:
    """Refuse a latent file written by another model (the fingerprint), even with `force` if shapes differ."""
    m = header["model"]
    if [float(s) for s in m.get("stages", [])] != [float(s) for s in stages or []]:
        raise ModelMismatchError(f"this latent file needs a model with reduction stages {m.get('stages', [])}; "
                                 f"the given model has {stages or []}")
    if (m["n_max"], float(m["ratio"]), m["latent_dim"]) != (n_max, float(ratio), latent_dim):
        raise ModelMismatchError(
            f"this latent file needs a model with n_max={m['n_max']}, ratio={m['ratio']}, latent_dim={m['latent_dim']}; "
            f"the given model has n_max={n_max}, ratio={ratio}, latent_dim={latent_dim}"
        )
    if m["fingerprint"] != fingerprint and not force:
        raise ModelMismatchError(
            f"this latent file was written by model {m['fingerprint'][:12]}, not by the given model "
            f"{fingerprint[:12]}; decode it with the model that encoded it (or --force-model to try anyway)"
        )


# ---- writing -------------------------------------------------------------------------------------
class LatentWriter:
    """Streams chunks into a temporary file beside `path`; `close()` renames it into place.

    Use as a context manager: on an exception the temporary file is removed and `path` untouched.
    """

    def __init__(self, path: str | os.PathLike, header: dict) -> None:
        self.header = _check_header(json.loads(json.dumps(header)))
        self.rows = chunk_rows(window_lengths(self.header)[1], self.header["payload"]["windows_per_chunk"])
        self.dim = self.header["model"]["latent_dim"]
        self.written = 0
        self._ctx = atomic_open(path, "wb")
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = None

    def __enter__(self) -> "LatentWriter":
        self._file = self._ctx.__enter__()
        head = json.dumps(self.header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        self._write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head)
        return self

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._hash.update(data)

    def add(self, latents: torch.Tensor) -> None:
        """Write the next chunk: the real latent rows (rows, latent_dim) of the next windows, in order."""
        index = self.written
        if index >= len(self.rows):
            raise FormatError("more chunks written than the header announces")
        if tuple(latents.shape) != (self.rows[index], self.dim):
            raise FormatError(f"chunk {index} has shape {tuple(latents.shape)}, expected {(self.rows[index], self.dim)}")
        data = st_save(quantize(latents, self.header["payload"]["dtype"]))
        if self.header["payload"]["codec"] == "zlib":
            data = zlib.compress(data, 9)
        self._write(_CHUNK_LEN.pack(len(data)) + data)
        self.written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.written != len(self.rows):
            exc = FormatError(f"{self.written} chunks written, the header announces {len(self.rows)}")
            self._ctx.__exit__(FormatError, exc, None)
            raise exc
        if exc_type is None:
            assert self._file is not None
            self._file.write(self._hash.digest())
        self._ctx.__exit__(exc_type, exc, tb)


# ---- reading -------------------------------------------------------------------------------------
class LatentReader:
    """Reads and validates a .sqz file: `header` at once, `chunks()` streamed after the checksum passed."""

    def __init__(self, path: str | os.PathLike | None = None, data: bytes | None = None) -> None:
        self.name = str(path) if path is not None else "<bytes>"
        if data is not None:
            self._open = lambda: io.BytesIO(data)
            self.size = len(data)
        else:
            path = Path(path)
            if not path.is_file():
                raise FormatError(f"{path}: no such latent file")
            self._open = lambda: open(path, "rb")
            self.size = path.stat().st_size
        with self._open() as f:
            self.header, self.payload_start = self._read_header(f)
        self._verify_checksum()
        self.lengths, self.latent_lengths = window_lengths(self.header)
        self.rows = chunk_rows(self.latent_lengths, self.header["payload"]["windows_per_chunk"])

    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self.name} {what}")

    def _read_header(self, f: BinaryIO) -> tuple[dict, int]:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
            raise self._fail("is not a seqcompress latent file (.sqz): wrong magic bytes")
        _, version, header_len = _PREFIX.unpack(prefix)
        if version > FORMAT_VERSION:
            raise self._fail(f"uses .sqz format version {version}; this seqcompress reads up to {FORMAT_VERSION}: upgrade")
        if version < 1:
            raise self._fail(f"has an invalid format version {version}")
        if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len + _CHECKSUM_BYTES > self.size:
            raise self._fail("is truncated or corrupted: the header length exceeds the file")
        raw = f.read(header_len)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise self._fail("is corrupted: its header is not valid JSON") from None
        try:
            return _check_header(header), _PREFIX.size + header_len
        except FormatError as exc:
            raise self._fail(f"is corrupted: {exc}") from None

    def _verify_checksum(self) -> None:
        digest = hashlib.sha256()
        with self._open() as f:
            remaining = self.size - _CHECKSUM_BYTES
            while remaining > 0:
                block = f.read(min(remaining, 1 << 20))
                if not block:
                    break
                digest.update(block)
                remaining -= len(block)
            stored = f.read(_CHECKSUM_BYTES)
        if digest.digest() != stored:
            raise self._fail("is corrupted or truncated: checksum mismatch")

    def chunks(self) -> Iterator[torch.Tensor]:
        """Each chunk's latents as float32 (rows, latent_dim), checked against the header."""
        payload = self.header["payload"]
        dim, expected_dtype = self.header["model"]["latent_dim"], DTYPES[payload["dtype"]]
        end = self.size - _CHECKSUM_BYTES
        with self._open() as f:
            f.seek(self.payload_start)
            position = self.payload_start
            for index, rows in enumerate(self.rows):
                raw_len = f.read(_CHUNK_LEN.size)
                if len(raw_len) < _CHUNK_LEN.size:
                    raise self._fail(f"is truncated: chunk {index} is missing")
                (length,) = _CHUNK_LEN.unpack(raw_len)
                position += _CHUNK_LEN.size + length
                if length > MAX_CHUNK_BYTES or position > end:
                    raise self._fail(f"is corrupted: chunk {index} runs past the end of the file")
                data = f.read(length)
                yield self._parse_chunk(data, index, rows, dim, expected_dtype, payload["codec"])
            if position != end:
                raise self._fail("is corrupted: unexpected bytes after the last chunk")

    def _parse_chunk(self, data: bytes, index: int, rows: int, dim: int, dtype: torch.dtype, codec: str):
        if codec == "zlib":
            limit = rows * dim * 4 + 4096  # safetensors of (rows, dim) plus its small header
            inflater = zlib.decompressobj()
            try:
                data = inflater.decompress(data, limit)
            except zlib.error:
                raise self._fail(f"is corrupted: chunk {index} does not decompress") from None
            if inflater.unconsumed_tail or not inflater.eof:
                raise self._fail(f"is corrupted: chunk {index} does not decompress to its stated size")
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError, RuntimeError, OverflowError):
            raise self._fail(f"is corrupted: chunk {index} is not a valid tensor block") from None
        latents = tensors.get("latents")
        if latents is None or latents.dtype != dtype or tuple(latents.shape) != (rows, dim):
            raise self._fail(f"is corrupted: chunk {index} does not have the shape and dtype its header states")
        if dtype == torch.int8:
            scale = tensors.get("scale")
            if scale is None or scale.dtype != torch.float32 or tuple(scale.shape) != (1,) or not torch.isfinite(scale).all():
                raise self._fail(f"is corrupted: chunk {index} has no valid int8 scale")
        values = dequantize(tensors)
        if not torch.isfinite(values).all():
            raise self._fail(f"is corrupted: chunk {index} holds non-finite values")
        return values


def read_header(path: str | os.PathLike) -> dict:
    """The validated header of a .sqz file (checksum included)."""
    return LatentReader(path).header


def is_latent_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
