"""The .sqz format: round trips for every dtype, strict validation, fuzzing with hypothesis."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _header(dtype="float16", codec="zlib", per_chunk=2, lengths=LENGTHS):
    latent = [(n + 1) // 2 for n in lengths]
    model = {"fingerprint": "f" * 32, "n_max": 8, "ratio": 0.5, "latent_dim": DIM}
    return make_header(domain="text", model=model, dtype=dtype, codec=codec, lengths=lengths, latent_lengths=latent,
                       windows_per_chunk=per_chunk, source={"name": "x.txt", "size": 3, "sha256": "0" * 64},
                       side={"documents": [30]}), latent


def _write(tmp_path, dtype="float16", codec="zlib", seed=0):
    header, latent = _header(dtype, codec)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(sum(latent), DIM, generator=g) * 3
    path = tmp_path / f"f-{dtype}-{codec}.sqz"
    chunks = torch.split(rows, [sum(latent[i : i + 2]) for i in range(0, len(latent), 2)])
    with LatentWriter(path, header) as writer:
        for chunk in chunks:
            writer.add(chunk)
    return path, header, chunks


@pytest.mark.parametrize("codec", ["zlib", "none"])
@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 2e-3), ("bfloat16", 2e-2), ("int8", None)])
def test_round_trip_of_header_and_payload(tmp_path, dtype, tol, codec):
    path, header, chunks = _write(tmp_path, dtype, codec)
    reader = LatentReader(path)
    assert reader.header == header
    assert reader.lengths == LENGTHS and reader.latent_lengths == [4, 4, 4, 3, 1]
    got = list(reader.chunks())
    assert len(got) == len(chunks) == 3
    for a, b in zip(got, chunks):
        assert a.dtype == torch.float32 and a.shape == b.shape
        # int8: symmetric per-chunk scale, so the error is at most half a step (peak / 254).
        bound = tol * b.abs().max() if tol is not None else b.abs().max() / 254 * (1 + 1e-5)
        assert (a - b).abs().max() <= bound + 1e-7


def test_encoding_is_deterministic(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _, _ = _write(tmp_path / "a")
    b, _, _ = _write(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()


def test_wrong_magic_newer_version_truncation_and_corruption(tmp_path):
    path, _, _ = _write(tmp_path)
    data = path.read_bytes()
    cases = {
        "wrong magic": b"GIF89a\x00\x00" + data[8:],
        "newer": data[:8] + (99).to_bytes(2, "little") + data[10:],
        "truncated": data[: len(data) // 2],
        "flipped": data[:60] + bytes([data[60] ^ 0x01]) + data[61:],
        "extended": data + b"\x00",
        "empty": b"",
    }
    messages = {"wrong magic": "wrong magic", "newer": "upgrade", "truncated": "truncated", "flipped": "corrupted",
                "extended": "checksum", "empty": "wrong magic"}
    for name, blob in cases.items():
        with pytest.raises(FormatError, match=messages[name]):
            list(LatentReader(data=blob).chunks())


def test_chunk_with_wrong_shape_is_refused_when_writing(tmp_path):
    header, _ = _header()
    with pytest.raises(FormatError, match="shape"):
        with LatentWriter(tmp_path / "x.sqz", header) as writer:
            writer.add(torch.zeros(3, DIM))
    assert not (tmp_path / "x.sqz").exists() and list(tmp_path.iterdir()) == []


def test_missing_chunks_leave_no_file(tmp_path):
    header, _ = _header()
    with pytest.raises(FormatError, match="announces"):
        with LatentWriter(tmp_path / "x.sqz", header) as writer:
            writer.add(torch.zeros(8, DIM))
    assert list(tmp_path.iterdir()) == []


def test_model_check():
    header, _ = _header()
    check_model(header, "f" * 32, 8, 0.5, DIM)
    with pytest.raises(ModelMismatchError, match="--force-model"):
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
def _valid_blob(dtype: str) -> bytes:
    header, latent = _header(dtype, "zlib", per_chunk=2, lengths=[4, 3, 1])
    rows = torch.linspace(-1, 1, sum(latent) * DIM).view(-1, DIM)
    chunks = torch.split(rows, [sum(latent[i : i + 2]) for i in range(0, len(latent), 2)])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.sqz"
        with LatentWriter(path, header) as writer:
            for chunk in chunks:
                writer.add(chunk)
        return path.read_bytes()


BLOBS = {d: _valid_blob(d) for d in ("float16", "int8")}


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


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(sorted(BLOBS)), ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutated_files_raise_only_format_errors(dtype, ops):
    _parse(_mutate(BLOBS[dtype], ops))


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(sorted(BLOBS)), ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_resealed_mutations_reach_the_parser_and_raise_only_format_errors(dtype, ops):
    # Mutate everything but the checksum, then recompute it: the header and chunk parsers must hold alone.
    _parse(_reseal(_mutate(BLOBS[dtype][:-32], ops)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_after_magic(tail):
    _parse(MAGIC + tail)
    _parse(_reseal(MAGIC + tail))
