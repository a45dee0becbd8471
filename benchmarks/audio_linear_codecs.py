"""Linear codecs at the audio model's stored floats: which starting point can reach the truncated DCT?

The time-series model starts as the truncated DCT (`--resize-init dct`): W_S is the DCT along the
sequence, the feature maps are identities. For audio the sequence is of 20 ms frames, so the same start
computes a DCT along the frame index for each sample position (or, after a per-frame DCT front end, for
each frame frequency): a two-dimensional truncation, not the waveform DCT the probe compares with. This
script measures, with no training and in one run, the held-out SI-SDR of every linear codec that keeps
exactly the floats the model stores per window (ratio x seq_len x latent_dim):

  window_dct      the probe's `dct` baseline: the window's lowest K waveform DCT coefficients
  start_raw       what `--resize-init dct` computes on today's raw frames: the lowest m = ratio x seq_len
                  frame-index DCT coefficients of the first latent_dim samples of each frame
  start_frame_dct the same start on a per-frame DCT front end: m frame-index frequencies x the lowest
                  latent_dim coefficients of each frame
  frame_dct       no sequence reduction (ratio 1): the lowest K / seq_len DCT coefficients of each frame
  frame_pca       no sequence reduction: each frame projected on the K / seq_len leading principal axes
                  of the training frames (a linear autoencoder fitted in closed form)

SI-SDR is the audio domain's: per window, scale-invariant, averaged over non-silent windows (full windows
only, at the model rate). Prints one JSON object.

Usage: python benchmarks/audio_linear_codecs.py --train TRAIN.wav ... --test TEST.wav ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np
import soundfile as sf
import torch

from seqcompress.domains.audio import SILENCE_POWER, SISDR_CAP
from seqcompress.domains.audio_signal import dct, idct, resample


def windows(paths: list[str], rate: int, length: int) -> torch.Tensor:
    """Full windows of `length` samples at `rate`, each channel of each file cut from its start."""
    out = []
    for path in paths:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
        signal = resample(torch.from_numpy(data.T.copy()), file_rate, rate)  # (C, T)
        whole = signal.shape[1] // length
        out.append(signal[:, : whole * length].reshape(-1, length))
    return torch.cat(out).double()


def si_sdr(y: torch.Tensor, x: torch.Tensor) -> float:
    """Reconstructions y and windows x (W, N) -> mean SI-SDR (dB) of the non-silent windows, each capped at
    +-SISDR_CAP: `AudioObjective.totals`'s definition for full windows."""
    energy = x.square().sum(1)
    audible = energy > SILENCE_POWER * x.shape[1]
    alpha = (y * x).sum(1) / energy.clamp(min=1e-300)
    projected = alpha.square() * energy
    residual = (y - alpha[:, None] * x).square().sum(1)
    value = (10 * torch.log10(projected.clamp(min=1e-300) / residual.clamp(min=1e-300))).clamp(-SISDR_CAP, SISDR_CAP)
    return float(value[audible].mean())


def keep_low(c: torch.Tensor, k: int) -> torch.Tensor:
    """Coefficients (..., N) -> the same with all but the first k zeroed."""
    out = torch.zeros_like(c)
    out[..., :k] = c[..., :k]
    return out


def codecs(x: torch.Tensor, train: torch.Tensor, seq_len: int, frame: int, ratio: float, latent_dim: int) -> dict:
    m = round(ratio * seq_len)
    k = m * latent_dim  # stored floats per window
    per_frame = k // seq_len
    frames = x.reshape(len(x), seq_len, frame)  # (W, n, S)
    out = {"window_dct": idct(keep_low(dct(x), k))}
    # the DCT along the frame index (dim 1) keeps m rows; the first latent_dim features of each are stored
    along_frames = dct(frames.transpose(1, 2)).transpose(1, 2)  # (W, n, S): frame-index frequencies
    kept = torch.zeros_like(along_frames)
    kept[:, :m, :latent_dim] = along_frames[:, :m, :latent_dim]
    out["start_raw"] = idct(kept.transpose(1, 2)).transpose(1, 2).reshape(len(x), -1)
    spectra = dct(frames)  # (W, n, S): per-frame DCT coefficients
    along = dct(spectra.transpose(1, 2)).transpose(1, 2)
    kept = torch.zeros_like(along)
    kept[:, :m, :latent_dim] = along[:, :m, :latent_dim]
    out["start_frame_dct"] = idct(idct(kept.transpose(1, 2)).transpose(1, 2)).reshape(len(x), -1)
    out["frame_dct"] = idct(keep_low(spectra, per_frame)).reshape(len(x), -1)
    train_frames = train.reshape(-1, frame)
    mean = train_frames.mean(0)
    _, _, vh = torch.linalg.svd(train_frames - mean, full_matrices=False)
    axes = vh[:per_frame]  # (p, S)
    centred = frames - mean
    out["frame_pca"] = ((centred @ axes.T) @ axes + mean).reshape(len(x), -1)
    return {name: si_sdr(y, x) for name, y in out.items()} | {"stored_floats_per_window": k, "latents": m,
                                                              "floats_per_frame_without_reduction": per_frame}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--test", nargs="+", required=True)
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--frame-ms", type=float, default=20.0)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--ratios", default="0.5,0.25,0.125")
    args = parser.parse_args()
    frame = round(args.rate * args.frame_ms / 1000)
    length = frame * args.seq_len
    train, test = windows(args.train, args.rate, length), windows(args.test, args.rate, length)
    cells = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        cells.append({"ratio": ratio, "kbit_s_float16": ratio * args.latent_dim * 16 * 1000 / args.frame_ms / 1000}
                     | codecs(test, train, args.seq_len, frame, ratio, args.latent_dim))
    print(json.dumps({"benchmark": "audio_linear_codecs", "rate": args.rate, "frame_samples": frame,
                      "seq_len": args.seq_len, "latent_dim": args.latent_dim, "train_windows": len(train),
                      "test_windows": len(test), "metric": "si_sdr_db", "cells": cells,
                      "machine": {"processor": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__}}, indent=1))


if __name__ == "__main__":
    main()
