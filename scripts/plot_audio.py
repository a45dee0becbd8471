"""Plot an audio file next to a model's reconstruction: waveforms and log spectrograms, one PNG.

    .venv/bin/python scripts/plot_audio.py --model MODEL_DIR INPUT.wav --output docs/img/audio.png \
        [--start 1.0 --seconds 2.0] [--dtype float16]

The reconstruction is what `encode` (latents stored as --dtype) then `decode` write: the file is
encoded and decoded through a temporary .sqz file. The first channel is shown, at the file's own rate.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="WAV or FLAC file")
    parser.add_argument("--model", "-m", type=Path, required=True, help="audio model directory")
    parser.add_argument("--output", "-o", type=Path, required=True, help="PNG to write")
    parser.add_argument("--dtype", default="float16", help="stored latent type (as encode --dtype)")
    parser.add_argument("--start", type=float, default=0.0, help="seconds into the file to start the plot")
    parser.add_argument("--seconds", type=float, default=None, help="seconds to plot (default: to the end)")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import soundfile as sf
    import torch

    import seqcompress  # noqa: F401
    from seqcompress.api import evaluate_files
    from seqcompress.atomic import atomic_open
    from seqcompress.cli.files import load_model_and_domain
    from seqcompress.compress import decode_file, encode_file

    model, meta, domain = load_model_and_domain(args.model, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        sqz, back = Path(tmp) / "x.sqz", Path(tmp) / ("back" + args.input.suffix)
        encode_file(model, meta, domain, args.input, sqz, dtype=args.dtype)
        decode_file(model, meta, domain, sqz, back)
        original, rate = sf.read(str(args.input), always_2d=True)
        rebuilt, _ = sf.read(str(back), always_2d=True)
    metrics = evaluate_files(args.model, [args.input], dtype=args.dtype)["metrics"]
    first = int(args.start * rate)
    last = len(original) if args.seconds is None else min(len(original), first + int(args.seconds * rate))
    x, y = original[first:last, 0], rebuilt[first:last, 0]
    t = first / rate + np.arange(len(x)) / rate

    fig, axes = plt.subplots(3, 1, figsize=(10, 6.5), sharex=True)
    axes[0].plot(t, x, lw=0.5, color="black", label="original")
    axes[0].plot(t, y, lw=0.5, color="tab:red", alpha=0.7, label="reconstruction")
    axes[0].set_ylabel("amplitude")
    axes[0].legend(loc="upper right")
    axes[0].set_title(f"{args.input.name}: SI-SDR {metrics['si_sdr']:.2f} dB, SNR {metrics['snr']:.2f} dB, "
                      f"log-mel distance {metrics['log_mel_distance']:.2f} dB (whole file, latents as {args.dtype})")
    n_fft = 2 ** int(np.round(np.log2(rate * 0.032)))  # about 32 ms
    window = torch.hann_window(n_fft, dtype=torch.float64)
    for ax, signal, name in ((axes[1], x, "original"), (axes[2], y, "reconstruction")):
        spec = torch.stft(torch.from_numpy(signal), n_fft, n_fft // 4, window=window, return_complex=True).abs()
        db = 20 * np.log10(spec.numpy() + 1e-6)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                  extent=(t[0], t[-1], 0, rate / 2000))
        ax.set_ylabel(f"{name}\nkHz")
    axes[2].set_xlabel("seconds")
    fig.tight_layout()
    with atomic_open(args.output, "wb") as handle:
        fig.savefig(handle, format="png", dpi=60)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
