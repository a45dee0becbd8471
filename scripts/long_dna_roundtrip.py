"""A long FASTA through the CLI with memory: fit, encode, decode, and check the record structure.

Usage: python scripts/long_dna_roundtrip.py FASTA[.gz] [--memory 512] [--seq-len 512] [--steps 200]

Trains a small DNA model with `--positions t5 --memory M` on the file itself, encodes it, decodes it, and prints
one JSON object on stdout: records and bases, whether every header and every line length came back exactly,
the decoded base accuracy next to what `seqcompress evaluate` reports, the `.sqz` size and the wall time of
each command. Exits non-zero when the structure is not exact. The default input for the docs is chromosome I
of S. cerevisiae from scripts/get_data.sh (one record, 230,218 bases).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fasta", type=Path)
    parser.add_argument("--memory", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    raw = args.fasta.read_bytes()
    text = (gzip.decompress(raw) if args.fasta.suffix == ".gz" else raw).decode("ascii")
    seconds: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fasta = tmp / "in.fa"
        fasta.write_text(text)

        def sq(name: str, *cli) -> str:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "seqcompress", *map(str, cli)], capture_output=True,
                                  text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            seconds[name] = round(time.perf_counter() - start, 2)
            if done.returncode:
                sys.exit(f"long_dna_roundtrip: {name} failed: {done.stderr.strip().splitlines()[-1:]}")
            return done.stdout

        model, sqz, back = tmp / "model", tmp / "in.sqz", tmp / "back.fa"
        sq("fit", "fit", "--domain", "dna", fasta, "-o", model, "--seq-len", args.seq_len, "--ratio", args.ratio,
           "-D", "k=1", "--decay-epochs", 5, "--positions", "t5", "--memory", args.memory, "--max-steps", args.steps, "-q")
        sq("encode", "encode", "-m", model, fasta, "-o", sqz)
        sq("decode", "decode", "-m", model, sqz, "-o", back)
        evaluated = json.loads(sq("evaluate", "evaluate", "-m", model, fasta, "--json"))
        info = json.loads(sq("info", "info", sqz, "--json"))
        original, decoded = text.splitlines(), back.read_text().splitlines()
        sqz_bytes = sqz.stat().st_size

    headers = [line for line in original if line.startswith(">")]
    bases = [line for line in original if not line.startswith(">")]
    got = [line for line in decoded if not line.startswith(">")]
    same = sum(a == b for x, y in zip(bases, got) for a, b in zip(x.upper(), y.upper()))
    total = sum(map(len, bases))
    result = {
        "input": args.fasta.name,
        "records": len(headers),
        "bases": total,
        "lines": len(original),
        "seq_len": args.seq_len,
        "ratio": args.ratio,
        "memory": args.memory,
        "fit_steps": args.steps,
        "headers_exact": [line for line in decoded if line.startswith(">")] == headers,
        "line_lengths_exact": [len(line) for line in decoded] == [len(line) for line in original],
        "sqz_memory": info["model"]["memory"],
        "decoded_accuracy": same / total,
        "evaluate_value": evaluated["value"],
        "sqz_bytes": sqz_bytes,
        "seconds": seconds,
        "machine": f"{os.cpu_count()} CPU cores",
    }
    print(json.dumps(result, indent=1))
    return 0 if result["headers_exact"] and result["line_lengths_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
