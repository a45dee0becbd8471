"""Memory and recurrence across windows (`--memory`, seqcompress/memory.py): the gates of every mechanism, and
what recurrence itself must guarantee.

- window by window, carrying memory from call to call, equals the whole record in one call (layer by layer);
- a block with memory equals the same block run over the previous window and this one together (the memory
  rows sit where they really are: relative positions see the true distance);
- a record start or another stream isolates a window; no gradient reaches an earlier window;
- padding, lengths 0 and 1, a seed, and the limiting cases of lsh and routing, as for every kernel;
- codecs mark records and streams, the .sqz stores them, decode replays them, and a long FASTA file round
  trips from the CLI with its record structure exact.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from seqcompress.attention import Attention, Block, Layout
from seqcompress.compress import decode, encode
from seqcompress.errors import InputError
from seqcompress.kernels import make_kernel
from seqcompress.lengths import Geometry
from seqcompress.memory import Link, Memory, MemoryRows, file_links, run_links
from seqcompress.model import build_model
from seqcompress.positions import make_positions
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

N = 8
SCHEMES = ["t5", "alibi", "rope"]
KERNELS = {"full": {}, "lsh": {"hash_buckets": 4, "chunk": 4}, "routing": {"clusters": 3, "chunk": 4}}


def _model(attention="full", positions="t5", memory=4 * N, seed=1, **overrides):
    config = tiny_config(n_max=N, attention=attention, positions=positions, memory=memory,
                         options=dict(KERNELS.get(attention, {})), **overrides)
    model = build_model(config, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("table"):
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _windows(count=5, last=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 50, (count, N), generator=g)
    lengths = torch.tensor([N] * (count - 1) + [last])
    return x, lengths


def _one_call(model, x, lengths, links):
    with torch.no_grad():
        return model(x, lengths, links)[0]


def _window_by_window(model, x, lengths, links):
    """Each window alone, the encoder's and the decoder's memory carried from call to call."""
    encoder, decoder = model.memory(), model.memory()
    outs = []
    with torch.no_grad():
        for i in range(len(x)):
            n = int(lengths[i])
            z, m = model.encode(x[i : i + 1, :n], lengths[i : i + 1], encoder.batch(links[i : i + 1], [n]))
            out = model.decode(z, m, lengths[i : i + 1], memory=decoder.batch(links[i : i + 1], [n]))
            outs.append(F.pad(out, (0, 0, 0, x.shape[1] - n)))
    return torch.cat(outs)


@pytest.mark.parametrize("positions", SCHEMES)
@pytest.mark.parametrize("attention", list(KERNELS))
def test_window_by_window_equals_the_record_in_one_call(attention, positions):
    model = _model(attention, positions)
    x, lengths = _windows()
    links = [Link(0, True)] + [Link(0, False)] * 4
    together = _one_call(model, x, lengths, links)
    torch.testing.assert_close(_window_by_window(model, x, lengths, links), together, atol=2e-5, rtol=0)
    alone = _one_call(model, x, lengths, None)
    assert not torch.allclose(together[1:], alone[1:], atol=1e-3)  # memory is used
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=0)  # the first window has none


@pytest.mark.parametrize("positions", ["none", "t5", "alibi", "rope"])
def test_a_block_with_memory_equals_the_block_over_both_windows(positions):
    """Memory rows are keys at their true places: a self-attention block over [previous window, window] gives,
    for the window's rows, what the block gives the window alone with the previous window as memory."""
    torch.manual_seed(0)
    d, heads = 16, 2
    scheme = make_positions(positions, heads, d // heads, {})
    if positions == "t5":
        torch.nn.init.normal_(scheme.table)
    block = Block(d, 32, Attention(d, heads, make_kernel("full", Geometry("self", 2 * N, 2 * N), heads, d // heads,
                                                         0.0, {})))
    prev, cur = torch.randn(2, N, d), torch.randn(2, N, d)

    def layout(n, memory=None):
        mask = torch.ones(2, n, dtype=torch.bool)
        pos = torch.arange(n).float()
        return Layout(mask, mask, True, pos, pos, Geometry("self", 0, 0).key_spans(n), scheme, memory)

    with torch.no_grad():
        both = block(torch.cat([prev, cur], 1), layout(2 * N))[:, N:]
        memory = MemoryRows(prev, torch.ones(2, N, dtype=torch.bool), torch.arange(N).float() - N)
        with_memory = block(cur, layout(N, memory))
    torch.testing.assert_close(with_memory, both, atol=1e-5, rtol=0)


def test_memory_rows_are_the_last_m_symbols_at_every_level():
    memory = Memory(span=12, n_max=N, ratios=[0.5])
    assert memory.full_rows == [N, 4] and memory.rows == [12, 6]
    # two windows back at level 0: the last 4 rows of the one before the previous, then all 8 of the previous
    torch.testing.assert_close(memory.positions(0, torch.device("cpu")), torch.arange(-12, 0).float())
    # latents sit at 2i + 0.5 in a window (ratio 0.5): the last 2 of two windows back, then the previous 4
    assert memory.positions(1, torch.device("cpu")).tolist() == [-11.5, -9.5, -7.5, -5.5, -3.5, -1.5]
    x = torch.arange(3 * N, dtype=torch.float32).view(3, N, 1)
    rows = memory.batch([Link(0, True), Link(0), Link(0)], [N, N, N]).read(0, 0, x)
    assert rows.mask[0].sum() == 0 and rows.mask[1].sum() == N and rows.mask[2].sum() == 12
    assert rows.states[2, :, 0].tolist() == list(range(4, 16))  # rows 4..7 of window 0, then window 1


def test_a_record_start_a_short_window_and_other_streams_isolate():
    model = _model()
    x, lengths = _windows(4, last=N)
    alone = _one_call(model, x, lengths, None)
    starts = _one_call(model, x, lengths, [Link(0, True)] * 4)
    torch.testing.assert_close(starts, alone, atol=1e-5, rtol=0)
    # interleaved streams: window 2 continues window 0 only, as if window 1 were not there
    mixed = _one_call(model, x, lengths, [Link(0, True), Link(1, True), Link(0), Link(1)])
    pair = _one_call(model, x[[0, 2]], lengths[[0, 2]], [Link(0, True), Link(0)])
    torch.testing.assert_close(mixed[2], pair[1], atol=1e-5, rtol=0)
    # carried from call to call: a stream the call does not touch keeps its memory
    links = [Link(0, True), Link(1, True), Link(0), Link(1)]
    torch.testing.assert_close(_window_by_window(model, x, lengths, links), mixed, atol=2e-5, rtol=0)
    # a window shorter than n_max ends the chain: the one after it starts afresh
    short = lengths.clone()
    short[1] = 5
    cut = _one_call(model, x, short, [Link(0, True), Link(0), Link(0), Link(0)])
    torch.testing.assert_close(cut[2], alone[2], atol=1e-5, rtol=0)


def test_streams_carried_at_once_are_capped():
    memory = Memory(span=N, n_max=N, ratios=[0.5])
    count = 1025
    batch = memory.batch([Link(i, True) for i in range(count)], [N] * count)
    batch.read(0, 0, torch.zeros(count, N, 1))
    with pytest.raises(InputError, match="more than 1,024 interleaved streams"):
        batch.close()


def test_no_gradient_reaches_an_earlier_window():
    model = build_model(tiny_config(n_max=N, vocab_size=0, feature_dim=3, memory=2 * N, positions="rope"),
                        seed=0).train()
    x = torch.randn(3, N, 3, requires_grad=True)
    out, _, _ = model(x, torch.tensor([N, N, N]), [Link(0, True), Link(0), Link(0)])
    out[2].square().sum().backward()
    assert torch.all(x.grad[:2] == 0) and x.grad[2].abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("attention", list(KERNELS))
def test_padding_changes_nothing_and_lengths_zero_and_one_give_no_nan(attention):
    model = _model(attention)
    x, lengths = _windows(3, last=N)
    links = [Link(0, True), Link(0), Link(0)]
    base = _one_call(model, x, lengths, links)
    # the same record next to a short window of another stream, padded with NaN-free junk past its length
    x2 = torch.cat([x, torch.full((1, N), 7)])
    padded = _one_call(model, x2, torch.cat([lengths, torch.tensor([1])]), links + [Link(1, True)])
    torch.testing.assert_close(padded[:3], base, atol=1e-5, rtol=0)
    model.train()
    out, z, m = model(x2, torch.tensor([N, 0, 1, N]), [Link(0, True), Link(0), Link(0), Link(0)])
    (out.sum() + z.sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(z).all() and m[1] == 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_seed_fixes_a_model_with_memory():
    x, lengths = _windows(3)
    links = [Link(0, True), Link(0), Link(0)]
    a = _one_call(_model(seed=4), x, lengths, links)
    assert torch.equal(a, _one_call(_model(seed=4), x, lengths, links))
    assert not torch.equal(a, _one_call(_model(seed=5), x, lengths, links))


@pytest.mark.parametrize("attention,limit", [("lsh", {"hash_buckets": 1, "hash_rounds": 1, "chunk": 64}),
                                             ("routing", {"clusters": 1, "chunk": 64})])
def test_lsh_and_routing_in_their_limiting_case_are_full_attention_with_memory(attention, limit):
    """One bucket (cluster) and a chunk covering every query and key, memory keys included (they sit before
    the window, at negative positions, and must still sort into the chunk)."""
    full = _model("full", "alibi")
    other = build_model(tiny_config(n_max=N, attention=attention, positions="alibi", memory=4 * N,
                                    options=limit)).eval()
    other.load_state_dict(full.state_dict(), strict=False)
    x, lengths = _windows(3)
    links = [Link(0, True), Link(0), Link(0)]
    torch.testing.assert_close(_one_call(other, x, lengths, links), _one_call(full, x, lengths, links),
                               atol=2e-5, rtol=0)


def test_kernels_and_positions_that_cannot_take_memory_are_refused():
    for attention in ("lowrank", "local"):
        with pytest.raises(InputError, match="cannot use memory"):
            tiny_config(attention=attention, positions="t5", memory=16)
    for positions in ("learned", "none"):  # a memory row would sit where the window's own row sits
        with pytest.raises(InputError, match="memory needs relative positions"):
            tiny_config(positions=positions, memory=16)
    with pytest.raises(InputError, match="memory"):
        tiny_config(memory=-1)
    with pytest.raises(InputError, match="at most 64 windows"):
        tiny_config(positions="t5", memory=65 * 16)


def test_links_of_a_file_and_of_a_run():
    from seqcompress.domain import Piece

    pieces = [Piece([torch.zeros(2)] * 2, {}), Piece([torch.zeros(2)] * 2, {}, [Link(1), Link(0, True)])]
    links = [link for piece in file_links(pieces) for link in piece.links]
    assert links == [Link(0, True), Link(0), Link(1, True), Link(0, True)]
    assert run_links([Link(0), Link(1), Link(0), Link(1, True)]) == [Link(0, True), Link(1, True), Link(0),
                                                                      Link(1, True)]


def test_in_memory_encode_and_decode_follow_the_links():
    model = _model()
    x, lengths = _windows(3, last=N)
    windows = list(x)
    links = [Link(0, True), Link(0), Link(0)]
    latents = encode(model, windows, batch_size=2, links=links)
    out = torch.stack(decode(model, latents, [N] * 3, batch_size=1, links=links))
    torch.testing.assert_close(out, _one_call(model, x, lengths, links), atol=2e-5, rtol=0)
    alone = torch.stack(decode(model, encode(model, windows), [N] * 3))  # no links: each window alone
    torch.testing.assert_close(alone, _one_call(model, x, lengths, None), atol=2e-5, rtol=0)


# ---- codecs, the .sqz file and the CLI ------------------------------------------------------------------
def test_dna_records_and_audio_channels_are_marked(tmp_path):
    import numpy as np
    import soundfile as sf

    from seqcompress.domains import get_domain

    fasta = tmp_path / "r.fa"
    fasta.write_text(">a\n" + "ACGT" * 5 + "\n>b\n" + "GATC" * 3 + "\n")
    links = [link for _, link in get_domain("dna", {"k": 1}).linked_windows([fasta], 8)]
    assert links == [Link(0, True), Link(0), Link(0), Link(0, True), Link(0)]
    wav = tmp_path / "s.wav"
    sf.write(wav, np.zeros((16000, 2), dtype=np.float32), 16000)
    links = [link for _, link in get_domain("audio").linked_windows([wav], 8)]
    assert [link.stream for link in links][:4] == [0, 1, 0, 1]
    assert [link.start for link in links][:4] == [True, True, False, False]


def test_sqz_links_are_stored_checked_and_required(tmp_path):
    from seqcompress.errors import FormatError, ModelMismatchError
    from seqcompress.format import LatentReader, LatentWriter, check_model, make_header

    header = make_header(domain="text", settings={}, model={"fingerprint": "f", "n_max": N, "ratio": 0.5,
                                                            "latent_dim": 2, "memory": 8}, dtype="float32",
                         codec="none")
    path = tmp_path / "a.sqz"
    with open(path, "wb") as f:
        writer = LatentWriter(f, header)
        writer.add([N, N, 3], [(3, {})], torch.zeros(10, 2), [Link(0, True), Link(1, True), Link(0)])
        writer.finish({"name": "a", "size": 1, "sha256": "0"})
    chunk = next(LatentReader(path).chunks())
    assert chunk.links == [Link(0, True), Link(1, True), Link(0)]
    with pytest.raises(ModelMismatchError, match="memory"):
        check_model(LatentReader(path).header, "f", N, 0.5, 2, memory=0)
    check_model(LatentReader(path).header, "f", N, 0.5, 2, memory=8)
    with pytest.raises(FormatError, match="links"):
        with open(tmp_path / "b.sqz", "wb") as f:
            LatentWriter(f, header).add([N], [(1, {})], torch.zeros(4, 2), [Link(), Link()])
    reader = LatentReader(path)
    for bad in ({"streams": [[0, 4]], "starts": []}, {"streams": [[1024, 3]], "starts": []},
                {"streams": [[0, 3]], "starts": [3]}, {"streams": [[0, 3]], "starts": [1, 0]},
                {"streams": [[0, 3]], "starts": [True]}, {"streams": "x", "starts": []}, [1]):
        with pytest.raises(FormatError, match="chunk 0"):
            reader._links(bad, 0, 3)


def test_a_long_fasta_round_trips_with_memory_from_the_cli(tmp_path):
    """The bundled yeast sample (230,218 bases in 4 records) through fit --memory, encode and decode: every
    header and line length comes back exactly, and decode's accuracy is what evaluate reports."""
    from seqcompress.domain import bundled

    fasta = tmp_path / "yeast.fa"
    fasta.write_bytes(gzip.decompress(bundled("yeast_sample.fa.gz").read_bytes()))
    run = [sys.executable, "-m", "seqcompress"]

    def sq(*args):
        return subprocess.run([*run, *map(str, args)], capture_output=True, text=True, check=True,
                              env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})

    model = tmp_path / "m"
    sq("fit", "--domain", "dna", fasta, "-o", model, "-D", "k=1", "--seq-len", 64, "--d-model", 32, "--heads", 2,
       "--layers", 1, "--positions", "t5", "--memory", 64, "--max-steps", 20, "--batch-size", 16, "-q")
    assert json.loads((model / "config.json").read_text())["model"]["memory"] == 64
    sq("encode", "-m", model, fasta, "-o", tmp_path / "y.sqz")
    sq("decode", "-m", model, tmp_path / "y.sqz", "-o", tmp_path / "back.fa")
    original, back = fasta.read_text().splitlines(), (tmp_path / "back.fa").read_text().splitlines()
    assert [line for line in back if line.startswith(">")] == [line for line in original if line.startswith(">")]
    assert [len(line) for line in back] == [len(line) for line in original]
    bases = [line for line in original if not line.startswith(">")]
    got = [line for line in back if not line.startswith(">")]
    same = sum(a == b for x, y in zip(bases, got) for a, b in zip(x.upper(), y.upper()))
    evaluated = json.loads(sq("evaluate", "-m", model, fasta, "--json").stdout)["value"]
    assert same / sum(map(len, bases)) == pytest.approx(evaluated, abs=1e-9)
    info = sq("info", tmp_path / "y.sqz", "--json").stdout
    assert json.loads(info)["model"]["memory"] == 64


def test_training_batches_are_runs_of_consecutive_windows_and_held_out_windows_keep_their_context():
    from seqcompress.options import TrainOptions
    from seqcompress.train import TrainWindows, WindowSource, held_out_linked, scan

    windows = [torch.full((N,), i) for i in range(40)]
    source = WindowSource.of(windows, [Link(0, i == 0) for i in range(40)])
    split = scan(source, 0.25, seed=3, block=4)
    held = [int(w[0]) for w, _ in held_out_linked(source, split)]
    assert held and all(i // 4 * 4 + k in held for i in held for k in range(4))  # whole blocks of 4
    items = list(TrainWindows(source, split, buffer=64, seed=0, run=4))
    assert len(items) == 40 - len(held)
    for first in range(0, len(items), 4):
        run = items[first : first + 4]
        assert [int(w[0]) for w, _ in run] == list(range(int(run[0][0][0]), int(run[0][0][0]) + 4))
        assert [link.start for _, link in run] == [True, False, False, False]
    assert TrainOptions().run_windows == 8
    # two lanes: a batch of 2 holds one window of each run, and each lane's windows follow in order
    dealt = list(TrainWindows(source, split, buffer=64, seed=0, run=4, lanes=2))
    assert [link.stream for _, link in dealt[:8]] == [0, 1024, 0, 1024, 0, 1024, 0, 1024]
    lane0 = [int(w[0]) for w, link in dealt[:8] if link.stream == 0]
    assert lane0 == list(range(lane0[0], lane0[0] + 4)) and [link.start for _, link in dealt[:4]] == [True, True,
                                                                                                       False, False]


def test_the_probe_ranks_memory_variants(tmp_path):
    from seqcompress.domains import get_domain
    from seqcompress.probe import Probe, ProbePlan

    domain = get_domain("dna")
    plan = ProbePlan(domain="dna", domain_state=domain.state(), data=[], cells=[(32, 0.5)], seeds=1,
                     attention=["full", "local"], memory=[0, 1], positions=["t5"],
                     model={"d_model": 16, "heads": 2, "layers": 1, "ffn_dim": 32, "latent_dim": 16},
                     training={"max_steps": 3, "batch_size": 8})
    assert list(plan.variants()) == ["attention+t5", "attention+t5+mem1", "attention+local+t5"]  # local: no memory
    split = Probe(plan, domain, tmp_path).split(32)
    assert len(split.train_links) == len(split.train) and len(split.test_links) == len(split.test)
    assert Probe(plan, domain, tmp_path).config("attention+t5+mem1", 32, 0.5).memory == 32
