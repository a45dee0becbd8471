#!/usr/bin/env bash
# Fetch real speech for training and probing the audio domain into CACHE_DIR (default .cache/data/audio):
#   pyannote/sample.wav  30 s, two speakers, 16 kHz mono, from the PyPI wheel pyannote-audio 4.0.7 (MIT),
#                        downloaded with `pip download --no-deps` (nothing is installed)
#   espeak/train/*.wav   espeak-ng speech, 22.05 kHz mono: 4 voices (en-us, en-gb, en-gb-scotland, en-029)
#                        reading lead paragraphs 1-24 of the bundled Wikipedia sample (6 each)
#   espeak/test/*.wav    held out by voice AND text: voice en-gb-x-rp reading paragraphs 101-106
# espeak-ng is a Debian package (apt-get install espeak-ng); without it only the pyannote sample is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${1:-.cache/data/audio}
PIP=${PIP:-.venv/bin/pip}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$CACHE/pyannote" "$CACHE/espeak/train" "$CACHE/espeak/test"

if [ ! -s "$CACHE/pyannote/sample.wav" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$PIP" download --no-deps --quiet -d "$tmp" pyannote-audio==4.0.7
  unzip -p "$tmp"/pyannote_audio-4.0.7-py3-none-any.whl pyannote/audio/sample/sample.wav > "$CACHE/pyannote/sample.wav"
fi
echo "pyannote: $CACHE/pyannote/sample.wav ($(stat -c %s "$CACHE/pyannote/sample.wav") bytes)"

if ! command -v espeak-ng >/dev/null; then
  echo "espeak-ng is not installed, so no synthesized speech was made; install it (Debian: apt-get install espeak-ng)" \
       "and run this script again" >&2
  exit 0
fi
# Paragraphs of the bundled Wikipedia sample (CC BY-SA), one per line, at most 400 characters each.
"$PY" - "$CACHE/paragraphs.txt" <<'PYEOF'
import sys
from seqcompress.domain import bundled
docs = [d.strip().replace("\n", " ") for d in bundled("wiki_sample.txt").read_text(encoding="utf-8").split("\n\n") if d.strip()]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for d in docs[:120]:
        f.write(d[:400].rsplit(" ", 1)[0] + "\n")
PYEOF
speak() {  # voice, first paragraph, last paragraph, folder
  for i in $(seq "$2" "$3"); do
    out="$CACHE/espeak/$4/$1-$(printf %03d "$i").wav"
    [ -s "$out" ] || sed -n "${i}p" "$CACHE/paragraphs.txt" | espeak-ng -v "$1" -s 165 -w "$out" --stdin
  done
}
speak en-us 1 6 train
speak en-gb 7 12 train
speak en-gb-scotland 13 18 train
speak en-029 19 24 train
speak en-gb-x-rp 101 106 test
"$PY" - "$CACHE" <<'PYEOF'
import sys, pathlib
import soundfile as sf
for part in ("train", "test"):
    files = sorted(pathlib.Path(sys.argv[1], "espeak", part).glob("*.wav"))
    seconds = sum(sf.info(str(f)).duration for f in files)
    print(f"espeak/{part}: {len(files)} files, {seconds:.0f} s")
PYEOF
