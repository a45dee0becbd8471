"""Encode/decode throughput and peak memory of the text model on a large file. Prints one JSON object.

The input is the Wikipedia corpus (bash scripts/get_data.sh) repeated up to --size-mb. Each phase
runs in its own process so that its peak resident memory (ru_maxrss) is its own. Without --model
an untrained model of the default text configuration (seq-len 512, ratio 0.5) is used: speed and
memory do not depend on the weights.

Usage: python benchmarks/bench_compress.py [--size-mb 50] [--model DIR] [--dtype float16] [--phases encode,decode]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def phase(kind: str, model_dir: str, src: str, sqz: str, out: str, dtype: str, batch: int) -> None:
    """Run one phase in this process and print its JSON line."""
    import torch

    import seqcompress  # noqa: F401
    from seqcompress.compress import decode_file, encode_file
    from seqcompress.domains import get_domain
    from seqcompress.model import load_model

    model, meta = load_model(model_dir)
    domain = get_domain("text")
    start = time.perf_counter()
    if kind == "encode":
        report = encode_file(model, meta, domain, src, sqz, dtype=dtype, batch_size=batch)
    else:
        report = decode_file(model, meta, domain, sqz, out)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "phase": kind, "seconds": seconds, "symbols": report["symbols"], "symbols_per_s": report["symbols"] / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
        **({"sqz_bytes": report["sqz_bytes"], "input_bytes": report["input_bytes"]} if kind == "encode" else {}),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--model", default=None, help="model directory (default: untrained default text config)")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--phases", default="encode,decode")
    parser.add_argument("--corpus", default=str(HERE.parent / ".cache" / "data" / "wiki.txt"))
    parser.add_argument("--_phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_files", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._phase:
        phase(args._phase, args.model, *args._files, args.dtype, args.batch_size)
        return
    corpus = Path(args.corpus)
    if not corpus.is_file():
        sys.exit(f"{corpus} is missing: run bash scripts/get_data.sh first")
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        tmp_path = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            import seqcompress  # noqa: F401
            from seqcompress.domains import get_domain
            from seqcompress.model import ModelConfig, build_model

            model_dir = str(tmp_path / "model")
            build_model(ModelConfig(n_max=512, ratio=0.5, **get_domain("text").model_fields())).save(
                model_dir, domain=get_domain("text").state())
        src = tmp_path / "big.txt"
        text = corpus.read_text(encoding="utf-8")
        target = int(args.size_mb * 1e6)
        with open(src, "w", encoding="utf-8") as f:
            written = 0
            while written < target:
                piece = text[: target - written]
                f.write(piece)
                written += len(piece.encode("utf-8"))
        input_mb = src.stat().st_size / 1e6
        files = [str(src), str(tmp_path / "big.sqz"), str(tmp_path / "back.txt")]
        results = []
        for kind in args.phases.split(","):
            cmd = [sys.executable, __file__, "--_phase", kind, "--model", model_dir, "--dtype", args.dtype,
                   "--batch-size", str(args.batch_size), "--_files", *files]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps({
        "benchmark": "compress_throughput_and_memory", "input_mb": input_mb,
        "dtype": args.dtype, "batch_size": args.batch_size, "model": args.model or "untrained default text config",
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "phases": results,
    }, indent=2))


if __name__ == "__main__":
    main()
