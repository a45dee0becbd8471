"""Gates every registered attention kernel, position scheme, resize and stage layout must pass.

Parametrised over the registries, so a new kernel or scheme inherits every test: a sample alone equals the
same sample in a padded batch, padded values (NaN included) change nothing and receive no gradient,
lengths 0 and 1 give no NaN, the kernels reduce to full attention in their limiting case, a seed fixes
everything, and an unsupported combination is refused when the model is built.
"""

from __future__ import annotations

import pytest
import torch

from seqcompress.errors import InputError
from seqcompress.kernels import KERNELS, check_combination, make_kernel
from seqcompress.lengths import Geometry, latent_positions
from seqcompress.model import build_model
from seqcompress.positions import POSITIONS, make_positions
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

# Small options so that every mechanism really is restricted at n = 16.
SMALL = {"window": 2, "rank": 4, "hash_buckets": 4, "hash_rounds": 2, "chunk": 4, "clusters": 3}


def _variants() -> list[dict]:
    out = []
    for kernel, cls in KERNELS.items():
        for scheme in POSITIONS:
            if check_combination(kernel, POSITIONS[scheme], resizing=True) is None:
                opts = {k: SMALL[k] for k in cls.capabilities.options if k in SMALL}
                out.append({"attention": kernel, "positions": scheme, "options": opts})
    out.append({"attention": "routing", "positions": "alibi", "options": {"clusters": 3, "router": "learned"}})
    out.append({"resize": "relative", "positions": "alibi"})
    out.append({"resize": "relative", "positions": "t5", "attention": "local", "options": {"window": 2, "band": 2.0}})
    out.append({"stages": [0.5, 0.5], "ratio": 0.25})
    out.append({"attention": "local", "options": {"window": 0, "scope": "resizing"}, "positions": "t5"})
    out.append({"stages": [0.75, 2 / 3], "ratio": 0.5, "positions": "rope", "resize": "relative"})
    return out


VARIANTS = _variants()
IDS = ["-".join(f"{k}={v}" for k, v in sorted(v.items()) if k != "options") for v in VARIANTS]


