"""The .sqz latent file: the only module that reads or writes its bytes (specified in docs/format.md).

Format 2 (written now) streams: the header comes first and holds only what is known before the first
byte of input is read; every chunk carries its own window lengths and side information; a trailer at the
end holds the chunk index and the totals, as zip's central directory does:

    magic        8 bytes   b"\\x89SQZ\\r\\n\\x1a\\n"
    version      u16       2
    header_len   u32       at most MAX_HEADER_BYTES
    header       UTF-8 JSON: format, domain, settings, model, payload {dtype, codec}
    chunks       each: u64 body length, then the body: safetensors bytes (zlib-compressed when the codec
                 is zlib) holding "latents" (rows, latent_dim) in the stored dtype, "scale" (1,) float32
                 for int8, and "info" uint8: UTF-8 JSON {"lengths": run-length window lengths,
                 "pieces": [[window count, side], ...], and for a model with memory "links":
                 {"streams": run-length stream of each window, "starts": windows that start a record}}
    index        chunk_count entries of _INDEX_ENTRY: offset, body length, windows, latent rows, info bytes
    trailer      UTF-8 JSON: windows, symbols, latent_rows, source {name, size, sha256}
    end record   _END: index offset, chunk count, trailer length, b"SQZINDEX"
    checksum     32 bytes  SHA-256 of everything before it

A writer needs no seek (it can write to a pipe); a reader reads the end record and index first, checks
every count and offset against the file size, verifies the checksum before handing out any chunk, and
never unpickles. Format 1 (one header with every window length and the whole file's side information
before the chunks) is still read. Every failure is a FormatError that says what is wrong; a file from
another model is a ModelMismatchError.
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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from seqcompress.errors import FormatError, ModelMismatchError
from seqcompress.lengths import stage_lengths
from seqcompress.memory import MAX_STREAMS, Link

MAGIC = b"\x89SQZ\r\n\x1a\n"
FORMAT_VERSION = 2
MAX_HEADER_BYTES = 1024 * 1024  # format 2: settings and model summary only
MAX_V1_HEADER_BYTES = 64 * 1024 * 1024  # format 1 kept every window length and all side information here
MAX_CHUNK_BYTES = 1024 * 1024 * 1024
MAX_INFO_BYTES = 64 * 1024 * 1024
MAX_TRAILER_BYTES = 1024 * 1024
_ZLIB_MAX_RATIO = 1032  # deflate's limit: no input inflates to more than this many times its size
_PREFIX = struct.Struct("<8sHI")  # magic, version, header_len
_CHUNK_LEN = struct.Struct("<Q")
_INDEX_ENTRY = struct.Struct("<QQIII")  # offset, body length, windows, latent rows, info bytes
_END = struct.Struct("<QQI8s")  # index offset, chunk count, trailer length, end magic
_END_MAGIC = b"SQZINDEX"
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


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


# ---- validation helpers ------------------------------------------------------------------------------
def _need(cond: bool, what: str) -> None:
    if not cond:
        raise FormatError(f"invalid header: {what}")


def _is_int(v: object, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _runs_ok(runs: object) -> bool:
    return isinstance(runs, list) and all(
        isinstance(r, list) and len(r) == 2 and _is_int(r[0]) and _is_int(r[1], 1) for r in runs)


def _check_model_section(model: object) -> None:
    _need(isinstance(model, dict), "model section missing")
    assert isinstance(model, dict)
    _need(isinstance(model.get("fingerprint"), str) and len(model["fingerprint"]) <= 128, "model fingerprint missing")
    _need(_is_int(model.get("n_max"), 1) and _is_int(model.get("latent_dim"), 1), "model n_max/latent_dim invalid")
    ratio = model.get("ratio")
    _need(isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 < ratio <= 1, "model ratio invalid")
    stages = model.get("stages", [])
    _need(isinstance(stages, list) and len(stages) <= 64 and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s <= 1 for s in stages), "model stages invalid")
    _need(_is_int(model.get("memory", 0)), "model memory invalid")


def make_header(*, domain: str, settings: dict, model: dict, dtype: str, codec: str) -> dict:
    """The format-2 JSON header; `model` holds fingerprint, n_max, ratio, latent_dim (and stages etc.)."""
    if dtype not in DTYPES:
        raise FormatError(f"unknown latent dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if codec not in CODECS:
        raise FormatError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    return {"format": "seqcompress-latents", "format_version": FORMAT_VERSION, "domain": domain,
            "settings": settings, "model": model, "payload": {"dtype": dtype, "codec": codec}}


def _check_header(header: object) -> dict:
    _need(isinstance(header, dict), "not a JSON object")
    assert isinstance(header, dict)
    _need(header.get("format") == "seqcompress-latents", "not a seqcompress latent header")
    _need(header.get("format_version") == FORMAT_VERSION, "format version does not match the file's")
    _need(isinstance(header.get("domain"), str), "domain missing")
    _need(isinstance(header.get("settings"), dict), "settings missing")
    _check_model_section(header.get("model"))
    payload = header.get("payload")
    _need(isinstance(payload, dict) and payload.get("dtype") in DTYPES and payload.get("codec") in CODECS,
          "payload dtype/codec unknown")
    return header


def _check_v1_header(header: object) -> dict:
    """Validate a format-1 header (window lengths and side information for the whole file)."""
    _need(isinstance(header, dict), "not a JSON object")
    assert isinstance(header, dict)
    _need(header.get("format") == "seqcompress-latents", "not a seqcompress latent header")
    _need(isinstance(header.get("domain"), str), "domain missing")
    _check_model_section(header.get("model"))
    windows = header.get("windows")
    _need(isinstance(windows, dict) and _is_int(windows.get("count")), "window count missing")
    _need(_runs_ok(windows.get("lengths")) and _runs_ok(windows.get("latent_lengths")), "window lengths invalid")
    _need(sum(c for _, c in windows["lengths"]) == windows["count"] == sum(c for _, c in windows["latent_lengths"]),
          "window lengths do not add up to the window count")
    payload = header.get("payload")
    _need(isinstance(payload, dict), "payload section missing")
    _need(payload.get("dtype") in DTYPES and payload.get("codec") in CODECS, "payload dtype/codec unknown")
    _need(_is_int(payload.get("windows_per_chunk"), 1) and _is_int(payload.get("chunks")), "chunking invalid")
    _need(payload["chunks"] == math.ceil(windows["count"] / payload["windows_per_chunk"]), "chunk count invalid")
    _need(isinstance(header.get("source"), dict) and isinstance(header.get("side"), dict), "source/side missing")
    return header


def check_model(header: dict, fingerprint: str, n_max: int, ratio: float, latent_dim: int, force: bool = False,
                stages: list[float] | None = None, memory: int = 0) -> None:
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
            f"{fingerprint[:12]}; decode it with the model that encoded it (or force_model to try anyway)"
        )
    if m.get("memory", 0) != memory:
        raise ModelMismatchError(f"this latent file was encoded with memory {m.get('memory', 0)}; the given model has "
                                 f"memory {memory} (decode replays the encoder's memory, so they must agree)")


# ---- writing -------------------------------------------------------------------------------------
class LatentWriter:
    """Writes a format-2 file to an open binary stream (a pipe will do: nothing is sought).

        writer = LatentWriter(stream, header)
        writer.add(lengths, pieces, latents)   # per chunk, in order
        writer.finish(source)                  # index, trailer, checksum

    The caller owns the stream (and its atomic rename, see seqcompress.atomic)."""

    def __init__(self, stream: BinaryIO, header: dict) -> None:
        self.header = _check_header(json.loads(json.dumps(header)))
        self.dim = self.header["model"]["latent_dim"]
        self._stream = stream
        self._hash = hashlib.sha256()
        self._index: list[tuple[int, int, int, int, int]] = []
        self.windows = self.symbols = self.rows = 0
        self.side_bytes = 0
        head = _json_bytes(self.header)
        if len(head) > MAX_HEADER_BYTES:
            raise FormatError(f"the header is {len(head):,} bytes, more than the {MAX_HEADER_BYTES:,} allowed")
        self._offset = 0
        self._write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head)

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._hash.update(data)
        self._offset += len(data)

    def add(self, lengths: list[int], pieces: list[tuple[int, dict]], latents: torch.Tensor,
            links: list[Link] | None = None) -> None:
        """One chunk: its windows' lengths, its pieces ([window count, side], counts adding up to the windows),
        the real latent rows of those windows in order (rows, latent_dim), and for a model with memory each
        window's Link (decode replays the memory from them)."""
        if latents.dim() != 2 or latents.shape[1] != self.dim:
            raise FormatError(f"chunk latents have shape {tuple(latents.shape)}, expected (rows, {self.dim})")
        if sum(count for count, _ in pieces) != len(lengths) or any(n < 1 for n in lengths) or not pieces:
            raise FormatError("chunk pieces do not add up to its windows")
        info_value: dict = {"lengths": run_length(lengths), "pieces": [[count, side] for count, side in pieces]}
        if links is not None:
            if len(links) != len(lengths):
                raise FormatError(f"{len(links)} links for a chunk of {len(lengths)} windows")
            info_value["links"] = {"streams": run_length([link.stream for link in links]),
                                   "starts": [i for i, link in enumerate(links) if link.start]}
        info = _json_bytes(info_value)
        if len(info) > MAX_INFO_BYTES:
            raise FormatError(f"a chunk's side information is {len(info):,} bytes, more than {MAX_INFO_BYTES:,}")
        tensors = quantize(latents, self.header["payload"]["dtype"])
        tensors["info"] = torch.frombuffer(bytearray(info), dtype=torch.uint8)
        body = st_save(tensors)
        if self.header["payload"]["codec"] == "zlib":
            body = zlib.compress(body, 9)
        self._index.append((self._offset, len(body), len(lengths), latents.shape[0], len(info)))
        self._write(_CHUNK_LEN.pack(len(body)) + body)
        self.windows += len(lengths)
        self.symbols += sum(lengths)
        self.rows += latents.shape[0]
        self.side_bytes += len(info)

    def finish(self, source: dict) -> int:
        """Write the index, the trailer and the checksum; returns the file's size in bytes."""
        index_offset = self._offset
        self._write(b"".join(_INDEX_ENTRY.pack(*entry) for entry in self._index))
        trailer = _json_bytes({"windows": self.windows, "symbols": self.symbols, "latent_rows": self.rows,
                               "source": source})
        if len(trailer) > MAX_TRAILER_BYTES:
            raise FormatError("the trailer is too large")
        self._write(trailer + _END.pack(index_offset, len(self._index), len(trailer), _END_MAGIC))
        digest = self._hash.digest()
        self._stream.write(digest)
        return self._offset + len(digest)


