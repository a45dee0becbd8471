"""Speed and memory of one attention block per mechanism and length, next to PyTorch SDPA full attention.

Each (mechanism, n) point runs in a fresh subprocess (so peak RSS is that point's own, and an
out-of-memory at one length does not end the run; glibc's mmap threshold is fixed at 1 MB there so that
RSS follows the live tensors) under an address-space limit; one that runs out of
memory is recorded as {"oom": true}. Every time and memory figure is also given as a ratio to
`self-full` (PyTorch SDPA, which on CPU already avoids the n x n score matrix) at the same n, measured in
the same run. Prints one JSON object.

Mechanisms: `self-<kernel>` is a pre-norm self-attention Block (LayerNorm, projections, kernel, FFN) of
width 256 with 4 heads of 64; `reduce-<kernel>-<resize>` is a whole reducing Block n -> n/2 (W_S, its
residual, attention, FFN), the first block of an encoder. `self-<kernel>-mem` is the self-attention Block
with memory (`--memory`) of one previous window: n queries over the n memory rows and the n keys of the
window (compare it with self-full at 2n, which would see the same context in one window).

    python benchmarks/bench_attention.py --budget 4 --repeats 3     # the table in docs/attention.md
    python benchmarks/bench_attention.py --lengths 512,4096 --mechanisms self-full,self-local
    python benchmarks/bench_attention.py --budget 4 --repeats 3 --mechanisms self-lsh,self-routing,reduce-lsh-relative,reduce-routing-relative
    python benchmarks/bench_attention.py --budget 2 --repeats 2 --mechanisms self-full,self-full-mem,self-routing-mem
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

DEFAULT_LENGTHS = "512,1024,2048,4096,8192,16384,32768"
DEFAULT_MECHANISMS = ("self-full,self-local,self-lowrank,self-lsh,self-routing,reduce-full-absolute,"
                      "reduce-full-relative,reduce-local-relative,reduce-lowrank-relative,reduce-lsh-relative,"
                      "reduce-routing-relative")
REFERENCE = "self-full"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def build(mechanism: str, n: int, args):
    """The block, its input and its Layout for one mechanism at length n."""
    import torch

    from seqcompress.attention import Attention, Block, Layout
    from seqcompress.kernels import make_kernel
    from seqcompress.lengths import Geometry, latent_length, latent_positions, length_mask
    from seqcompress.memory import MemoryRows
    from seqcompress.model import ModelConfig
    from seqcompress.reducers import REDUCERS

    parts = mechanism.split("-")
    kind, kernel = parts[0], parts[1]
    options = {"window": args.window, "rank": args.rank, "band": 1.0, "chunk": args.chunk,
               "hash_buckets": args.hash_buckets, "clusters": args.clusters}
    d, heads = args.d_model, args.heads
    lengths = torch.full((args.batch,), n)
    in_mask = length_mask(lengths, n)
    pos_in = latent_positions(n, 1.0)
    torch.manual_seed(0)
    if kind == "self":
        geometry = Geometry("self", n, n)
        kern = make_kernel(kernel, geometry, heads, d // heads, 0.0, options)
        block = Block(d, 4 * d, Attention(d, heads, kern))
        layout = Layout(in_mask, in_mask, True, pos_in, pos_in, geometry.key_spans(n))
        if parts[-1] == "mem":  # one previous window of memory rows, before the window's own keys
            layout.memory = MemoryRows(torch.randn(args.batch, n, d), torch.ones(args.batch, n, dtype=torch.bool),
                                       pos_in - n, True)
    else:
        resize = parts[2]
        m = latent_length(n, 0.5)
        geometry = Geometry("reduce", m, n, 0.5)
        config = ModelConfig(n_max=n, ratio=0.5, d_model=d, heads=heads, vocab_size=8, attention=kernel,
                             resize=resize, positions="none")
        kern = make_kernel(kernel, geometry, heads, d // heads, 0.0, options)
        block = Block(d, 4 * d, Attention(d, heads, kern), resize=REDUCERS["attention"].build(m, n, 0.5, d, config))
        out_mask = length_mask(torch.full((args.batch,), m), m)
        layout = Layout(in_mask, out_mask, True, pos_in, latent_positions(m, 0.5), geometry.key_spans(m))
    x = torch.randn(args.batch, n, d, requires_grad=True)
    return block, x, layout


def timed(fn, budget_s: float, max_repeats: int) -> float:
    """Median seconds of fn() over as many repeats as fit in budget_s (at least one, after one warm-up)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (not times or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def point(mechanism: str, n: int, args) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    torch.set_num_threads(args.threads)
    block, x, layout = build(mechanism, n, args)
    params = sum(p.numel() for p in block.parameters())
    base = rss_mb()

    def forward():
        with torch.no_grad():
            block(x, layout)

    def train_step():
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x, layout).square().mean().backward()

    fwd = timed(forward, args.budget, args.repeats)
    fwd_peak = peak_rss_mb()
    step = timed(train_step, args.budget, args.repeats)
    return {"mechanism": mechanism, "n": n, "forward_s": fwd, "forward_backward_s": step, "parameters": params,
            "baseline_rss_mb": base, "forward_peak_rss_mb": fwd_peak, "peak_rss_mb": peak_rss_mb()}


