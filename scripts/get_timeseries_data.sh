#!/usr/bin/env bash
# Fetch the time-series CSVs used by the timeseries probe and CLI checks into a cache folder outside git.
# They come out of the statsmodels wheel (its datasets are public domain; statsmodels itself is BSD-3-Clause
# and is never installed or imported: only its CSV files are read).
# Usage: bash scripts/get_timeseries_data.sh [CACHE_DIR]   (default: .cache/data in the repo)
#   co2.csv        weekly Mauna Loa CO2, 1958-2001: date (YYYYMMDD), co2 (ppmv); 2,284 rows, 59 missing
#   sunspots.csv   yearly sunspot activity: YEAR, SUNACTIVITY; 309 rows (1700-2008)
#   macrodata.csv  US macroeconomic data, quarterly 1959-2009: year, quarter and 12 series; 203 rows
# and two longer series out of the pmdarima wheel (MIT; only its data files are read):
#   sunspots_monthly.csv  monthly mean sunspot numbers, 1749-1983: month (YYYY-MM), sunspots; 2,820 rows
#   msft.csv              Microsoft daily stock prices, 1986-2017: Date, Open, High, Low, Close, Volume,
#                         OpenInt (always 0); 7,983 rows
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-${SEQCOMPRESS_DATA:-$here/.cache/data}}
version=0.15.0
out="$cache/timeseries"
mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

if [ ! -s "$out/co2.csv" ] || [ ! -s "$out/sunspots.csv" ] || [ ! -s "$out/macrodata.csv" ]; then
  pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "statsmodels==$version"
  whl=$(ls "$tmp"/statsmodels-"$version"-*.whl | head -n 1)
  for name in co2 sunspots macrodata; do
    unzip -p "$whl" "statsmodels/datasets/$name/$name.csv" > "$out/$name.csv"
  done
fi
if [ ! -s "$out/sunspots_monthly.csv" ] || [ ! -s "$out/msft.csv" ]; then
  pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "pmdarima==2.1.1"
  whl=$(ls "$tmp"/pmdarima-2.1.1-*.whl | head -n 1)
  unzip -p "$whl" pmdarima/datasets/data/msft.tar.gz | tar -xzO msft.csv 2>/dev/null | tr -d '\r' > "$tmp/msft.csv"
  mv "$tmp/msft.csv" "$out/msft.csv"
  # sunspots.txt.gz: one row per year (1749-1983), twelve monthly values per row
  unzip -p "$whl" pmdarima/datasets/data/sunspots.txt.gz | gunzip \
    | awk 'BEGIN { print "month,sunspots" } NF { for (m = 1; m <= NF; m++) printf "%d-%02d,%s\n", 1748 + NR, m, $m }' \
    > "$tmp/sunspots_monthly.csv"
  mv "$tmp/sunspots_monthly.csv" "$out/sunspots_monthly.csv"
fi
# and a multivariate set of many short series out of the sktime wheel (BSD-3-Clause; the UCR/UEA archive's
# data, free for research: Bagnall et al., "The UEA multivariate time series classification archive", 2018):
#   basicmotions/{train,test}/NN_<activity>.csv  6-axis smartwatch motion (accelerometer x, y, z and gyroscope
#                 x, y, z at 10 Hz), 40 + 40 recordings of 100 steps: one CSV per recording, column t first
if [ "$(ls "$out/basicmotions/train" "$out/basicmotions/test" 2>/dev/null | grep -c csv)" != 80 ]; then
  pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "sktime==1.2.0"
  whl=$(ls "$tmp"/sktime-1.2.0-*.whl | head -n 1)
  for part in train test; do
    upper=$(echo "$part" | tr a-z A-Z)
    mkdir -p "$tmp/basicmotions/$part"
    unzip -p "$whl" "sktime/datasets/data/BasicMotions/BasicMotions_$upper.ts" | tr -d '\r' \
      | awk -v dir="$tmp/basicmotions/$part" '
          /^[@#]/ || !NF { next }
          { n = split($0, dims, ":"); file = sprintf("%s/%02d_%s.csv", dir, row++, dims[n])
            for (c = 1; c < n; c++) { steps = split(dims[c], v, ","); for (t = 1; t <= steps; t++) x[c, t] = v[t] }
            print "t,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z" > file
            for (t = 1; t <= steps; t++) {
              line = t - 1; for (c = 1; c < n; c++) line = line "," x[c, t]; print line > file }
            close(file) }'
  done
  rm -rf "$out/basicmotions"; mv "$tmp/basicmotions" "$out/basicmotions"
fi
echo "$out"
