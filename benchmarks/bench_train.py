"""Training throughput and attention cost, measured side by side in one run. Prints one JSON object.

1. The machine's fp32 matmul rate (2048 x 2048 @ 2048 x 2048), the denominator of everything else.
2. Training throughput of the default text configuration (seq-len 512, ratio 0.5, d_model 256,
   batch 8) on the bundled sample: symbols/s, FLOPs per step counted by torch's FlopCounterMode,
   and the achieved FLOP rate as a fraction of the matmul rate. Then the same steps through `train()`,
   which streams the sample from its file (counting pass, held-out split, shuffle buffer): the
   seconds of the counting pass and the loop's symbols/s, so the cost of streaming shows next to the bare
   step (the streamed batches also hold a file's shorter last window).
3. The vocabulary head (`--head-steps N`): the default text model trained N steps through `train()` on the
   same windows twice, with the full 30,522-way softmax and with a sampled one (`--sampled-softmax`: the
   batch's own tokens and `--drawn` more), each then scored on the same held-out windows over the whole
   vocabulary: tokens/s of each, their ratio, and held-out token accuracy after the same number of tokens.
   Data: `--data FILE` (e.g. .cache/data/wiki.txt from scripts/get_data.sh), else the bundled sample.
4. The reducing-attention layer (W_S slicing + attention with n/2 queries) against plain SDPA
   self-attention (n queries) on the same input, forward and forward+backward, at n = 512, 1024, 2048.

On a GPU (`--device cuda`) the matmul rate is bf16 (the rate autocast training can reach), training runs
under autocast with fused AdamW, and every timing waits for the device.

Usage: python benchmarks/bench_train.py [--steps 20] [--quick] [--device cpu|cuda] [--head-steps 0]
       [--drawn 2048] [--data FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import seqcompress  # noqa: F401
from seqcompress.attention import Attention, Layout, ResizeMatrix, latent_length, length_mask
from seqcompress.kernels import make_kernel
from seqcompress.lengths import Geometry, latent_positions
from seqcompress.domains.text import TextDomain
from seqcompress.model import ModelConfig, build_model
from seqcompress.train import TrainOptions, WindowSource, autocast_for, candidates, collate, scan, train


DEVICE = torch.device("cpu")  # set by --device


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() over `repeats` runs (waiting for the device)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s on a CPU; bf16 on a GPU (8192 x 8192: large enough to fill it)."""
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    size = 8192 if DEVICE.type == "cuda" else size
    a, b = torch.randn(size, size, device=DEVICE, dtype=dtype), torch.randn(size, size, device=DEVICE, dtype=dtype)
    return 2 * size**3 / timed(lambda: a @ b, repeats)


def training_throughput(steps: int, seq_len: int = 512, batch_size: int = 8, drawn: int = 2048) -> dict:
    domain = TextDomain()
    objective = domain.objective
    windows = [w for w in domain.load_windows(domain.default_data(), seq_len) if len(w) == seq_len]
    config = ModelConfig(n_max=seq_len, ratio=0.5, **domain.model_fields())
    model = build_model(config, seed=0).to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=DEVICE.type == "cuda")
    batches = [tuple(t.to(DEVICE) for t in collate(windows[i : i + batch_size]))
               for i in range(0, len(windows) - batch_size + 1, batch_size)]
    full = torch.ones(batch_size, seq_len, dtype=torch.bool, device=DEVICE)
    everywhere = torch.arange(batch_size * seq_len, device=DEVICE)  # every position is real

    def step(i: int, sampled: bool = False) -> None:
        x, lengths = batches[i % len(batches)]
        with autocast_for(DEVICE):
            if sampled:  # what `--sampled-softmax` trains: logits over the batch's tokens and `drawn` more
                chosen = candidates(torch.unique(x.cpu()), drawn, config.vocab_size, 0, i).to(DEVICE)
                hidden, _, _ = model(x, lengths, hidden=True)
                loss, _ = objective.sampled_loss(hidden, model.embed.weight, x, everywhere, chosen)
            else:
                out, _, _ = model(x, lengths)
                loss = objective.loss(out, x, full)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops_per_step = counter.get_total_flops()
    for i in range(3):  # warm-up
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    seconds = (time.perf_counter() - start) / steps
    for i in range(3):
        step(i, sampled=True)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(i, sampled=True)
    sync()
    sampled_s = (time.perf_counter() - start) / steps
    return {
        "seq_len": seq_len, "ratio": 0.5, "batch_size": batch_size, "parameters": model.parameter_count(),
        "steps_timed": steps, "seconds_per_step": seconds, "symbols_per_s": batch_size * seq_len / seconds,
        "flops_per_step": flops_per_step, "achieved_flops_per_s": flops_per_step / seconds,
        "sampled_softmax": {"drawn": drawn, "seconds_per_step": sampled_s, "symbols_per_s": batch_size * seq_len / sampled_s,
                            "speedup": seconds / sampled_s},
        "streamed": streamed_training(domain, config, steps, batch_size),
    }