def run_point(mechanism: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--point", mechanism, str(n), "--batch", str(args.batch), "--window",
           str(args.window), "--rank", str(args.rank), "--threads", str(args.threads), "--budget", str(args.budget),
           "--repeats", str(args.repeats), "--memory-gb", str(args.memory_gb), "--d-model", str(args.d_model),
           "--heads", str(args.heads), "--chunk", str(args.chunk), "--hash-buckets", str(args.hash_buckets),
           "--clusters", str(args.clusters)]
    try:
        # A fixed mmap threshold returns every large freed tensor to the OS, so the peak RSS follows the live
        # tensors; glibc's adaptive threshold otherwise keeps freed blocks and adds tens of MB of noise.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"mechanism": mechanism, "n": n, "timeout": True}
    if proc.returncode != 0:
        oom = any(s in proc.stderr for s in ("MemoryError", "out of memory", "DefaultCPUAllocator", "std::bad_alloc"))
        return {"mechanism": mechanism, "n": n, "oom": oom, "error": None if oom else proc.stderr.strip()[-300:]}
    return json.loads(proc.stdout)


def with_ratios(points: list[dict]) -> list[dict]:
    ref = {p["n"]: p for p in points if p["mechanism"] == REFERENCE and "forward_s" in p}
    for p in points:
        r = ref.get(p["n"])
        if r and "forward_s" in p:
            p["vs_sdpa"] = {"forward": p["forward_s"] / r["forward_s"],
                            "forward_backward": p["forward_backward_s"] / r["forward_backward_s"],
                            "peak_rss": p["peak_rss_mb"] / r["peak_rss_mb"]}
    return points


def crossovers(points: list[dict], mechanisms: list[str]) -> dict:
    """The smallest n from which a mechanism's forward+backward is faster than SDPA's at every longer n measured."""
    out = {}
    for mech in mechanisms:
        if mech == REFERENCE:
            continue
        ratios = sorted((p["n"], p["vs_sdpa"]["forward_backward"]) for p in points
                        if p["mechanism"] == mech and "vs_sdpa" in p)
        n_cross = None
        for i, (n, _) in enumerate(ratios):
            if all(r < 1 for _, r in ratios[i:]):
                n_cross = n
                break
        out[mech] = n_cross
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="comma-separated n")
    parser.add_argument("--mechanisms", default=DEFAULT_MECHANISMS, help="comma-separated, see the docstring")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--window", type=int, default=64, help="local: keys on each side of a query's segment")
    parser.add_argument("--rank", type=int, default=64, help="lowrank: projected keys")
    parser.add_argument("--chunk", type=int, default=64, help="lsh: keys per chunk (a query sees 2 chunks)")
    parser.add_argument("--hash-buckets", type=int, default=16, help="lsh: buckets per hash round")
    parser.add_argument("--clusters", type=int, default=8, help="routing: clusters (each holds 2n/K keys)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=6.0, help="seconds of repeats per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-gb", type=float, default=12.0, help="address-space limit per point")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per point")
    parser.add_argument("--point", nargs=2, metavar=("MECHANISM", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        limit = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(point(args.point[0], int(args.point[1]), args)))
        return
    mechanisms = [m for m in args.mechanisms.split(",") if m]
    if REFERENCE not in mechanisms:
        mechanisms.insert(0, REFERENCE)
    points = []
    for n in (int(v) for v in args.lengths.split(",")):
        for mech in mechanisms:
            p = run_point(mech, n, args)
            print(f"{mech:26s} n={n:6d} " + (f"fwd {p['forward_s']:.3f}s fwd+bwd {p['forward_backward_s']:.3f}s "
                                              f"peak {p['peak_rss_mb']:.0f} MB" if "forward_s" in p else str(p)),
                  file=sys.stderr, flush=True)
            points.append(p)
    import torch

    print(json.dumps({
        "benchmark": "attention_mechanisms",
        "machine": {"processor": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version()},
        "settings": {k: getattr(args, k) for k in ("batch", "d_model", "heads", "window", "rank", "chunk", "hash_buckets",
                                                   "clusters", "budget", "memory_gb")},
        "points": with_ratios(points),
        "crossover_n": crossovers(points, mechanisms),
    }, indent=2))


if __name__ == "__main__":
    main()
