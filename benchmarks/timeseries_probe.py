"""Time-series reduction limit: held-out NRMSE at several ratios and seeds, next to truncated DCT and PCA.

For every (ratio, seed) it trains a timeseries model on the --train CSVs under the same time budget and
scores it on the --test CSVs (never seen in training). The two classical baselines get exactly the
model's storage budget per window, m latents x latent_dim floats:

- truncated DCT: per channel, the lowest-frequency orthonormal DCT-II coefficients of the window;
- PCA on windows: the leading principal components of full training windows (taken at every patch
  offset, so there are enough of them), applied to each test window.

Both fit their coefficients by least squares on the observed values of a window, so missing values and a
shorter last window are handled the way the model handles them (not scored). All three are scored by
TimeSeriesDomain.metric_totals on the same windows (nrmse in units of each channel's training std, and r2
against each window's own mean). With --latent-dim left at its default, patch x channels, "ratio" is also
the number of stored floats per input value.

--split F cuts each --train file chronologically instead: its first F of rows train, the rest test (the
pieces are written to OUT/data/). Results go to OUT/results.json after every run (a killed probe resumes);
a Markdown table is printed at the end.

Example (docs/timeseries.md):
    bash scripts/get_timeseries_data.sh
    python benchmarks/timeseries_probe.py --train .cache/data/timeseries/co2.csv --split 0.75 --steps 512 \
        --patch 8 --ratios 0.5,0.25,0.125,0.0625 --seeds 3 --minutes 2 -o runs/timeseries_probe
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
from fractions import Fraction
from pathlib import Path

import torch

import seqcompress  # noqa: F401
from seqcompress.api import fit
from seqcompress.atomic import atomic_write_text
from seqcompress.domains.timeseries import TimeSeriesDomain, read_csv
from seqcompress.model import load_model
from seqcompress.train import TrainOptions, collate


def split_file(path: Path, fraction: float, out: Path) -> tuple[Path, Path]:
    """The first `fraction` of a CSV's data rows and the rest, as two CSVs with the same header."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = 1 + round((len(lines) - 1) * fraction)
    out.mkdir(parents=True, exist_ok=True)
    train, test = out / f"{path.stem}.train.csv", out / f"{path.stem}.test.csv"
    atomic_write_text(train, "".join(lines[:cut]))
    atomic_write_text(test, "".join(lines[:1] + lines[cut:]))
    return train, test