def streamed_training(domain: TextDomain, config: ModelConfig, steps: int, batch_size: int) -> dict:
    """The same model trained through train() on the sample streamed from its file."""
    source = WindowSource.files(domain, domain.default_data(), config.n_max)
    options = TrainOptions(epochs=None, max_steps=steps, batch_size=batch_size, device=DEVICE.type, eval_batches=1)
    start = time.perf_counter()
    split = scan(source, options.val_fraction, options.seed)
    scan_s = time.perf_counter() - start
    result = train(build_model(config, seed=0), domain.objective, source, options)
    return {"windows": split.windows, "held_out_windows": split.held_out_windows, "scan_s": scan_s,
            "steps": result.steps, "loop_s": result.seconds, "symbols_per_s": result.symbols_per_s}


def head_comparison(steps: int, drawn: int, data: list[str] | None, seq_len: int = 512, batch_size: int = 8) -> dict:
    """Full against sampled softmax: the same model, windows, batches and steps; held-out accuracy after them."""
    domain = TextDomain()
    paths = data or [str(p) for p in domain.default_data()]
    source = WindowSource.files(domain, paths, seq_len)
    config = ModelConfig(n_max=seq_len, ratio=0.5, **domain.model_fields())
    runs = {}
    for name, sampled in (("full", 0), ("sampled", drawn)):
        options = TrainOptions(epochs=None, max_steps=steps, batch_size=batch_size, device=DEVICE.type,
                               val_fraction=0.1, sampled_softmax=sampled, log_every=steps)
        result = train(build_model(config, seed=0), domain.objective, source, options)
        runs[name] = {"steps": result.steps, "tokens": round(result.symbols_per_s * result.seconds),
                      "loop_s": result.seconds, "tokens_per_s": result.symbols_per_s,
                      "held_out_windows": result.held_out_windows,
                      "held_out_token_accuracy": result.held_out["token_accuracy"],
                      "held_out_loss": result.held_out["loss"]}
    return {"data": paths, "seq_len": seq_len, "ratio": 0.5, "batch_size": batch_size, "drawn": drawn, **runs,
            "speedup": runs["sampled"]["tokens_per_s"] / runs["full"]["tokens_per_s"],
            "accuracy_difference": (runs["sampled"]["held_out_token_accuracy"]
                                    - runs["full"]["held_out_token_accuracy"])}


def attention_ratio(n: int, repeats: int, d_model: int = 256, heads: int = 4, batch: int = 4) -> dict:
    """Reducing layer (n -> n/2 queries through W_S) vs plain self-attention (n queries), same input and module."""
    torch.manual_seed(0)
    m = latent_length(n, 0.5)
    attn = Attention(d_model, heads, make_kernel("full", Geometry("reduce", m, n, 0.5), heads, d_model // heads, 0.0, {}))
    resize = ResizeMatrix(m, n, 0.5)
    attn, resize = attn.to(DEVICE), resize.to(DEVICE)
    x = torch.randn(batch, n, d_model, device=DEVICE, requires_grad=True)
    lengths = torch.full((batch,), n, device=DEVICE)
    in_mask, out_mask = length_mask(lengths, n), length_mask(lengths.new_full((batch,), m), m)
    pos_in, pos_out = latent_positions(n, 1.0, device=DEVICE), latent_positions(m, 0.5, device=DEVICE)
    reduce = Layout(in_mask, out_mask, True, pos_in, pos_out, Geometry("reduce", m, n, 0.5).key_spans(m, DEVICE))
    self_layout = Layout(in_mask, in_mask, True, pos_in, pos_in, Geometry("self", n, n).key_spans(n, DEVICE))

    def reducing():
        return attn(resize.apply(x, reduce), x, reduce)  # (B, n/2, D)

    def plain():
        return attn(x, x, self_layout)  # (B, n, D)

    def backward(fn):
        return lambda: fn().sum().backward()

    with torch.no_grad():
        fwd_r, fwd_p = timed(reducing, repeats), timed(plain, repeats)
    bwd_r, bwd_p = timed(backward(reducing), repeats), timed(backward(plain), repeats)
    return {
        "n": n, "batch": batch, "d_model": d_model, "heads": heads,
        "forward_s": {"reducing": fwd_r, "self_attention": fwd_p, "ratio": fwd_r / fwd_p},
        "forward_backward_s": {"reducing": bwd_r, "self_attention": bwd_p, "ratio": bwd_r / bwd_p},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke run")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--head-steps", type=int, default=0, help="steps of the full vs sampled softmax runs (0: skip)")
    parser.add_argument("--drawn", type=int, default=2048, help="tokens the sampled softmax draws per step")
    parser.add_argument("--data", nargs="*", help="text files for the head comparison (default: the bundled sample)")
    parser.add_argument("--skip-attention", action="store_true", help="leave out the attention comparison")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    repeats = 2 if args.quick else 10
    rate = matmul_rate(repeats=2 if args.quick else 5)
    train = training_throughput(2 if args.quick else args.steps, drawn=args.drawn)
    train["fraction_of_matmul_rate"] = train["achieved_flops_per_s"] / rate
    result = {
        "benchmark": "train_throughput_and_attention",
        "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(), "device": str(DEVICE),
                    "gpu": torch.cuda.get_device_name() if DEVICE.type == "cuda" else None},
        "matmul_dtype": "bfloat16" if DEVICE.type == "cuda" else "float32",
        "matmul_flops_per_s": rate,
        "training": train,
    }
    if args.head_steps:
        result["head"] = head_comparison(args.head_steps, args.drawn, args.data)
    if not args.skip_attention:
        result["attention"] = [attention_ratio(n, repeats) for n in (512, 1024, 2048)]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
