"""The GPU path: training steps under autocast, encode and decode on CUDA against the CPU, every attention kernel
and position scheme on CUDA against the CPU, and data-parallel training over NCCL. Skipped without CUDA (the
project's CI machines have none); run with `pytest tests/test_cuda.py` on a GPU machine (docs/reproduction.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from seqcompress.compress import decode, encode
from seqcompress.domain import TokenObjective
from seqcompress.errors import InputError
from seqcompress.kernels import KERNELS
from seqcompress.model import ModelConfig, build_model
from seqcompress.options import TrainOptions
from seqcompress.positions import POSITIONS
from seqcompress.train import autocast_for, evaluate, train

# SEQCOMPRESS_TEST_DEVICE=cpu runs these tests' code on the CPU (to check them where there is no GPU).
DEVICE = os.environ.get("SEQCOMPRESS_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")


def _config(**extra) -> ModelConfig:
    return ModelConfig(**{"n_max": 64, "ratio": 0.5, "d_model": 64, "heads": 4, "layers": 2, "ffn_dim": 128,
                          "latent_dim": 64, "vocab_size": 16, **extra})


def _windows(count=64, n=64, vocab=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, vocab, (n,), generator=g)
    return [torch.roll(base, int(s)) for s in torch.randint(0, n, (count,), generator=g)]  # learnable


def test_training_steps_on_cuda_learn_under_autocast():
    model = build_model(_config(), seed=0)
    opts = TrainOptions(epochs=None, max_steps=60, batch_size=16, device=DEVICE, log_every=10)
    losses = []
    result = train(model, TokenObjective(), _windows(), opts, on_step=lambda p: losses.append(p.loss))
    assert next(model.parameters()).device.type == DEVICE
    assert 6 <= len(losses) < 60 and all(map(math.isfinite, losses)) and losses[-1] < 0.9 * losses[0]
    assert result.held_out["loss"] < losses[0]
    if DEVICE == "cuda":
        with autocast_for(torch.device("cuda")):
            out, _, _ = model(torch.stack(_windows(4)).cuda(), torch.full((4,), 64, device="cuda"))
        assert out.dtype in (torch.bfloat16, torch.float16)  # autocast is on


def test_encode_and_decode_on_cuda_match_the_cpu():
    model = build_model(_config(), seed=1).eval()
    windows = _windows(12) + [torch.arange(1, 30) % 16]  # a short last window too
    cpu = encode(model, windows)
    gpu = encode(model.to(DEVICE), windows)
    assert all(torch.allclose(a, b.cpu().float(), atol=5e-3, rtol=5e-3) for a, b in zip(cpu, gpu))
    lengths = [len(w) for w in windows]
    back_gpu = decode(model, [g for g in gpu], lengths)
    back_cpu = decode(model.cpu(), cpu, lengths)
    assert all(torch.allclose(a.float(), b.cpu().float(), atol=5e-3, rtol=5e-3) for a, b in zip(back_cpu, back_gpu))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("positions", sorted(POSITIONS))
def test_every_kernel_and_position_scheme_runs_on_cuda_as_on_the_cpu(kernel, positions):
    try:
        model = build_model(_config(attention=kernel, positions=positions), seed=2).eval()
    except InputError as exc:  # a combination the kernel cannot serve
        pytest.skip(str(exc))
    x = torch.stack(_windows(6))
    lengths = torch.tensor([64, 64, 50, 33, 1, 64])
    with torch.no_grad():
        want = model(x, lengths)[0].float()
        model.to(DEVICE)
        got = model(x.to(DEVICE), lengths.to(DEVICE))[0].float().cpu()
    real = torch.arange(64)[None, :] < lengths[:, None]
    assert torch.allclose(got[real], want[real], atol=2e-3, rtol=2e-3)


def test_two_gpus_train_as_one_process_over_nccl(tmp_path):
    if DEVICE != "cuda" or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, procs in (("one", []), ("two", ["--nproc", "2"])):
        done = subprocess.run([sys.executable, "-m", "seqcompress", "fit", "--domain", "dna", "-o", str(tmp_path / name),
                               "--seq-len", "64", "--d-model", "32", "--max-steps", "8", "--batch-size", "8",
                               "--device", "cuda", "--json", *procs], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        runs[name] = json.loads(done.stdout)
    assert runs["two"]["processes"] == 2
    assert runs["two"]["value"] == pytest.approx(runs["one"]["value"], abs=2e-3)  # bf16 rounding


def test_a_compiled_model_trains_as_the_module_does():
    if DEVICE != "cuda":
        pytest.skip("compiling on the CPU takes minutes; the GPU is where it pays")
    runs = []
    for compiled in (False, True):
        model = build_model(_config(), seed=3)
        train(model, TokenObjective(), _windows(), TrainOptions(epochs=None, max_steps=5, batch_size=16,
                                                                device="cuda", compile=compiled))
        runs.append(model.state_dict())
    assert all(torch.allclose(runs[0][k].float(), runs[1][k].float(), atol=1e-2) for k in runs[0])
