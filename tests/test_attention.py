"""Variable length by masked W_S slicing: padding never changes a result nor receives a gradient."""

from __future__ import annotations

import pytest
import torch

from seqcompress.attention import latent_length
from seqcompress.errors import InputError
from seqcompress.model import build_model
from seqcompress.reducers import REDUCERS
from tests.conftest import tiny_config


def _pad(seqs: list[torch.Tensor], n: int, fill: int = 0) -> torch.Tensor:
    out = torch.full((len(seqs), n), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


@pytest.mark.parametrize("length,ratio,expected", [(1, 0.5, 1), (16, 0.5, 8), (15, 0.5, 8), (10, 0.3, 3),
                                                    (128, 72 / 128, 72), (7, 1 / 3, 3), (0, 0.5, 0), (5, 0.01, 1)])
def test_latent_length_is_exact_ceiling(length, ratio, expected):
    assert latent_length(length, ratio) == expected


@pytest.mark.parametrize("reducer,resize_init", [("attention", "pool"), ("attention", "random"),
                                                  *[(r, "pool") for r in REDUCERS if r != "attention"]])
def test_sample_alone_equals_sample_in_padded_batch(reducer, resize_init):
    model = build_model(tiny_config(resize_init=resize_init, reducer=reducer), seed=1).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 50, (n,), generator=g) for n in (5, 16, 1, 11)]
    batch = _pad(seqs, 16, fill=7)
    with torch.no_grad():
        out_b, z_b, m_b = model(batch, torch.tensor([len(s) for s in seqs]))
        for i, s in enumerate(seqs):
            out_1, z_1, m_1 = model(s[None], torch.tensor([len(s)]))
            m = int(m_1[0])
            assert int(m_b[i]) == m == latent_length(len(s), 0.5)
            torch.testing.assert_close(z_b[i, :m], z_1[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(out_b[i, : len(s)], out_1[0], atol=1e-5, rtol=0)
            assert torch.all(z_b[i, m:] == 0), "padded latent rows must be exactly zero"


@pytest.mark.parametrize("reducer", REDUCERS)
def test_padded_values_change_nothing(reducer):
    tiny_model = build_model(tiny_config(reducer=reducer), seed=0).eval()
    seqs = [torch.arange(1, 10), torch.arange(3, 19)]
    lengths = torch.tensor([9, 16])
    with torch.no_grad():
        a = tiny_model(_pad(seqs, 16, fill=0), lengths)
        b = tiny_model(_pad(seqs, 16, fill=42), lengths)
    for x, y in zip(a, b):
        assert torch.equal(x[0, :9] if x.dim() > 1 else x, y[0, :9] if y.dim() > 1 else y)
    assert torch.equal(a[1], b[1])  # latents identical, padding included


@pytest.mark.parametrize("reducer", REDUCERS)
def test_no_gradient_reaches_padded_positions(reducer):
    model = build_model(tiny_config(vocab_size=0, feature_dim=3, reducer=reducer), seed=0).train()
    x = torch.randn(2, 16, 3, requires_grad=True)
    lengths = torch.tensor([6, 16])
    out, z, _ = model(x, lengths)
    (out.square().sum() + z.sum()).backward()
    assert torch.all(x.grad[0, 6:] == 0)
    assert x.grad[0, :6].abs().sum() > 0 and x.grad[1].abs().sum() > 0


@pytest.mark.parametrize("reducer", REDUCERS)
def test_length_one_and_fully_padded_rows_give_no_nan(reducer):
    tiny_model = build_model(tiny_config(reducer=reducer), seed=0).eval()
    batch = torch.randint(1, 50, (3, 16))
    lengths = torch.tensor([1, 0, 16])
    with torch.no_grad():
        out, z, m = tiny_model(batch, lengths)
    assert torch.isfinite(out).all() and torch.isfinite(z).all()
    assert m.tolist() == [1, 0, 8]
    assert torch.all(z[1] == 0)


def test_fully_padded_row_has_no_nan_in_training_mode():
    model = build_model(tiny_config(dropout=0.1), seed=0).train()
    out, z, _ = model(torch.randint(1, 50, (2, 8)), torch.tensor([0, 8]))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_any_length_up_to_n_max_is_accepted_and_longer_is_refused(tiny_model):
    with torch.no_grad():
        for n in range(1, 17):
            out, z, m = tiny_model(torch.randint(1, 50, (1, n)), torch.tensor([n]))
            assert out.shape == (1, n, 50) and z.shape == (1, latent_length(n, 0.5), 32)
    with pytest.raises(InputError, match="longer than this model's n_max=16"):
        tiny_model(torch.randint(1, 50, (1, 17)), torch.tensor([17]))


def test_latent_dim_projection_shapes():
    model = build_model(tiny_config(latent_dim=8, ratio=0.25), seed=0).eval()
    with torch.no_grad():
        out, z, m = model(torch.randint(1, 50, (2, 16)), torch.tensor([16, 13]))
    assert z.shape == (2, 4, 8) and m.tolist() == [4, 4] and out.shape == (2, 16, 50)


def test_decode_refuses_latent_lengths_that_do_not_match(tiny_model):
    with torch.no_grad():
        z, m = tiny_model.encode(torch.randint(1, 50, (1, 10)), torch.tensor([10]))
        with pytest.raises(InputError, match="latent lengths"):
            tiny_model.decode(z, m, torch.tensor([16]))
