"""Data-parallel training throughput: symbols/s of `seqcompress fit` in 1 and N processes, side by side in one run.
Prints one JSON object.

Each configuration trains the same model on the same data for the same number of steps with the same global
batch, through the command line (N processes: `fit --nproc N`, PyTorch's elastic launcher, gloo on CPU, NCCL
on GPUs), and reports the loop's symbols/s (`fit --json`; the counting pass, start-up and the final evaluation
are outside it). Parallel efficiency = symbols/s of N processes / (N x symbols/s of one process), each process
with the same number of threads. One process with N threads is measured too: on a CPU that is the other way
to use N cores.

Usage: python benchmarks/bench_ddp.py [--nproc 2] [--steps 40] [--domain text] [--seq-len 128] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch


def fit(args, nproc: int, threads: int, out: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "seqcompress", "fit", "--domain", args.domain, "-o", out, "--seq-len",
           str(args.seq_len), "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--d-model",
           str(args.d_model), "--device", args.device, "--json", "-q", "--force"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"bench_ddp: fit failed: {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout)
    return {"processes": nproc, "threads_per_process": threads, "steps": summary["steps"],
            "symbols_per_s": summary["symbols_per_s"], "seconds": summary["seconds"],
            "held_out": summary["value"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--domain", default="text")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        one = fit(args, 1, args.threads, f"{tmp}/one")
        many = fit(args, args.nproc, args.threads, f"{tmp}/many")
        threads = fit(args, 1, args.threads * args.nproc, f"{tmp}/threads")
    print(json.dumps({
        "benchmark": "ddp",
        "machine": {"processor": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0},
        "settings": vars(args),
        "runs": [one, many, threads],
        "speedup": many["symbols_per_s"] / one["symbols_per_s"],
        "parallel_efficiency": many["symbols_per_s"] / (args.nproc * one["symbols_per_s"]),
        "threads_speedup": threads["symbols_per_s"] / one["symbols_per_s"],
    }, indent=1))


if __name__ == "__main__":
    main()