# ---- reading -------------------------------------------------------------------------------------
@dataclass
class Chunk:
    """One chunk as read: its windows' lengths, its pieces ([count, side]; None in format 1) and latents."""

    lengths: list[int]
    pieces: list[tuple[int, dict]] | None
    latents: torch.Tensor  # (rows, latent_dim) float32
    links: list[Link] | None = None  # each window's stream and record start (files of a model with memory)


class LatentReader:
    """Reads and validates a .sqz file (format 1 or 2): `header`, `windows`, `symbols` and `source` at once,
    `chunks()` streamed after the checksum passed."""

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
            self.version, self.header, self.payload_start = self._read_header(f)
            if self.version == 1:
                self._v1_layout()
            else:
                self._read_index(f)
        self._verify_checksum()

    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self.name} {what}")

    # ---- the fixed parts ----
    def _read_header(self, f: BinaryIO) -> tuple[int, dict, int]:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
            raise self._fail("is not a seqcompress latent file (.sqz): wrong magic bytes")
        _, version, header_len = _PREFIX.unpack(prefix)
        if version > FORMAT_VERSION:
            raise self._fail(f"uses .sqz format version {version}; this seqcompress reads up to {FORMAT_VERSION}: upgrade")
        if version < 1:
            raise self._fail(f"has an invalid format version {version}")
        cap = MAX_V1_HEADER_BYTES if version == 1 else MAX_HEADER_BYTES
        if header_len > cap or _PREFIX.size + header_len + _CHECKSUM_BYTES > self.size:
            raise self._fail("is truncated or corrupted: the header length exceeds the file")
        raw = f.read(header_len)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise self._fail("is corrupted: its header is not valid JSON") from None
        try:
            header = _check_v1_header(header) if version == 1 else _check_header(header)
        except FormatError as exc:
            raise self._fail(f"is corrupted: {exc}") from None
        return version, header, _PREFIX.size + header_len

    def _read_index(self, f: BinaryIO) -> None:
        """Format 2: the end record, the index and the trailer, every number checked against the file size."""
        tail = _END.size + _CHECKSUM_BYTES
        if self.size < self.payload_start + tail:
            raise self._fail("is truncated: no chunk index at its end")
        f.seek(self.size - tail)
        index_offset, count, trailer_len, magic = _END.unpack(f.read(_END.size))
        if magic != _END_MAGIC:
            raise self._fail("is truncated or corrupted: no chunk index at its end")
        if (trailer_len > MAX_TRAILER_BYTES or index_offset < self.payload_start
                or count > (index_offset - self.payload_start) // (_CHUNK_LEN.size + 1)
                or index_offset + count * _INDEX_ENTRY.size + trailer_len + tail != self.size):
            raise self._fail("is corrupted: its chunk index does not fit the file")
        f.seek(index_offset)
        raw = f.read(count * _INDEX_ENTRY.size)
        entries = [_INDEX_ENTRY.unpack_from(raw, i * _INDEX_ENTRY.size) for i in range(count)]
        try:
            trailer = json.loads(f.read(trailer_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise self._fail("is corrupted: its trailer is not valid JSON") from None
        position = self.payload_start
        row_bytes = self.header["model"]["latent_dim"] * bytes_per_value(self.header["payload"]["dtype"])
        packed = 1 if self.header["payload"]["codec"] == "none" else _ZLIB_MAX_RATIO
        for i, (offset, length, windows, rows, info) in enumerate(entries):
            plain_limit = rows * self.header["model"]["latent_dim"] * 4 + info + 4096
            stored = rows * row_bytes + info  # what the chunk's tensors take once read: at most `packed` x its bytes
            if (offset != position or length > MAX_CHUNK_BYTES or info > MAX_INFO_BYTES or info < 2
                    or rows < windows or stored > length * packed
                    or (self.header["payload"]["codec"] == "none" and length > plain_limit)):
                raise self._fail(f"is corrupted: chunk {i} in the index does not fit the file")
            position = offset + _CHUNK_LEN.size + length
        if position != index_offset:
            raise self._fail("is corrupted: its chunks do not end where the index starts")
        ok = isinstance(trailer, dict) and isinstance(trailer.get("source"), dict) and all(
            _is_int(trailer.get(k)) for k in ("windows", "symbols", "latent_rows"))
        if not ok or trailer["windows"] != sum(e[2] for e in entries) or trailer["latent_rows"] != sum(e[3] for e in entries):
            raise self._fail("is corrupted: its trailer does not agree with its chunk index")
        if trailer["symbols"] > trailer["windows"] * self.header["model"]["n_max"]:
            raise self._fail("is corrupted: its trailer claims more symbols than its windows can hold")
        self._entries = entries
        self.windows, self.symbols, self.source = trailer["windows"], trailer["symbols"], trailer["source"]
        self.latent_rows = trailer["latent_rows"]

    def _v1_layout(self) -> None:
        windows = self.header["windows"]
        if windows["count"] > self.size:  # every window has at least one stored value
            raise self._fail("is corrupted: more windows than the file can hold")
        self.lengths = expand_runs(windows["lengths"])
        self.latent_lengths = expand_runs(windows["latent_lengths"])
        if any(not 1 <= n <= self.header["model"]["n_max"] or self._latent_length(n) != m
               for n, m in zip(self.lengths, self.latent_lengths)):
            raise self._fail("is corrupted: its window lengths do not fit the model it names")
        per = self.header["payload"]["windows_per_chunk"]
        self._v1_rows = [sum(self.latent_lengths[i : i + per]) for i in range(0, len(self.latent_lengths), per)]
        self.windows, self.symbols, self.source = windows["count"], sum(self.lengths), self.header["source"]
        self.latent_rows = sum(self.latent_lengths)

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

    @property
    def side(self) -> dict:
        """Format 1 only: the side information of the whole file."""
        return self.header.get("side", {})

    # ---- chunks ----
    def chunks(self) -> Iterator[Chunk]:
        """Each chunk, checked against the header and index, latents as float32 (rows, latent_dim)."""
        payload = self.header["payload"]
        dim, dtype = self.header["model"]["latent_dim"], DTYPES[payload["dtype"]]
        with self._open() as f:
            f.seek(self.payload_start)
            if self.version == 1:
                yield from self._v1_chunks(f, dim, dtype, payload["codec"])
                return
            for index, (offset, length, windows, rows, info_len) in enumerate(self._entries):
                f.seek(offset + _CHUNK_LEN.size)
                tensors = self._parse_body(f.read(length), index, rows, dim, dtype, payload["codec"], info_len)
                yield self._chunk(tensors, index, windows, rows)

    def _chunk(self, tensors: dict[str, torch.Tensor], index: int, windows: int, rows: int) -> Chunk:
        info_t = tensors.get("info")
        if info_t is None or info_t.dtype != torch.uint8 or info_t.dim() != 1:
            raise self._fail(f"is corrupted: chunk {index} has no side information block")
        try:
            info = json.loads(bytes(info_t.numpy()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise self._fail(f"is corrupted: chunk {index} side information is not valid JSON") from None
        ok = isinstance(info, dict) and _runs_ok(info.get("lengths")) and isinstance(info.get("pieces"), list) and all(
            isinstance(p, list) and len(p) == 2 and _is_int(p[0]) and isinstance(p[1], dict) for p in info["pieces"])
        n_max = self.header["model"]["n_max"]
        if not ok or sum(c for _, c in info["lengths"]) != windows or sum(p[0] for p in info["pieces"]) != windows \
                or any(not 1 <= v <= n_max for v, _ in info["lengths"]):
            raise self._fail(f"is corrupted: chunk {index} window lengths or pieces do not match the index")
        lengths = expand_runs(info["lengths"])  # `windows` entries, bounded by the checked index
        if sum(self._latent_length(n) for n in lengths) != rows:
            raise self._fail(f"is corrupted: chunk {index} latent rows do not match its window lengths")
        return Chunk(lengths, [(p[0], p[1]) for p in info["pieces"]], dequantize(tensors),
                     self._links(info.get("links"), index, windows))

    def _links(self, links: object, index: int, windows: int) -> list[Link] | None:
        if links is None:
            return None
        ok = isinstance(links, dict) and _runs_ok(links.get("streams")) and isinstance(links.get("starts"), list)
        if not ok or sum(c for _, c in links["streams"]) != windows or any(
                v >= MAX_STREAMS for v, _ in links["streams"]):
            raise self._fail(f"is corrupted: chunk {index} window links do not match its windows")
        starts = links["starts"]
        if not all(_is_int(i) and i < windows for i in starts) or starts != sorted(set(starts)):
            raise self._fail(f"is corrupted: chunk {index} record starts are not windows of the chunk")
        begins = set(starts)
        return [Link(stream, i in begins) for i, stream in enumerate(expand_runs(links["streams"]))]

    def _latent_length(self, length: int) -> int:
        model = self.header["model"]
        return stage_lengths(length, model.get("stages") or [model["ratio"]])[-1]

    def _v1_chunks(self, f: BinaryIO, dim: int, dtype: torch.dtype, codec: str) -> Iterator[Chunk]:
        end = self.size - _CHECKSUM_BYTES
        per = self.header["payload"]["windows_per_chunk"]
        position = self.payload_start
        for index, rows in enumerate(self._v1_rows):
            raw_len = f.read(_CHUNK_LEN.size)
            if len(raw_len) < _CHUNK_LEN.size:
                raise self._fail(f"is truncated: chunk {index} is missing")
            (length,) = _CHUNK_LEN.unpack(raw_len)
            position += _CHUNK_LEN.size + length
            if length > MAX_CHUNK_BYTES or position > end:
                raise self._fail(f"is corrupted: chunk {index} runs past the end of the file")
            tensors = self._parse_body(f.read(length), index, rows, dim, dtype, codec, 0)
            yield Chunk(self.lengths[index * per : (index + 1) * per], None, dequantize(tensors))
        if position != end:
            raise self._fail("is corrupted: unexpected bytes after the last chunk")

    def _parse_body(self, data: bytes, index: int, rows: int, dim: int, dtype: torch.dtype, codec: str,
                    info_len: int) -> dict[str, torch.Tensor]:
        if codec == "zlib":
            limit = rows * dim * 4 + info_len + 4096  # the safetensors of the tensors plus their small header
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
        if not torch.isfinite(dequantize(tensors)).all():
            raise self._fail(f"is corrupted: chunk {index} holds non-finite values")
        if info_len and (tensors.get("info") is None or tensors["info"].numel() != info_len):
            raise self._fail(f"is corrupted: chunk {index} side information does not have its indexed size")
        return tensors


def is_latent_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
