"""Shared fixtures: tiny seeded models and data."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch

import seqcompress  # noqa: F401  (package import first, as the console script does)
from seqcompress.model import ModelConfig, build_model

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: one thread per worker, so N workers fill N cores
    torch.set_num_threads(1)


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(n_max=16, ratio=0.5, d_model=32, heads=4, layers=2, ffn_dim=64, latent_dim=32, vocab_size=50)
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture
def tiny_model():
    return build_model(tiny_config(), seed=0).eval()


@pytest.fixture
def text_file(tmp_path):
    """A small UTF-8 text corpus of several documents (from the bundled sample)."""
    from seqcompress.domain import bundled

    docs = bundled("wiki_sample.txt").read_text(encoding="utf-8").split("\n\n")[:40]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a busy machine does not stall them (no spinning OpenMP
    workers). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- a domain's writer without a model: for tests that hand it crafted side information -----------------
def write_pieces(domain, pieces, name: str) -> None:
    """Pieces through the domain's writer into memory, sides through JSON as a .sqz chunk stores them."""
    writer = domain.codec.open_writer(io.BytesIO(), name, {"settings": domain.settings.state()})
    for windows, side, *_ in pieces:
        writer.write(windows, json.loads(json.dumps(side)))
    writer.close()


def legacy_split(domain, side: dict, windows: list) -> list:
    """A format-1 side block and the file's windows as the pieces the codec's legacy mapping makes of them."""
    start, pieces = 0, []
    for count, piece_side in domain.codec.legacy_pieces(side, [len(w) for w in windows]):
        pieces.append((windows[start : start + count], piece_side))
        start += count
    return pieces
