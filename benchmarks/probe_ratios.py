"""Reduction limit of one domain: held-out metric at several ratios and seeds, same budget per run.

For every (ratio, seed) it trains a model on the --train files under the same time budget, then
evaluates it on the --test files (never seen in training) and records the metric with the latent
floats per input symbol. Results go to OUT/results.json after every run (a killed probe resumes from
the runs it finished); a Markdown table (mean ± std over seeds) is printed at the end.

Example (docs/dna.md):
    python benchmarks/probe_ratios.py --domain dna --train .cache/data/yeast/Scer_chrI.fna.gz \
        .cache/data/yeast/Smik_chrI.fna.gz --test .cache/data/yeast/Skud_chrI.fna.gz \
        --seq-len 512 --ratios 0.5,0.25,0.125,0.0625 --seeds 3 --minutes 2 -o runs/dna_probe
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from fractions import Fraction
from pathlib import Path

import seqcompress  # noqa: F401
from seqcompress.api import evaluate_files, fit
from seqcompress.atomic import atomic_write_text
from seqcompress.domains import get_domain
from seqcompress.train import TrainOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", required=True)
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--test", nargs="+", required=True)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--ratios", default="0.5,0.25,0.125,0.0625")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--domain-state", default=None, help='domain settings as JSON, e.g. \'{"k": 3}\' for DNA k-mers')
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": []}
    done = {(r["ratio"], r["seed"]) for r in results["runs"]}
    ratios = [float(r) for r in args.ratios.split(",")]
    for ratio in ratios:
        for seed in range(args.seeds):
            if (ratio, seed) in done:
                continue
            model_dir = out / f"r{ratio}-s{seed}"
            state = {"name": args.domain, **json.loads(args.domain_state)} if args.domain_state else None
            summary = fit(get_domain(args.domain, state), args.train, model_dir, seq_len=args.seq_len, ratio=ratio,
                          options=TrainOptions(epochs=None, max_minutes=args.minutes, seed=seed,
                                               batch_size=args.batch_size, val_fraction=0.02), force=True)
            held = evaluate_files(model_dir, args.test)
            run = {"ratio": ratio, "seed": seed, "metric": held["metric"], "value": held["value"],
                   "metrics": held["metrics"], "latent_len": held["latent_len"], "seq_len": args.seq_len,
                   "latent_floats_per_symbol": summary["latent_floats_per_symbol"], "steps": summary["steps"],
                   "epochs": summary["epochs"], "seconds": summary["seconds"], "test_symbols": held["n_symbols"]}
            results["runs"].append(run)
            results["setup"] = {"domain": args.domain, "domain_state": args.domain_state, "train": args.train, "test": args.test,
                                "minutes_per_run": args.minutes, "batch_size": args.batch_size,
                                "machine": {"processor": platform.machine(), "cpus": os.cpu_count()}}
            atomic_write_text(results_path, json.dumps(results, indent=2))
            print(json.dumps(run), flush=True)

    metric = results["runs"][0]["metric"]
    print(f"\n| ratio | latents per {args.seq_len} tokens | latent floats per token | held-out {metric} (mean ± std) | seeds |")
    print("|---|---:|---:|---:|---:|")
    for ratio in ratios:
        runs = [r for r in results["runs"] if r["ratio"] == ratio]
        values = [r["value"] for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {Fraction(ratio).limit_denominator(1000)} | {runs[0]['latent_len']} | {runs[0]['latent_floats_per_symbol']:.1f} | "
              f"{statistics.mean(values):.4f} ± {std:.4f} | {len(values)} |")


if __name__ == "__main__":
    main()
