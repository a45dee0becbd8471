"""The .sqz format: round trips for every dtype, strict validation, fuzzing with hypothesis."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import io

from seqcompress.errors import FormatError, ModelMismatchError
from seqcompress.format import (
    MAGIC,
    LatentReader,
    LatentWriter,
    check_model,
    dequantize,
    expand_runs,
    make_header,
    quantize,
    run_length,
)

DIM = 4
LENGTHS = [8, 8, 8, 5, 1]
LEGACY = Path(__file__).parent / "data" / "legacy_v1"


def _header(dtype="float16", codec="zlib"):
    model = {"fingerprint": "f" * 32, "n_max": 8, "ratio": 0.5, "latent_dim": DIM}
    return make_header(domain="text", settings={"name": "text"}, model=model, dtype=dtype, codec=codec)


def _chunks(lengths=LENGTHS, per_chunk=2, seed=0):
    """(lengths, pieces, latents) per chunk: two windows a chunk, one piece per window with its own side."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(lengths), per_chunk):
        part = lengths[i : i + per_chunk]
        rows = torch.randn(sum((n + 1) // 2 for n in part), DIM, generator=g) * 3
        out.append((part, [(1, {"documents": [n], "i": i + j}) for j, n in enumerate(part)], rows))
    return out


def _blob(dtype="float16", codec="zlib", chunks=None) -> bytes:
    stream = io.BytesIO()
    writer = LatentWriter(stream, _header(dtype, codec))
    for lengths, pieces, rows in chunks if chunks is not None else _chunks():
        writer.add(lengths, pieces, rows)
    size = writer.finish({"name": "x.txt", "size": 3, "sha256": "0" * 64})
    assert size == len(stream.getvalue())
    return stream.getvalue()


@pytest.mark.parametrize("codec", ["zlib", "none"])
@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 2e-3), ("bfloat16", 2e-2), ("int8", None)])
def test_round_trip_of_header_chunks_and_trailer(dtype, tol, codec):
    chunks = _chunks()
    reader = LatentReader(data=_blob(dtype, codec, chunks))
    assert reader.version == 2 and reader.header == _header(dtype, codec)
    assert reader.windows == 5 and reader.symbols == sum(LENGTHS) and reader.latent_rows == 4 + 4 + 4 + 3 + 1
    assert reader.source == {"name": "x.txt", "size": 3, "sha256": "0" * 64}
    got = list(reader.chunks())
    assert len(got) == len(chunks) == 3
    for chunk, (lengths, pieces, rows) in zip(got, chunks):
        assert chunk.lengths == lengths and chunk.pieces == pieces
        assert chunk.latents.dtype == torch.float32 and chunk.latents.shape == rows.shape
        # int8: symmetric per-chunk scale, so the error is at most half a step (peak / 254).
        bound = tol * rows.abs().max() if tol is not None else rows.abs().max() / 254 * (1 + 1e-5)
        assert (chunk.latents - rows).abs().max() <= bound + 1e-7


def test_a_chunk_may_carry_only_side_information():
    chunks = [([4], [(1, {"a": 1})], torch.ones(2, DIM)), ([], [(0, {"end": True})], torch.zeros(0, DIM))]
    reader = LatentReader(data=_blob(chunks=chunks))
    got = list(reader.chunks())
    assert [c.pieces for c in got] == [[(1, {"a": 1})], [(0, {"end": True})]] and got[1].latents.shape == (0, DIM)


def test_the_writer_needs_no_seek_and_encoding_is_deterministic():
    class Pipe(io.RawIOBase):
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def seekable(self):
            return False

        def write(self, b):
            self.data += b
            return len(b)

    pipe = Pipe()
    writer = LatentWriter(pipe, _header())
    for lengths, pieces, rows in _chunks():
        writer.add(lengths, pieces, rows)
    writer.finish({"name": "x.txt", "size": 3, "sha256": "0" * 64})
    assert bytes(pipe.data) == _blob() == _blob()


