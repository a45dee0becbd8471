"""Size table: one file encoded at every latent dtype next to gzip -9, bzip2 -9 and xz -9, in one run.

Prints a Markdown table, then the same figures as one JSON object on the last line.
Each dtype row also gives the token accuracy of the stored latents (`evaluate --dtype`), so size and
quality are read side by side.

Usage: python benchmarks/size_table.py -m MODEL_DIR FILE
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import seqcompress  # noqa: F401
from seqcompress.api import evaluate_files
from seqcompress.compress import classical_sizes, encode_file
from seqcompress.domains import get_domain
from seqcompress.format import DTYPES
from seqcompress.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("file")
    args = parser.parse_args()
    model, meta = load_model(args.model)
    domain = get_domain(meta["domain"]["name"], meta["domain"])
    path = Path(args.file)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in DTYPES:
            report = encode_file(model, meta, domain, path, Path(tmp) / f"x-{dtype}.sqz", dtype=dtype)
            quality = evaluate_files(args.model, [path], dtype=dtype)
            rows.append({"method": f"sqz {dtype}", "bytes": report["sqz_bytes"],
                         "bits_per_symbol": report["sqz_bits_per_symbol"], domain.metric_name: quality["value"]})
    symbols = report["symbols"]
    for name, size in classical_sizes(path).items():
        rows.append({"method": f"{name} (lossless)", "bytes": size, "bits_per_symbol": 8 * size / symbols,
                     domain.metric_name: 1.0})
    size = path.stat().st_size
    print(f"| method | bytes | bits per {domain.name} symbol | vs input | {domain.metric_name} |")
    print("|---|---:|---:|---:|---:|")
    print(f"| input | {size:,} | {8 * size / symbols:.2f} | 1.00 | 1.0000 |")
    for r in rows:
        print(f"| {r['method']} | {r['bytes']:,} | {r['bits_per_symbol']:.2f} | {r['bytes'] / size:.2f} | "
              f"{r[domain.metric_name]:.4f} |")
    print(json.dumps({"file": str(path), "input_bytes": size, "symbols": symbols, "model": args.model,
                      "latent_floats_per_symbol": report["latent_floats_per_symbol"], "rows": rows}))


if __name__ == "__main__":
    main()