def shifted_copies(paths: list[Path], shifts: int, steps: int, out: Path) -> list[Path]:
    """Each training CSV, and `shifts - 1` copies that start steps/shifts, 2 steps/shifts, ... rows later, so the
    model sees windows cut at several offsets (the PCA baseline gets windows at every patch offset)."""
    copies = list(paths)
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        for k in range(1, shifts):
            copy = out / f"{path.stem}.shift{k}.csv"
            atomic_write_text(copy, "".join(lines[:1] + lines[1 + k * steps // shifts:]))
            copies.append(copy)
    return copies


def score(domain, outputs, targets) -> dict[str, float]:
    totals: dict[str, float] = {}
    for out, target in zip(outputs, targets):
        mask = torch.ones(1, len(target), dtype=torch.bool)
        for key, value in domain.metric_totals(out[None], target[None], mask).items():
            totals[key] = totals.get(key, 0.0) + value
    return domain.metric_values(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--test", nargs="*", default=[])
    parser.add_argument("--split", type=float, default=None, help="split each --train file: this share of rows trains")
    parser.add_argument("--steps", type=int, default=512, help="time steps per window (seq-len x patch)")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--latent-dim", type=int, default=None, help="default: patch x channels")
    parser.add_argument("--ratios", default="0.5,0.25,0.125,0.0625")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per run")
    parser.add_argument("--epochs", type=float, default=None, help="train this many epochs instead of --minutes")
    parser.add_argument("--decay-epochs", type=float, default=5.0,
                        help="epochs of linear LR decay 1e-3 -> 1e-4 (the paper's 5; small data sets need more)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-shifts", type=int, default=1,
                        help="train on each file cut into windows at this many offsets (data augmentation)")
    parser.add_argument("--model", default=None, help='model settings as JSON, e.g. \'{"d_model": 64, "dropout": 0.1}\'')
    parser.add_argument("--domain-state", default=None, help='domain settings as JSON, e.g. \'{"keep_columns": true}\'')
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    if args.steps % args.patch:
        parser.error("--steps must be a multiple of --patch")

    out = Path(args.output)
    train, test = [Path(p) for p in args.train], [Path(p) for p in args.test]
    if args.split is not None:
        pieces = [split_file(p, args.split, out / "data") for p in train]
        train, test = [a for a, _ in pieces], [b for _, b in pieces]
    if not test:
        parser.error("give --test files or --split")
    fit_files = shifted_copies(train, args.train_shifts, args.steps, out / "data") if args.train_shifts > 1 else train
    settings = {"patch": args.patch, **(json.loads(args.domain_state) if args.domain_state else {})}
    probe = TimeSeriesDomain.from_state(settings)
    probe.learn(train)
    latent_dim = args.latent_dim or args.patch * probe.channels
    seq_len = args.steps // args.patch

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": []}
    done = {(r["ratio"], r["seed"]) for r in results["runs"]}
    ratios = [float(r) for r in args.ratios.split(",")]
    for ratio in ratios:
        for seed in range(args.seeds):
            if (ratio, seed) in done:
                continue
            model_dir = out / f"r{ratio}-s{seed}"
            summary = fit(TimeSeriesDomain.from_state(settings), fit_files, model_dir, seq_len=seq_len, ratio=ratio,
                          model_options={**(json.loads(args.model) if args.model else {}), "latent_dim": latent_dim},
                          options=TrainOptions(epochs=args.epochs, max_minutes=None if args.epochs else args.minutes,
                                               decay_epochs=args.decay_epochs, seed=seed,
                                               batch_size=args.batch_size, val_fraction=0.02), force=True)
            model, meta = load_model(model_dir)
            domain = TimeSeriesDomain.from_state(meta["domain"])
            test_windows = domain.load_windows(test, seq_len)
            outputs = []
            with torch.inference_mode():
                for i in range(0, len(test_windows), 8):
                    x, lengths = collate(test_windows[i : i + 8])
                    y, _, _ = model(x, lengths)
                    outputs += [y[b, :n] for b, n in enumerate(lengths.tolist())]
            floats = [model.config.latent_length(len(w)) * latent_dim for w in test_windows]
            train_windows = shifted_windows(domain, train, args.steps, seq_len)
            dct = domain.dct_baseline(train_windows, test_windows, floats)
            pca = domain.pca_baseline(train_windows, test_windows, floats)
            run = {"ratio": ratio, "seed": seed, "latent_dim": latent_dim, "steps": args.steps, "patch": args.patch,
                   "model": score(domain, outputs, test_windows), "dct": score(domain, dct, test_windows),
                   "pca": score(domain, pca, test_windows),
                   "stored_floats_per_value": sum(floats) / sum(len(w) * domain.values_width for w in test_windows),
                   "train_steps": summary["steps"], "epochs": summary["epochs"], "seconds": summary["seconds"],
                   "test_windows": len(test_windows)}
            results["runs"].append(run)
            results["setup"] = {"train": [str(p) for p in train], "test": [str(p) for p in test],
                                "domain_state": settings, "minutes_per_run": None if args.epochs else args.minutes,
                                "epochs_per_run": args.epochs, "decay_epochs": args.decay_epochs,
                                "train_shifts": args.train_shifts, "model": json.loads(args.model) if args.model else {},
                                "batch_size": args.batch_size,
                                "machine": {"processor": platform.machine(), "cpus": os.cpu_count()}}
            atomic_write_text(results_path, json.dumps(results, indent=2))
            print(json.dumps(run), flush=True)

    print(f"\n| ratio | latents per {args.steps} steps | stored floats per value | model nrmse | model r2 | "
          "DCT nrmse | PCA nrmse | seeds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for ratio in ratios:
        runs = [r for r in results["runs"] if r["ratio"] == ratio]

        def cell(key: str, metric: str = "nrmse") -> str:
            values = [r[key][metric] for r in runs if r[key] is not None]
            if not values:
                return "n/a"
            return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"

        print(f"| {Fraction(ratio).limit_denominator(1000)} | {math.ceil(args.steps // args.patch * ratio)} | "
              f"{runs[0]['stored_floats_per_value']:.3f} | {cell('model')} | {cell('model', 'r2')} | {cell('dct')} | "
              f"{cell('pca')} | {len(runs)} |")


def shifted_windows(domain: TimeSeriesDomain, paths: list[Path], steps: int, seq_len: int) -> list[torch.Tensor]:
    """Full windows of the training files starting at every patch offset (PCA needs more windows than a file
    has when cut only once)."""
    windows = []
    for path in paths:
        values, _ = domain._channel_values(path, read_csv(path))
        for shift in range(0, min(steps, len(values)), domain.patch):
            windows += [w for w in domain.series_windows(values[shift:], seq_len, str(path)) if len(w) == seq_len]
    return windows


if __name__ == "__main__":
    main()