def test_wrong_magic_newer_version_truncation_and_corruption():
    data = _blob()
    cases = {
        "wrong magic": b"GIF89a\x00\x00" + data[8:],
        "newer": data[:8] + (99).to_bytes(2, "little") + data[10:],
        "truncated": data[: len(data) // 2],
        "flipped": data[:60] + bytes([data[60] ^ 0x01]) + data[61:],
        "extended": data + b"\x00",
        "empty": b"",
    }
    messages = {"wrong magic": "wrong magic", "newer": "upgrade", "truncated": "truncated|corrupted",
                "flipped": "corrupted", "extended": "corrupted|checksum", "empty": "wrong magic"}
    for name, blob in cases.items():
        with pytest.raises(FormatError, match=messages[name]):
            list(LatentReader(data=blob).chunks())


def test_a_chunk_whose_pieces_do_not_add_up_is_refused_when_writing():
    writer = LatentWriter(io.BytesIO(), _header())
    with pytest.raises(FormatError, match="pieces"):
        writer.add([8, 8], [(1, {})], torch.zeros(8, DIM))
    with pytest.raises(FormatError, match="shape"):
        writer.add([8], [(1, {})], torch.zeros(4, DIM + 1))


def test_format1_files_still_read():
    reader = LatentReader(LEGACY / "input.sqz")
    assert reader.version == 1 and reader.windows == len(reader.lengths) and reader.side["format"] == "fasta"
    chunks = list(reader.chunks())
    assert sum(len(c.lengths) for c in chunks) == reader.windows and all(c.pieces is None for c in chunks)
    assert sum(c.latents.shape[0] for c in chunks) == reader.latent_rows


def test_model_check():
    header = _header()
    check_model(header, "f" * 32, 8, 0.5, DIM)
    with pytest.raises(ModelMismatchError, match="force_model"):
        check_model(header, "e" * 32, 8, 0.5, DIM)
    check_model(header, "e" * 32, 8, 0.5, DIM, force=True)
    with pytest.raises(ModelMismatchError, match="n_max=8"):
        check_model(header, "f" * 32, 16, 0.5, DIM, force=True)


def test_int8_scale_and_runs():
    x = torch.tensor([[-2.0, 1.0], [0.5, 0.0]])
    q = quantize(x, "int8")
    assert q["latents"].dtype == torch.int8 and q["scale"].item() == pytest.approx(2 / 127)
    assert (dequantize(q) - x).abs().max() <= 1 / 127 + 1e-7
    assert quantize(torch.zeros(2, 2), "int8")["scale"].item() == 1.0
    assert run_length([5, 5, 5, 2, 5]) == [[5, 3], [2, 1], [5, 1]]
    assert expand_runs(run_length([5, 5, 5, 2, 5])) == [5, 5, 5, 2, 5]


# ---- fuzzing: any mutation of a valid file ends in FormatError / ModelMismatchError ---------------------
BLOBS = {d: _blob(d, "zlib", _chunks([4, 3, 1])) for d in ("float16", "int8")}
BLOBS["v1"] = (LEGACY / "input_dna.sqz").read_bytes()


def _reseal(body: bytes) -> bytes:
    """Recompute the checksum so the mutation reaches the parser behind it."""
    return body + hashlib.sha256(body).digest()


def _parse(blob: bytes) -> None:
    try:
        reader = LatentReader(data=blob)
        for _ in reader.chunks():
            pass
        check_model(reader.header, "f" * 32, 8, 0.5, DIM)
    except (FormatError, ModelMismatchError):
        pass


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16)),
)


def _mutate(blob: bytes, ops) -> bytes:
    for kind, a, b in ops:
        if kind == "flip" and blob:
            i = a % len(blob)
            blob = blob[:i] + bytes([blob[i] ^ b]) + blob[i + 1 :]
        elif kind == "truncate":
            blob = blob[: a % (len(blob) + 1)]
        elif kind == "extend":
            blob = blob + a
        elif kind == "insert":
            i = a % (len(blob) + 1)
            blob = blob[:i] + b + blob[i:]
        elif kind == "delete" and blob:
            i = a % len(blob)
            blob = blob[:i] + blob[i + b :]
    return blob


@settings(max_examples=1200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(sorted(BLOBS)), ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutated_files_raise_only_format_errors(dtype, ops):
    _parse(_mutate(BLOBS[dtype], ops))


@settings(max_examples=1200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(sorted(BLOBS)), ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_resealed_mutations_reach_the_parser_and_raise_only_format_errors(dtype, ops):
    # Mutate everything but the checksum, then recompute it: the header and chunk parsers must hold alone.
    _parse(_reseal(_mutate(BLOBS[dtype][:-32], ops)))


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_after_magic(tail):
    _parse(MAGIC + tail)
    _parse(_reseal(MAGIC + tail))
