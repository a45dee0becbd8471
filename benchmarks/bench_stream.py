"""Streaming benchmark: encode and decode of large files in flat memory (docs/streaming.md).

For each input (a 30.4 Mbp chromosome, a FASTQ of 200,000 reads of 150 bases with qualities, a 100 MB text
file, a 2-hour 16 kHz WAV), at full size and at a quarter of it, it runs `seqcompress encode` and
`seqcompress decode` each in a fresh process and reads that process's peak resident memory from the kernel
(wait4's ru_maxrss). The models are small and untrained (a fixed configuration, seed 0): the pipeline is
measured, not the model. Prints one JSON object: per input and size, seconds, symbols/s, peak RSS, sizes,
and the RSS of the full size over the quarter size.

    LARGE=1 bash scripts/get_data.sh          # the chromosome, once
    .venv/bin/python benchmarks/bench_stream.py --work runs/bench_stream > docs/data/bench_stream.json
    .venv/bin/python benchmarks/bench_stream.py --only fastq --scale 0.05   # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "seqcompress.cli.main"]
MODEL = {"d_model": 32, "heads": 2, "layers": 1, "ffn_dim": 64, "latent_dim": 8}
# name -> (domain, n_max, ratio, settings, output suffix)
SETUPS = {
    "chromosome": ("dna", 512, 0.25, {"k": 1}, ".fa"),  # one base per token, as measured in docs/streaming.md
    "fastq": ("dna", 512, 0.25, {"k": 1}, ".fastq"),
    "text": ("text", 512, 0.25, {}, ".txt"),
    "wav": ("audio", 64, 0.25, {}, ".wav"),
}


# ---- inputs -------------------------------------------------------------------------------------------
def make_chromosome(path: Path, share: float, data: Path) -> None:
    """The A. thaliana chromosome 1 (or its first `share` of lines), gzip as shipped."""
    source = data / "athaliana_chr1.fna.gz"
    if not source.is_file():
        raise SystemExit(f"{source} missing: run LARGE=1 bash scripts/get_data.sh")
    with gzip.open(source, "rb") as f:
        lines = sum(1 for _ in f)
    keep = max(2, int(lines * share))
    with gzip.open(source, "rb") as f, gzip.open(path, "wb", compresslevel=6) as out:
        for i, line in enumerate(f):
            if i >= keep:
                break
            out.write(line)


def make_fastq(path: Path, share: float, reads: int = 200_000, length: int = 150) -> None:
    rng = np.random.default_rng(0)
    count = int(reads * share)
    with open(path, "wb") as out:
        for start in range(0, count, 10_000):
            n = min(10_000, count - start)
            bases = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, (n, length))]
            quals = rng.integers(33 + 2, 33 + 41, (n, length)).astype(np.uint8)
            block = []
            for i in range(n):
                block.append(b"@read%d length=%d\n%s\n+\n%s\n" % (start + i, length, bases[i].tobytes(), quals[i].tobytes()))
            out.write(b"".join(block))


def make_text(path: Path, share: float, data: Path, size: int = 100_000_000) -> None:
    source = data / "wiki.txt"
    if not source.is_file():
        raise SystemExit(f"{source} missing: run bash scripts/get_data.sh")
    text = source.read_bytes().rstrip(b"\n") + b"\n\n"
    target = int(size * share)
    with open(path, "wb") as out:
        written = 0
        while written < target:
            piece = text[: target - written]
            out.write(piece)
            written += len(piece)
        out.write(b"\n")


def make_wav(path: Path, share: float, seconds: int = 7200, rate: int = 16_000) -> None:
    """Speech-like audio: the bundled espeak-ng sample repeated with a slowly varying level, plus faint noise."""
    import soundfile as sf

    from seqcompress.domain import bundled

    speech, speech_rate = sf.read(bundled("speech_sample.flac"), dtype="float32")
    assert speech_rate == rate
    rng = np.random.default_rng(0)
    total = int(seconds * share) * rate
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV") as out:
        done = 0
        while done < total:
            n = min(len(speech), total - done)
            level = 0.5 + 0.4 * np.sin(done / rate / 60)
            out.write((speech[:n] * level + rng.normal(0, 0.003, n)).astype(np.float32))
            done += n


MAKERS = {"chromosome": make_chromosome, "fastq": make_fastq, "text": make_text, "wav": make_wav}


def input_file(work: Path, name: str, share: float, data: Path) -> Path:
    suffix = {"chromosome": ".fna.gz", "fastq": ".fastq", "text": ".txt", "wav": ".wav"}[name]
    path = work / f"{name}_{share:g}{suffix}"
    if not path.is_file():
        tmp = path.with_name(path.name + ".part")
        maker = MAKERS[name]
        maker(tmp, share, data) if name in ("chromosome", "text") else maker(tmp, share)
        tmp.rename(path)
    return path


def model_dir(work: Path, name: str) -> Path:
    """A small untrained model of the input's domain, built once."""
    from seqcompress.domains import domain_class
    from seqcompress.model import ModelConfig, build_model

    domain_name, n_max, ratio, settings, _ = SETUPS[name]
    path = work / f"model_{name}"
    if not (path / "config.json").is_file():
        cls = domain_class(domain_name)
        domain = cls(cls.settings_class(**settings))
        config = ModelConfig(n_max=n_max, ratio=ratio, **MODEL, **domain.model_fields())
        build_model(config, seed=0).save(path, domain=domain.state())
    return path


