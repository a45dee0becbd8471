"""Hostile model directories and .sqz files of a few KB: each ends in one line, in under a second, without a
large allocation. Every case runs through the real CLI in one child process whose address space is capped at
what it already uses plus 200 MB (RLIMIT_AS), so a header that makes the reader allocate gigabytes fails the
test with a MemoryError instead of passing slowly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from seqcompress import format as sqz
from seqcompress.domains import get_domain
from seqcompress.model import ModelConfig, build_model

HEADROOM_MB = 200
FASTA = ">chr1 test\nACGTACGTTTGACCAGTACGATCGATCGGGCTA\nACGTTGCA\n>chr2\nGGGCCCAATT\n"

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from typer.testing import CliRunner
    from seqcompress.cli.main import app

    cases, warm, headroom = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
    runner = CliRunner()
    for args in warm:  # imports, thread pools and allocator arenas are in place before the cap
        assert runner.invoke(app, args).exit_code == 0
    size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom * 2**20, resource.RLIM_INFINITY))
    out = {}
    for name, args in cases.items():
        start = time.perf_counter()
        r = runner.invoke(app, args)
        out[name] = {"exit": r.exit_code, "stderr": r.stderr, "seconds": time.perf_counter() - start,
                     "exception": repr(r.exception) if r.exception and not isinstance(r.exception, SystemExit) else None}
    print(json.dumps(out))
""")


def _model(directory: Path, **changes) -> Path:
    domain = get_domain("dna", {"k": 1})
    config = ModelConfig(**{**dict(n_max=16, ratio=0.5, d_model=16, heads=2, layers=1, ffn_dim=32, latent_dim=16),
                            **changes, **domain.model_fields()})
    build_model(config, seed=0).save(directory, domain=domain.state())
    return directory


def _edited_model(root: Path, good: Path, name: str, edit) -> Path:
    target = root / name
    shutil.copytree(good, target)
    meta = json.loads((target / "config.json").read_text())
    text = edit(meta)
    (target / "config.json").write_text(text if isinstance(text, str) else json.dumps(meta))
    return target


def _assemble(header: dict, chunks: list[tuple[bytes, int, int, int]], trailer: dict, version: int = 2) -> bytes:
    """A .sqz of format 2 with a valid checksum from raw chunk bodies: (body, windows, rows, info bytes)."""
    head = sqz._json_bytes(header)
    data = bytearray(sqz._PREFIX.pack(sqz.MAGIC, version, len(head)) + head)
    entries = []
    for body, windows, rows, info in chunks:
        entries.append((len(data), len(body), windows, rows, info))
        data += sqz._CHUNK_LEN.pack(len(body)) + body
    index = len(data)
    data += b"".join(sqz._INDEX_ENTRY.pack(*e) for e in entries)
    tail = sqz._json_bytes(trailer)
    data += tail + sqz._END.pack(index, len(entries), len(tail), sqz._END_MAGIC)
    import hashlib
    return bytes(data + hashlib.sha256(data).digest())


