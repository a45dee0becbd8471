"""Model persistence: safetensors + JSON, fingerprint, clear errors for a directory that is not a model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqcompress.classical import principal_axes
from seqcompress.errors import InputError, ModelFileError
from seqcompress.model import ModelConfig, build_model, load_model, read_model_meta
from tests.conftest import tiny_config


def test_save_load_round_trip_is_exact(tmp_path, tiny_model):
    tiny_model.save(tmp_path / "m", domain={"name": "text"})
    loaded, meta = load_model(tmp_path / "m")
    assert meta["fingerprint"] == tiny_model.fingerprint(domain={"name": "text"}) == loaded.fingerprint(domain=meta["domain"])
    assert meta["domain"] == {"name": "text"} and meta["fingerprint_scheme"] == 3
    x = torch.randint(1, 50, (2, 16))
    lengths = torch.tensor([16, 9])
    with torch.no_grad():
        assert torch.equal(tiny_model(x, lengths)[0], loaded(x, lengths)[0])
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_fingerprint_changes_with_any_weight_or_config(tiny_model):
    before = tiny_model.fingerprint()
    with torch.no_grad():
        tiny_model.encoder[0].resize.weight[0, 0] += 1e-3
    assert tiny_model.fingerprint() != before
    a = build_model(tiny_config(), seed=0).fingerprint()
    assert a == build_model(tiny_config(), seed=0).fingerprint()
    assert a != build_model(tiny_config(dropout=0.1), seed=0).fingerprint()


def test_altered_weights_are_detected(tmp_path, tiny_model):
    tiny_model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["fingerprint"] = "0" * 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="do not match the fingerprint"):
        load_model(tmp_path / "m")


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelFileError, match="not a model directory"):
        read_model_meta(tmp_path / "missing")
    with pytest.raises(ModelFileError, match="missing"):
        read_model_meta(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_model_meta(tmp_path)


def test_corrupt_weights_file_is_a_model_file_error(tmp_path, tiny_model):
    tiny_model.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("bad", [dict(ratio=0), dict(ratio=1.5), dict(ratio=-0.1), dict(n_max=0),
                                 dict(vocab_size=0), dict(positions="sinusoid"), dict(layers=0)])
def test_bad_config_is_refused(bad):
    with pytest.raises(InputError):
        tiny_config(**bad)


def test_m_max_follows_ratio():
    assert ModelConfig(n_max=128, ratio=72 / 128, vocab_size=10).m_max == 72
    assert ModelConfig(n_max=512, ratio=0.25, vocab_size=10).m_max == 128


def _hash(fields: dict, model) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def test_fingerprint_scheme_1_is_the_format_1_hash(tiny_model):
    from dataclasses import asdict

    old_fields = {k: v for k, v in asdict(tiny_model.config).items()
                  if k not in ("reducer", "attention", "resize", "stages", "options", "memory")}
    assert tiny_model.fingerprint(1) == _hash(old_fields, tiny_model)
    assert build_model(tiny_config(reducer="perceiver")).fingerprint(1) != tiny_model.fingerprint(1)


def test_fingerprint_scheme_2_hashes_only_fields_away_from_their_neutral_value(tiny_model):
    from dataclasses import fields as dc_fields

    from seqcompress.model import FINGERPRINT_NEUTRAL

    # Every field has a frozen neutral value, so adding a field never changes an older model's fingerprint.
    assert {f.name for f in dc_fields(ModelConfig)} == set(FINGERPRINT_NEUTRAL)
    expected = {"fingerprint_scheme": 2, "n_max": 16, "d_model": 32, "ffn_dim": 64, "latent_dim": 32, "vocab_size": 50}
    assert tiny_model.fingerprint(2) == _hash(expected, tiny_model)
    local = build_model(tiny_config(attention="local", options={"window": 2}), seed=0)
    assert local.fingerprint(2) == _hash({**expected, "attention": "local", "options": {"window": 2, "scope": "all"}}, local)


def test_fingerprint_scheme_3_covers_the_domain_state_but_not_the_training_summary(tiny_model):
    expected = {"fingerprint_scheme": 3, "n_max": 16, "d_model": 32, "ffn_dim": 64, "latent_dim": 32, "vocab_size": 50,
                "domain": {"name": "audio", "level": 0.5}}
    domain = {"name": "audio", "level": 0.5}
    assert tiny_model.fingerprint(domain=domain) == _hash(expected, tiny_model)
    assert tiny_model.fingerprint(domain={**domain, "training": {"steps": 3}}) == tiny_model.fingerprint(domain=domain)
    assert tiny_model.fingerprint(domain={**domain, "level": 50.0}) != tiny_model.fingerprint(domain=domain)


@pytest.mark.parametrize("reducer", ["perceiver", "linformer", "meanpool"])
def test_baseline_reducers_save_and_load_exactly(tmp_path, reducer):
    model = build_model(tiny_config(reducer=reducer), seed=3).eval()
    model.save(tmp_path / "m")
    loaded, meta = load_model(tmp_path / "m")
    assert meta["model"]["reducer"] == reducer
    x = torch.randint(1, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([16, 5]))[0], model(x, torch.tensor([16, 5]))[0],
                                   atol=0, rtol=0)


def test_meanpool_learns_nothing_about_the_length_change():
    model = build_model(tiny_config(reducer="meanpool"), seed=0)
    pool = model.encoder[0].resize.weight
    assert not pool.requires_grad and "encoder.0.resize.weight" in model.state_dict()
    assert torch.allclose(pool.sum(dim=1), torch.ones(len(pool)))  # each latent averages its segment


@pytest.mark.parametrize("changes", [
    {}, dict(n_max=512, ratio=0.25), dict(stages=[0.5, 0.5], ratio=0.25), dict(positions="rope"),
    dict(positions="t5"), dict(positions="none", resize="relative"), dict(attention="lowrank", options={"rank": 8}),
    dict(attention="local", options={"window": 4}), dict(reducer="perceiver"), dict(reducer="linformer"),
    dict(reducer="meanpool"), dict(vocab_size=0, feature_dim=24), dict(latent_dim=8), dict(layers=3, ffn_dim=256),
    dict(vocab_size=30522, n_max=128, d_model=64, ffn_dim=256),
    dict(attention="lsh", options={"hash_buckets": 64, "hash_rounds": 4}),
    dict(attention="routing", options={"clusters": 64, "router": "learned"}),
])
def test_parameter_estimate_is_within_a_factor_of_two(changes):
    """load_model refuses a config whose estimate exceeds twice the weights file: the estimate must hold for
    every kind of model, or a real model would be refused (or a hostile one allowed twice its size)."""
    from seqcompress.model import parameter_estimate

    model = build_model(tiny_config(**changes))
    saved = sum(t.numel() for t in model.state_dict().values())  # what the weights file holds, buffers included
    assert 0.5 <= parameter_estimate(model.config) / saved <= 2.0


# ---- resize_init "dct": the model starts as the truncated DCT ----------------------------------------------
def _truncated_dct(x: torch.Tensor, keep: int) -> torch.Tensor:
    """(L, F) -> (L, F): each feature's `keep` lowest orthonormal DCT-II coefficients, inverted (float64)."""
    n = len(x)
    j = torch.arange(n, dtype=torch.float64)
    basis = torch.stack([torch.cos(torch.pi * k * (j + 0.5) / n) for k in range(n)]) * (2.0 / n) ** 0.5
    basis[0] /= 2**0.5
    coefficients = basis @ x.double()
    coefficients[keep:] = 0
    return basis.T @ coefficients


