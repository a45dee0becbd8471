"""Text decode memory and the cost of `encode --compare` (docs/reliability.md).

Text decode is where memory used to grow: 30,522-way logits per batch fragmented the heap (3.7-6 GB for a
400 KB file). This runs `seqcompress encode` and `seqcompress decode` of a 1 MB and a 10 MB text file, each in a
fresh process, and reads the peak resident memory from the kernel (wait4's ru_maxrss); flat memory means the
10 MB decode peaks where the 1 MB one does. It also times `encode` of the 10 MB file with and without
`--compare` (gzip -9, bzip2 -9 and xz -9 of the input), side by side. The model is small and untrained
(benchmarks/bench_stream.py's text setup): the pipeline is measured, not the model. Prints one JSON object.

    bash scripts/get_data.sh                  # the Wikipedia text, once
    .venv/bin/python benchmarks/bench_compress.py > docs/data/bench_compress.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stream import CLI, MODEL, ROOT, input_file, measure, model_dir, run  # noqa: E402

FULL = 100_000_000  # bench_stream's text size; a share of it gives each size below


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_compress")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SEQCOMPRESS_DATA", ROOT / ".cache" / "data")))
    parser.add_argument("--sizes-mb", type=float, nargs="*", default=[1.0, 10.0])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    decode = {}
    for mb in args.sizes_mb:
        decode[f"{mb:g} MB"] = row = measure(args.work, "text", mb * 1e6 / FULL, args.data, args.batch_size)
        print(f"text {mb:g} MB: {json.dumps(row)}", file=sys.stderr)
    sizes = sorted(args.sizes_mb)
    growth = decode[f"{sizes[-1]:g} MB"]["decode"]["peak_rss_mb"] / decode[f"{sizes[0]:g} MB"]["decode"]["peak_rss_mb"]

    path = input_file(args.work, "text", sizes[-1] * 1e6 / FULL, args.data)
    model = model_dir(args.work, "text")
    compare = {}
    for flag in ("--no-compare", "--compare"):
        out = args.work / "compare.sqz"
        out.unlink(missing_ok=True)
        compare[flag] = run(CLI + ["encode", "-m", str(model), str(path), "-o", str(out), flag, "--device", "cpu"])
        print(f"encode {flag}: {json.dumps(compare[flag])}", file=sys.stderr)
        out.unlink(missing_ok=True)

    import torch

    print(json.dumps({
        "benchmark": "bench_compress",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "model": MODEL, "batch_size": args.batch_size,
        "text_decode": decode,
        "decode_rss_largest_over_smallest": round(growth, 3),
        "encode_compare": {"input_bytes": path.stat().st_size, **compare,
                           "seconds_with_over_without": round(compare["--compare"]["seconds"]
                                                              / compare["--no-compare"]["seconds"], 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