def _body(rows: int, lengths: list[list[int]], pieces: list) -> tuple[bytes, int]:
    info = sqz._json_bytes({"lengths": lengths, "pieces": pieces})
    tensors = {"latents": torch.zeros(rows, 16, dtype=torch.float16),
               "info": torch.frombuffer(bytearray(info), dtype=torch.uint8)}
    return zlib.compress(st_save(tensors), 9), len(info)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    good = _model(root / "model")
    fasta = root / "in.fa"
    fasta.write_text(FASTA)
    from seqcompress.api import load
    from seqcompress.compress import encode_file

    model, meta, domain = load(good)
    encode_file(model, meta, domain, fasta, root / "good.sqz")
    header = sqz.LatentReader(root / "good.sqz").header
    out = str(root / "out.fa")

    models = {
        "n_max 20,000": lambda m: m["model"].update(n_max=20_000),
        "layers 10^5": lambda m: m["model"].update(layers=100_000),
        "d_model 30,000": lambda m: m["model"].update(d_model=30_000, ffn_dim=120_000, latent_dim=30_000),
        "heads 0": lambda m: m["model"].update(heads=0),
        "model null": lambda m: m.update(model=None),
        "version as text": lambda m: m.update(version="2"),
        "nested JSON": lambda m: "[" * 100_000 + "]" * 100_000,
        "no fingerprint": lambda m: m.pop("fingerprint"),
        "empty fingerprint": lambda m: m.update(fingerprint=""),
        "domain state changed": lambda m: m["domain"].update(k=3),
        "unknown domain": lambda m: m["domain"].update(name="nope"),
    }
    run = {}
    for name, edit in models.items():
        directory = _edited_model(root, good, name.replace(" ", "_").replace(",", "").replace("^", ""), edit)
        run[f"model: {name}"] = ["encode", str(fasta), "-m", str(directory), "-o", str(root / "x.sqz")]
    relative = _model(root / "relative", positions="t5", resize="relative")
    for name, edit in {"t5 buckets 10^8": lambda m: m["model"]["options"].update(buckets=10**8, max_distance=10**8),
                       "relative resize at ratio 10^-8": lambda m: m["model"].update(ratio=1e-8),
                       "band 10^7": lambda m: m["model"]["options"].update(band=10**7)}.items():
        directory = _edited_model(root, relative, name.replace(" ", "_").replace("^", ""), edit)
        run[f"model: {name}"] = ["info", str(directory)]
    routing = _model(root / "routing", attention="routing")
    directory = _edited_model(root, routing, "routing_clusters", lambda m: m["model"]["options"].update(clusters=10**7))
    run["model: routing clusters 10^7"] = ["info", str(directory)]
    bomb = root / "weights_header"
    shutil.copytree(good, bomb)
    (bomb / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}" * 100)
    run["model: weights header length 2^40"] = ["info", str(bomb)]
    huge = root / "huge_config"
    shutil.copytree(good, huge)
    with open(huge / "config.json", "ab") as f:
        f.truncate(64 * 2**20)  # a sparse 64 MB config.json
    run["model: 64 MB config.json"] = ["info", str(huge)]

    files = {}
    body, info = _body(1, [[2, 1]], [[1, {}]])
    trailer = {"windows": 1, "symbols": 2, "latent_rows": 1, "source": {}}
    files["index claims 10^8 windows"] = _assemble(header, [(body, 10**8, 10**8, info)],
                                                   {**trailer, "windows": 10**8, "latent_rows": 10**8})
    files["index claims 2^32-1 rows"] = _assemble(header, [(body, 1, 2**32 - 1, info)], {**trailer, "latent_rows": 2**32 - 1})
    files["trailer claims 10^15 symbols"] = _assemble(header, [(body, 1, 1, info)], {**trailer, "symbols": 10**15})
    long_body, long_info = _body(500_000, [[1_000_000, 1]], [[1, {}]])
    files["window of 10^6 symbols (n_max 16)"] = _assemble(header, [(long_body, 1, 500_000, long_info)],
                                                          {**trailer, "symbols": 10**6, "latent_rows": 500_000})
    runs_body, runs_info = _body(1, [[2, 10**9]], [[1, {}]])
    files["lengths run of 10^9 windows"] = _assemble(header, [(runs_body, 1, 1, runs_info)], trailer)
    v1 = {**header, "format_version": 1, "windows": {"count": 10**8, "lengths": [[16, 10**8]],
                                                     "latent_lengths": [[8, 10**8]]},
          "payload": {**header["payload"], "windows_per_chunk": 64, "chunks": 1562500}, "source": {}, "side": {}}
    head = sqz._json_bytes(v1)
    import hashlib
    raw = sqz._PREFIX.pack(sqz.MAGIC, 1, len(head)) + head
    files["format 1 header claims 10^8 windows"] = raw + hashlib.sha256(raw).digest()
    for name, data in files.items():
        path = root / (name.replace(" ", "_").replace("^", "") + ".sqz")
        path.write_bytes(data)
        assert path.stat().st_size < 64 * 1024
        run[f"sqz info: {name}"] = ["info", str(path)]
        run[f"sqz decode: {name}"] = ["decode", str(path), "-m", str(good), "-o", out]
    warm = [["info", str(good)], ["decode", str(root / "good.sqz"), "-m", str(good), "-o", str(root / "warm.fa")]]
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(run), json.dumps(warm), str(HEADROOM_MB)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), root


CASE_NAMES = [f"model: {n}" for n in ("n_max 20,000", "layers 10^5", "d_model 30,000", "heads 0", "model null",
                                        "version as text", "nested JSON", "no fingerprint", "empty fingerprint",
                                        "domain state changed", "unknown domain", "weights header length 2^40",
                                        "64 MB config.json", "t5 buckets 10^8", "relative resize at ratio 10^-8",
                                        "band 10^7", "routing clusters 10^7")] + [
    f"sqz {cmd}: {n}" for n in ("index claims 10^8 windows", "index claims 2^32-1 rows", "trailer claims 10^15 symbols",
                                "window of 10^6 symbols (n_max 16)", "lengths run of 10^9 windows",
                                "format 1 header claims 10^8 windows") for cmd in ("info", "decode")
    if (cmd, n) != ("info", "lengths run of 10^9 windows")]  # `info` reads the index, not the chunks' insides


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_input_ends_in_one_line_fast_and_small(cases, name):
    results, root = cases
    r = results[name]
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    assert r["exception"] is None and r["exit"] == 1, r
    assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"]
    assert "internal error" not in lines[0] and "Traceback" not in r["stderr"]
    assert "alloc" not in lines[0] and "memory" not in lines[0]  # refused before allocating, not after failing to
    assert r["seconds"] < 1.0, r
    assert not (root / "out.fa").exists()


# ---- fuzz: config.json ------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.integers(-5, 5), max_size=3),
                    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
_MODEL_KEYS = ["n_max", "ratio", "d_model", "heads", "layers", "ffn_dim", "latent_dim", "dropout", "positions",
               "resize_init", "reducer", "vocab_size", "feature_dim", "attention", "resize", "stages", "options"]


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    good = _model(root / "model")
    return good, json.loads((good / "config.json").read_text())


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(edits=st.dictionaries(st.sampled_from(_MODEL_KEYS + ["<top>:version", "<top>:fingerprint",
                                                            "<top>:fingerprint_scheme", "<top>:domain"]),
                             _VALUES, min_size=1, max_size=4))
def test_fuzz_config_json_raises_only_model_file_errors(fuzz_model, tmp_path_factory, edits):
    from seqcompress.api import load
    from seqcompress.errors import SeqCompressError

    good, meta = fuzz_model
    meta = json.loads(json.dumps(meta))
    for key, value in edits.items():
        if key.startswith("<top>:"):
            meta[key[6:]] = value
        else:
            meta["model"][key] = value
    target = tmp_path_factory.mktemp("edited")
    (target / "model.safetensors").symlink_to(good / "model.safetensors")
    (target / "config.json").write_text(json.dumps(meta))
    try:
        load(target)
    except SeqCompressError:
        pass
