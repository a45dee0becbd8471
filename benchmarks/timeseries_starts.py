"""What a fresh `--resize-init pca` model computes on a time series' held-out tail, for each layout.

A model started as "pca" (`Domain.start_basis`) carries each patch's values on their principal axes in the
training windows and keeps the first latent_dim of them per latent row; along the sequence it is the
truncated DCT (identity at ratio 1). So one number of stored floats per value can be spent in many layouts:
short patches and few floats each, long patches and many, or a shorter sequence of wider rows. This script
scores each layout's start, with no training, through the probe's own split, normalisation (RevIN) and
metric, so its figures sit in the same units as the probe's table (`docs/timeseries.md`). Each row: patch,
ratio, latent_dim, stored floats per value (RevIN's two floats per channel and window counted), NRMSE, and
the window PCA's NRMSE (the probe's patch-1 `pca`: windows of 512 steps fitted at every time step) given the
same stored floats on the same held-out values.

Usage: python benchmarks/timeseries_starts.py [CSV] [--columns Open,High,Low,Close,Volume] [--json OUT]
(default: .cache/data/timeseries/msft.csv from scripts/get_timeseries_data.sh). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from seqcompress.baselines import SeriesPca
from seqcompress.classical import WindowPCA
from seqcompress.compress import evaluate_quantized
from seqcompress.domains import get_domain
from seqcompress.model import build_model
from seqcompress.probe import Probe, ProbePlan

WINDOW = 512  # time steps per window, as in the probe's tables
# (patch, ratio, latent_dim): ratio 1 with narrow rows, and shorter sequences of wider rows
LAYOUTS = [(1, 1.0, 2), (2, 1.0, 5), (4, 1.0, 10), (8, 1.0, 20), (16, 1.0, 40),
           (1, 1.0, 1), (2, 1.0, 2), (4, 1.0, 5), (8, 1.0, 10), (16, 1.0, 20), (32, 1.0, 40), (64, 1.0, 80),
           (2, 0.5, 5), (4, 0.5, 10), (8, 0.5, 20), (16, 0.5, 40), (8, 0.25, 40), (4, 0.5, 20), (8, 0.5, 40)]


def _probe(path: Path, columns: list[str], patch: int, ratio: float, latent_dim: int, scratch: Path) -> Probe:
    state = {"patch": patch, "revin": True, "columns": columns, "keep_columns": True}
    width = 2 * patch * len(columns) + 2 * len(columns)  # values, observed mask, RevIN's statistics
    d_model = max(128, -(-max(width, latent_dim) // 4) * 4)
    plan = ProbePlan(domain="timeseries", domain_state=state, data=[str(path)], held_out=0.25, split="chronological",
                     train_shifts=4, cells=[(WINDOW // patch, ratio)], seeds=1,
                     model={"d_model": d_model, "heads": 4, "layers": 2, "ffn_dim": 4 * d_model,
                            "latent_dim": latent_dim, "resize_init": "pca"},
                     training={"max_steps": 1}, dtype="float32")
    return Probe(plan, get_domain("timeseries", state), scratch, force=True)


def window_pca(path: Path, columns: list[str], scratch: Path) -> WindowPCA:
    """The probe's window PCA at patch 1: fitted on every full training window of WINDOW steps, one at every
    time step (the probe's `pca` column of its patch-1 runs)."""
    probe = _probe(path, columns, 1, 1.0, 1, scratch)
    domain, split = probe.learned_domain(), probe.split(WINDOW)
    values = SeriesPca(domain).values
    return WindowPCA([values(w) for w in split.codec_windows(WINDOW)], WINDOW)


def start_row(path: Path, columns: list[str], patch: int, ratio: float, latent_dim: int, scratch: Path,
              pca: WindowPCA) -> dict:
    """A layout's fresh pca-start model, and the window PCA given the same stored floats on the very same held-out
    values (each tail is cut on a patch boundary, so layouts score slightly different stretches of days)."""
    seq_len = WINDOW // patch
    probe = _probe(path, columns, patch, ratio, latent_dim, scratch)
    domain, split = probe.learned_domain(), probe.split(seq_len)
    config = probe.config("attention", seq_len, ratio)
    model = build_model(config, seed=0, feature_basis=domain.start_basis("pca", lambda: split.train)).eval()
    metrics = evaluate_quantized(model, domain.objective, split.test, "float32")
    floats = [config.latent_length(len(w)) * latent_dim for w in split.test]
    layout = SeriesPca(domain)  # reads and writes this layout's windows; the fit is the patch-1 one
    totals, observed = domain.objective.accumulator(), 0
    for window, budget in zip(split.test, floats):
        values, seen = layout.values(window)
        rebuilt = layout.as_window(pca.reconstruct(values, seen, budget), window)
        totals.add(rebuilt[None].float(), window[None], torch.ones(1, len(window), dtype=torch.bool))
        observed += int(seen.sum())
    values = sum(len(w) for w in split.test) * patch * len(columns)
    side = sum(domain.side_floats(w) for w in split.test)
    return {"patch": patch, "ratio": ratio, "latent_dim": latent_dim,
            "floats_per_value": round((sum(floats) + side) / values, 4), "nrmse": round(metrics["nrmse"], 6),
            "window_pca_nrmse": round(totals.values()["nrmse"], 6), "observed_values": observed,
            "train_windows": len(split.train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, default=Path(".cache/data/timeseries/msft.csv"))
    parser.add_argument("--columns", default="Open,High,Low,Close,Volume")
    parser.add_argument("--json", type=Path, help="also write the result there")
    args = parser.parse_args()
    columns = args.columns.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        pca = window_pca(args.csv, columns, Path(scratch) / "pca")
        rows = [start_row(args.csv, columns, *layout, Path(scratch) / "probe", pca) for layout in LAYOUTS]
    result = {"data": str(args.csv), "columns": columns, "window": WINDOW,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
              "rows": rows}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