@pytest.mark.parametrize("ratio", [0.25, 0.75, 1.0])
def test_a_fresh_dct_model_is_the_truncated_dct_of_every_window_length(ratio):
    config = tiny_config(vocab_size=0, feature_dim=4, latent_dim=2, n_max=32, ratio=ratio, resize_init="dct")
    model = build_model(config, seed=0).eval()
    lengths = torch.tensor([32, 19, 5, 3, 1])  # a full window, and the shorter last windows of files
    x = torch.randn(len(lengths), 32, 4)
    with torch.no_grad():
        out, latents, latent_lengths = model(x, lengths)
    assert latent_lengths.tolist() == [config.latent_length(n) for n in lengths.tolist()]
    with torch.no_grad():  # a batch of full windows alone takes the table as it is
        alone, _, _ = model(x[:1], lengths[:1])
    assert torch.allclose(alone, out[:1], atol=1e-6)
    for b, n in enumerate(lengths.tolist()):
        expected = _truncated_dct(x[b, :n], latent_lengths[b].item())
        # the first latent_dim features are stored and rebuilt; the others are not kept
        assert torch.allclose(out[b, :n, :2].double(), expected[:, :2], atol=1e-5), n
        assert torch.equal(out[b, :n, 2:], torch.zeros(n, 2))


