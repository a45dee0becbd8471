#!/usr/bin/env bash
# Regenerate seqcompress/data/speech_sample.flac: about 5 s of espeak-ng speech, 16 kHz mono 16-bit FLAC.
# Needs espeak-ng (Debian: apt-get install espeak-ng) and the project's virtualenv (soundfile, torch).
# espeak-ng writes 22.05 kHz WAV; the domain's own resampler (src/seqcompress/domains/audio_signal.py) takes it to 16 kHz.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=src/seqcompress/data/speech_sample.flac
TEXT="Sequence compression shortens a long signal into a few latent vectors, \
and the decoder rebuilds the sound."
command -v espeak-ng >/dev/null || { echo "espeak-ng is not installed (Debian: apt-get install espeak-ng)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
espeak-ng -v en-us -s 170 -w "$tmp/speech.wav" "$TEXT"
"$PY" - "$tmp/speech.wav" "$OUT" <<'PYEOF'
import sys
import numpy as np
import soundfile as sf
import torch
from seqcompress.domains.audio_signal import resample

data, rate = sf.read(sys.argv[1], dtype="float64", always_2d=True)
x = resample(torch.from_numpy(data[:, 0]).float(), rate, 16000).double().numpy()
x = np.clip(x, -1, 1)
sf.write(sys.argv[2], x, 16000, format="FLAC", subtype="PCM_16")
print(f"{sys.argv[2]}: {len(x) / 16000:.2f} s at 16 kHz (from {rate} Hz espeak-ng output)")
PYEOF
ls -l "$OUT"