def _model(variant: dict, seed: int = 1, **overrides):
    model = build_model(tiny_config(**{**variant, **overrides}), seed=seed)
    # Make learned tables non-trivial so that a bias or a profile that is silently ignored shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("table", "profile")):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _pad(seqs, n, fill=0):
    out = torch.full((len(seqs), n), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_batched_equals_alone(variant):
    model = _model(variant).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 50, (n,), generator=g) for n in (5, 16, 1, 11)]
    with torch.no_grad():
        out_b, z_b, m_b = model(_pad(seqs, 16, fill=7), torch.tensor([len(s) for s in seqs]))
        for i, s in enumerate(seqs):
            out_1, z_1, m_1 = model(s[None], torch.tensor([len(s)]))
            m = int(m_1[0])
            assert int(m_b[i]) == m
            torch.testing.assert_close(z_b[i, :m], z_1[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(out_b[i, : len(s)], out_1[0], atol=1e-5, rtol=0)
            assert torch.all(z_b[i, m:] == 0)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_padded_values_nan_included_change_nothing_and_get_no_gradient(variant):
    model = _model(variant, vocab_size=0, feature_dim=3).train()
    x = torch.randn(2, 16, 3)
    lengths = torch.tensor([6, 16])
    results = []
    for fill in (0.0, float("nan")):
        xi = x.clone()
        xi[0, 6:] = fill
        xi.requires_grad_(True)
        model.zero_grad()
        out, z, _ = model(xi, lengths)
        (out[0, :6].square().sum() + out[1].square().sum() + z.sum()).backward()
        assert torch.all(xi.grad[0, 6:] == 0)
        assert xi.grad[0, :6].abs().sum() > 0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        results.append((out[0, :6].detach(), out[1].detach(), z.detach()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_lengths_zero_and_one_give_no_nan(variant):
    model = _model(variant).train()
    out, z, m = model(torch.randint(1, 50, (3, 16)), torch.tensor([1, 0, 16]))
    (out.sum() + z.sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(z).all()
    assert m[1] == 0 and torch.all(z[1] == 0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_a_seed_fixes_the_model_and_its_output(variant):
    x, lengths = torch.randint(1, 50, (2, 16)), torch.tensor([16, 9])
    with torch.no_grad():
        a = _model(variant, seed=4).eval()(x, lengths)[0]
        b = _model(variant, seed=4).eval()(x, lengths)[0]
        c = _model(variant, seed=5).eval()(x, lengths)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def _kernel_inputs(kind: str, b=2, h=2, m=6, n=12, d=8):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(b, h, size, d, generator=g) for size in (m, n, n))
    key_mask = torch.arange(n)[None, :] < torch.tensor([[n], [n - 3]])
    geometry = Geometry(kind, m, n, m / n)
    q_pos = latent_positions(m, m / n) if kind == "reduce" else torch.arange(m).float()
    return q, k, v, key_mask, geometry, q_pos, torch.arange(n).float()


@pytest.mark.parametrize("scheme", ["none", "alibi", "t5"])
@pytest.mark.parametrize("kind", ["reduce", "self"])
def test_local_with_a_window_as_wide_as_the_input_is_full_attention(kind, scheme):
    m = 6 if kind == "reduce" else 12
    q, k, v, key_mask, geometry, q_pos, k_pos = _kernel_inputs(kind, m=m)
    positions = make_positions(scheme, 2, 8, {})
    if scheme == "t5":
        torch.nn.init.normal_(positions.table)
    spans = geometry.key_spans(m)
    args = dict(q_pos=q_pos, k_pos=k_pos, key_mask=key_mask, q_spans=spans, positions=positions)
    full, _ = make_kernel("full", geometry, 2, 8, 0.0, {})(q, k, v, **args)
    local, _ = make_kernel("local", geometry, 2, 8, 0.0, {"window": 12})(q, k, v, **args)
    narrow, _ = make_kernel("local", geometry, 2, 8, 0.0, {"window": 1})(q, k, v, **args)
    torch.testing.assert_close(local, full, atol=1e-5, rtol=0)
    assert not torch.allclose(narrow, full, atol=1e-3)


@pytest.mark.parametrize("scheme", ["none", "alibi"])
def test_lowrank_with_rank_n_and_identity_projection_is_full_attention(scheme):
    q, k, v, key_mask, geometry, q_pos, k_pos = _kernel_inputs("reduce")
    positions = make_positions(scheme, 2, 8, {})
    args = dict(q_pos=q_pos, k_pos=k_pos, key_mask=key_mask, q_spans=geometry.key_spans(6), positions=positions)
    lowrank = make_kernel("lowrank", geometry, 2, 8, 0.0, {"rank": 12})
    assert torch.equal(lowrank.e_key, torch.eye(12)) and torch.equal(lowrank.e_value, torch.eye(12))
    full, _ = make_kernel("full", geometry, 2, 8, 0.0, {})(q, k, v, **args)
    torch.testing.assert_close(lowrank(q, k, v, **args)[0], full, atol=1e-5, rtol=0)
    small, _ = make_kernel("lowrank", geometry, 2, 8, 0.0, {"rank": 3})(q, k, v, **args)
    assert not torch.allclose(small, full, atol=1e-3)


def _limit_case(kind: str, scheme: str):
    """Kernel inputs with a padded row, a position scheme (a random T5 table) and full attention's output."""
    m = 6 if kind == "reduce" else 12
    q, k, v, key_mask, geometry, q_pos, k_pos = _kernel_inputs(kind, m=m)
    positions = make_positions(scheme, 2, 8, {})
    if scheme == "t5":
        torch.nn.init.normal_(positions.table)
    args = dict(q_pos=q_pos, k_pos=k_pos, key_mask=key_mask, q_spans=geometry.key_spans(m), positions=positions)
    full, _ = make_kernel("full", geometry, 2, 8, 0.0, {})(q, k, v, **args)
    return (q, k, v), geometry, args, full


@pytest.mark.parametrize("scheme", ["none", "alibi", "t5", "rope"])
@pytest.mark.parametrize("kind", ["reduce", "self"])
def test_lsh_with_one_bucket_and_a_chunk_as_long_as_the_input_is_full_attention(kind, scheme):
    qkv, geometry, args, full = _limit_case(kind, scheme)
    one = make_kernel("lsh", geometry, 2, 8, 0.0, {"hash_buckets": 1, "hash_rounds": 2, "chunk": 24})
    torch.testing.assert_close(one(*qkv, **args)[0], full, atol=1e-5, rtol=0)
    hashed, _ = make_kernel("lsh", geometry, 2, 8, 0.0, {"hash_buckets": 4, "hash_rounds": 1, "chunk": 2})(*qkv, **args)
    assert not torch.allclose(hashed, full, atol=1e-3)


def test_lsh_queries_and_keys_share_one_hashing_and_a_query_sees_two_chunks_only():
    """A query equal to a key lands in that key's bucket (one rotation for both); with chunks of c items a
    query scores at most 2c keys, and with everything in one chunk it finds its own key."""
    geometry = Geometry("reduce", 4, 16, 0.25)
    k = torch.randn(1, 1, 16, 16)
    q = 50 * k[:, :, [3, 5, 9, 12]]  # sharp: each query is its key, scaled
    args = dict(q_pos=latent_positions(4, 0.25), k_pos=torch.arange(16.0), key_mask=None,
                q_spans=geometry.key_spans(4), positions=None)
    narrow = make_kernel("lsh", geometry, 1, 16, 0.0, {"hash_buckets": 8, "hash_rounds": 1, "chunk": 2})
    assert torch.equal(narrow._bucket(q, 0), narrow._bucket(k, 0)[:, :, [3, 5, 9, 12]])
    weights, _ = narrow(q, k, torch.eye(16)[None, None], **args)  # v = one-hot: the output is the weights
    assert ((weights[0, 0] > 1e-6).sum(dim=-1) <= 4).all()
    wide = make_kernel("lsh", geometry, 1, 16, 0.0, {"hash_buckets": 8, "hash_rounds": 1, "chunk": 20})
    wide.rotations.copy_(narrow.rotations)
    weights, _ = wide(q, k, torch.eye(16)[None, None], **args)
    assert (weights[0, 0].argmax(dim=-1) == torch.tensor([3, 5, 9, 12])).all()


@pytest.mark.parametrize("scheme", ["none", "alibi", "t5"])
@pytest.mark.parametrize("kind", ["reduce", "self"])
def test_routing_with_one_cluster_is_full_attention(kind, scheme):
    qkv, geometry, args, full = _limit_case(kind, scheme)
    one = make_kernel("routing", geometry, 2, 8, 0.0, {"clusters": 1, "chunk": 24, "router": "kmeans",
                                                       "centroid_decay": 0.9, "aux_weight": 0.01})
    torch.testing.assert_close(one(*qkv, **args)[0], full, atol=1e-5, rtol=0)
    many, _ = make_kernel("routing", geometry, 2, 8, 0.0, {"clusters": 4, "chunk": 3, "router": "kmeans",
                                                           "centroid_decay": 0.9, "aux_weight": 0.01})(*qkv, **args)
    assert torch.isfinite(many).all() and not torch.allclose(many, full, atol=1e-3)


def _routing_options(**changes):
    return {"clusters": 4, "chunk": 4, "router": "kmeans", "centroid_decay": 0.5, "aux_weight": 0.1, **changes}


def test_routing_centroids_learn_after_each_step_and_are_saved_exactly(tmp_path):
    from seqcompress.model import load_model
    from seqcompress.options import TrainOptions
    from seqcompress.train import train
    from seqcompress.domain import TokenObjective

    model = build_model(tiny_config(attention="routing", options=_routing_options()), seed=0)
    before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("centroids")}
    windows = [torch.randint(1, 50, (16,), generator=torch.Generator().manual_seed(i)) for i in range(24)]
    train(model, TokenObjective(), windows, TrainOptions(epochs=None, max_steps=3, batch_size=8, val_fraction=0.1))
    after = {n: b for n, b in model.named_buffers() if n.endswith("centroids")}
    assert before.keys() == after.keys() and len(after) == 4  # one kernel per block, 2 layers x 2 stacks
    assert all(not torch.equal(before[n], after[n]) for n in after)  # moved toward their keys
    assert all(torch.allclose(c.norm(dim=-1), torch.ones(())) for c in after.values())  # still unit vectors
    model.save(tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert all(torch.equal(dict(loaded.named_buffers())[n], after[n]) for n in after)
    x = torch.randint(1, 50, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([16, 7]))[0], model.eval()(x, torch.tensor([16, 7]))[0])


@pytest.mark.parametrize("router", ["kmeans", "learned"])
def test_routing_aux_loss_reaches_the_training_loop_and_trains_the_router(router):
    model = build_model(tiny_config(attention="routing", options=_routing_options(router=router)), seed=0).train()
    out, _, _ = model(torch.randint(1, 50, (2, 16)), torch.tensor([16, 9]))
    aux = model.aux_loss()
    assert aux is not None and aux.dim() == 0 and torch.isfinite(aux) and aux > 0
    aux.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert grads  # the auxiliary term has gradients (to the keys' projections, and to W_r when learned)
    if router == "learned":
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
                   if n.endswith("route"))
    model.eval()
    model(torch.randint(1, 50, (2, 16)), torch.tensor([16, 9]))
    assert model.aux_loss() is None  # evaluation adds nothing


def test_routing_empty_clusters_and_queries_without_keys_give_finite_outputs():
    """Most of 16 clusters hold nothing at n = 6; a row whose keys are all padding gets zero, not NaN."""
    geometry = Geometry("reduce", 3, 6, 0.5)
    kernel = make_kernel("routing", geometry, 2, 4, 0.0, _routing_options(clusters=16, chunk=2))
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    key_mask = torch.tensor([[True] * 6, [False] * 6])
    out, _ = kernel(q, k, v, q_pos=latent_positions(3, 0.5), k_pos=torch.arange(6.0), key_mask=key_mask,
                    q_spans=geometry.key_spans(3), positions=None)
    assert torch.isfinite(out).all() and torch.all(out[1] == 0) and out[0].abs().sum() > 0


def test_local_reducing_query_sees_only_its_segment_and_window():
    """Latent i of a 1/4 reduction with window 1 reads inputs 4i - 1 .. 4i + 4 and nothing else."""
    geometry = Geometry("reduce", 4, 16, 0.25)
    kernel = make_kernel("local", geometry, 1, 4, 0.0, {"window": 1})
    q = torch.randn(1, 1, 4, 4)
    k = torch.randn(1, 1, 16, 4)
    v = torch.zeros(1, 1, 16, 4, requires_grad=True)
    out, _ = kernel(q, k, v, q_pos=latent_positions(4, 0.25), k_pos=torch.arange(16.0), key_mask=None,
                    q_spans=geometry.key_spans(4), positions=None)
    out[0, 0, 2].sum().backward()
    reached = (v.grad[0, 0].abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert reached == [7, 8, 9, 10, 11, 12]


@pytest.mark.parametrize("config,message", [
    (dict(attention="lowrank", positions="rope"), "cannot use 'rope' positions"),
    (dict(attention="local", options={"rank": 3}), "option(s) rank not used by attention 'local'"),
    (dict(attention="nope"), "attention must be one of"),
    (dict(positions="sinusoid"), "positions must be one of"),
    (dict(stages=[0.5, 0.5], ratio=0.5), "multiply to 0.25, not the ratio 0.5"),
    (dict(resize="relative", reducer="linformer"), "has no W_S"),
])
def test_unsupported_combinations_are_refused_when_the_config_is_built(config, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(**config)


def test_scope_resizing_keeps_full_attention_in_the_self_attention_blocks():
    model = build_model(tiny_config(attention="lowrank", options={"rank": 4, "scope": "resizing"}))
    kernels = [type(b.attn.kernel).__name__ for b in [*model.encoder, *model.decoder]]
    assert kernels == ["LowRankAttention", "FullAttention", "LowRankAttention", "FullAttention"]
    with pytest.raises(InputError, match="scope must be"):
        tiny_config(attention="local", options={"scope": "some"})


def test_bad_option_values_are_refused_when_the_model_is_built():
    with pytest.raises(InputError, match="window >= 0"):
        build_model(tiny_config(attention="local", options={"window": -1}))


def test_relative_model_reduces_windows_longer_than_it_was_built_for():
    model = _model({"resize": "relative", "positions": "alibi", "attention": "local", "options": {"window": 2}}).eval()
    assert model.config.max_length is None
    with torch.no_grad():
        out, z, m = model(torch.randint(1, 50, (1, 100)), torch.tensor([100]))
    assert out.shape == (1, 100, 50) and int(m[0]) == 50 and torch.isfinite(out).all()
    bounded = build_model(tiny_config(positions="alibi")).eval()  # absolute W_S: bounded by n_max
    with pytest.raises(InputError, match="n_max=16"):
        bounded(torch.randint(1, 50, (1, 17)), torch.tensor([17]))


def test_stages_compose_lengths_and_build_one_resizing_block_per_stage():
    model = build_model(tiny_config(stages=[0.5, 0.5], ratio=0.25)).eval()
    assert model.config.stage_lengths(16) == [16, 8, 4] and model.config.m_max == 4
    assert [type(b.resize).__name__ if b.resize is not None else None for b in model.encoder] == \
        ["ResizeMatrix", "ResizeMatrix", None]
    assert model.encoder[1].resize.weight.shape == (4, 8) and model.decoder[0].resize.weight.shape == (8, 4)
    with torch.no_grad():
        _, z, m = model(torch.randint(1, 50, (2, 16)), torch.tensor([16, 5]))
    assert m.tolist() == [4, 2] and z.shape == (2, 4, 32)


def test_every_registered_kernel_and_scheme_is_in_the_capability_tables():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "attention.md").read_text(encoding="utf-8")
    for name in [*KERNELS, *POSITIONS]:
        assert f"| `{name}`" in text, f"docs/attention.md has no capability row for {name!r}"