def test_a_dct_model_trains_from_the_dct_and_saves_and_loads(tmp_path):
    config = tiny_config(vocab_size=0, feature_dim=2, latent_dim=1, n_max=16, ratio=0.5, resize_init="dct")
    model = build_model(config, seed=0)
    start = model.fingerprint()
    x, lengths = torch.randn(4, 16, 2), torch.full((4,), 16)
    loss = model(x, lengths)[0].square().mean()
    loss.backward()
    assert model.decoder[0].ffn[2].weight.grad.abs().sum() > 0  # the zeroed branches get gradients
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert model.fingerprint() != start
    model.save(tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert torch.equal(loaded(x, lengths)[0], model.eval()(x, lengths)[0])


def test_a_dct_start_in_a_feature_basis_keeps_the_leading_basis_coefficients():
    config = tiny_config(vocab_size=0, feature_dim=4, latent_dim=2, n_max=8, ratio=1.0, resize_init="dct")
    basis, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))  # orthonormal columns
    basis = basis.T  # rows: the basis vectors
    model = build_model(config, seed=0, feature_basis=basis).eval()
    x = torch.randn(3, 8, 4)
    with torch.no_grad():
        out, _, _ = model(x, torch.full((3,), 8))
    # ratio 1 keeps every position: each symbol keeps its first two coordinates in the basis, nothing else
    expected = (x.double() @ basis[:2].T) @ basis[:2]
    assert torch.allclose(out.double(), expected, atol=1e-5)
    identity = build_model(config, seed=0).eval()
    with torch.no_grad():
        plain, _, _ = identity(x, torch.full((3,), 8))
    assert torch.allclose(plain[..., :2], x[..., :2], atol=1e-5) and not torch.allclose(plain, out, atol=1e-3)


def test_principal_axes_are_orthonormal_rows_largest_first_and_read_around_missing_values():
    g = torch.Generator().manual_seed(0)
    direction = torch.tensor([3.0, 4.0, 0.0]) / 5
    strong = torch.randn(400, 1, generator=g, dtype=torch.float64) * 10 * direction  # along `direction`
    weak = torch.randn(400, 3, generator=g, dtype=torch.float64) * 0.1
    windows = [(strong + weak)[:250], (strong + weak)[250:], torch.full((5, 3), float("nan")), torch.zeros(0, 3)]
    axes = principal_axes(w.numpy() for w in windows)
    assert axes.shape == (3, 3) and np.allclose(axes @ axes.T, np.eye(3), atol=1e-12)
    assert np.allclose(axes[0], direction.numpy(), atol=0.01)  # sign fixed: largest entry positive
    moment = ((strong + weak).T @ (strong + weak) / 400).numpy()
    spread = [float(a @ moment @ a) for a in axes]
    assert spread == sorted(spread, reverse=True) and spread[0] > 100 * spread[1]
    # Gaps in two of every three rows (the first feature missing in one, the second in the other) are read
    # around, not as zeros: the same leading axis. As zeros, the products of the two shrink more than their
    # squares, and the axis turns away from the direction.
    gappy = (strong + weak).clone()
    gappy[::3, 0] = float("nan")
    gappy[1::3, 1] = float("nan")
    assert np.allclose(principal_axes([gappy.numpy()])[0], direction.numpy(), atol=0.02)
    assert not np.allclose(principal_axes([torch.nan_to_num(gappy).numpy()])[0], direction.numpy(), atol=0.05)
    assert principal_axes([torch.full((2, 3), float("nan")).numpy()]) is None and principal_axes([]) is None


@pytest.mark.parametrize("basis, message", [
    (torch.eye(3), "4 x 4"),
    (2 * torch.eye(4), "orthonormal"),
])
def test_a_feature_basis_that_is_not_an_orthonormal_square_is_refused(basis, message):
    config = tiny_config(vocab_size=0, feature_dim=4, latent_dim=2, n_max=8, ratio=0.5, resize_init="dct")
    with pytest.raises(InputError, match=message):
        build_model(config, seed=0, feature_basis=basis)


@pytest.mark.parametrize("changes, message", [
    ({"vocab_size": 50}, "token inputs"),
    ({"feature_dim": 2, "vocab_size": 0, "resize": "relative"}, "absolute"),
    ({"feature_dim": 2, "vocab_size": 0, "stages": [0.5, 1.0]}, "one stage"),
    ({"feature_dim": 64, "vocab_size": 0}, "d_model"),
])
@pytest.mark.parametrize("start", ["dct", "pca"])
def test_dct_start_is_refused_where_no_truncated_dct_can_be_built(changes, message, start):
    with pytest.raises(InputError, match=message):
        tiny_config(**{"resize_init": start, **changes})