# ---- measuring -----------------------------------------------------------------------------------------
def run(args: list[str]) -> dict:
    """Run one command in a fresh process; its wall time and peak RSS (from the kernel's accounting)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{err[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def measure(work: Path, name: str, share: float, data: Path, batch_size: int) -> dict:
    path = input_file(work, name, share, data)
    model = model_dir(work, name)
    sqz = work / f"{name}_{share:g}.sqz"
    back = work / f"{name}_{share:g}.back{SETUPS[name][4]}"
    for p in (sqz, back):
        p.unlink(missing_ok=True)
    common = ["--batch-size", str(batch_size), "--device", "cpu"]
    enc = run(CLI + ["encode", "-m", str(model), str(path), "-o", str(sqz), "--no-compare", "--json", *common])
    dec = run(CLI + ["decode", "-m", str(model), str(sqz), "-o", str(back), "--device", "cpu", "--batch-size",
                     str(batch_size)])
    from seqcompress.format import LatentReader

    symbols = LatentReader(sqz).symbols
    out = {"input": path.name, "input_bytes": path.stat().st_size, "symbols": symbols, "sqz_bytes": sqz.stat().st_size,
           "decoded_bytes": back.stat().st_size,
           "encode": {**enc, "symbols_per_s": round(symbols / enc["seconds"])},
           "decode": {**dec, "symbols_per_s": round(symbols / dec["seconds"])}}
    for p in (sqz, back):
        p.unlink(missing_ok=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_stream", help="inputs, models, outputs")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SEQCOMPRESS_DATA", ROOT / ".cache" / "data")))
    parser.add_argument("--only", nargs="*", choices=sorted(SETUPS), default=sorted(SETUPS))
    parser.add_argument("--scale", type=float, default=1.0, help="full size = this share of the stated size")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only:
        rows = {}
        for label, share in (("quarter", args.scale / 4), ("full", args.scale)):
            rows[label] = measure(args.work, name, share, args.data, args.batch_size)
            print(f"{name} {label}: {json.dumps(rows[label])}", file=sys.stderr)
        for step in ("encode", "decode"):
            rows[f"{step}_rss_full_over_quarter"] = round(rows["full"][step]["peak_rss_mb"]
                                                          / rows["quarter"][step]["peak_rss_mb"], 3)
        results[name] = rows
    import torch

    print(json.dumps({"benchmark": "bench_stream", "machine": {"platform": platform.platform(),
                      "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()},
                      "model": MODEL, "setups": {k: SETUPS[k][:3] for k in args.only}, "batch_size": args.batch_size,
                      "scale": args.scale, "results": results}, indent=2))


if __name__ == "__main__":
    main()
