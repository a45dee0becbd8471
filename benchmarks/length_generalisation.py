"""Length generalisation: train at n = 512, evaluate on held-out windows of 512, 1,024, 2,048 and 4,096.

A model with relative positions (t5, alibi, rope, or none) and the relative resize (`resize="relative"`)
has nothing sized to n_max, so it reduces windows longer than any it saw in training. The paper's model
(learned positions, absolute W_S) is evaluated at its own n only: it refuses longer windows. Every model
gets the same data, budget and seed. The bundled yeast sample's bases are joined into one stream: the
first 85 % is cut into training windows of `--train-len`, the rest into test windows of each length.
Prints one JSON object.

    python benchmarks/length_generalisation.py --steps 400        # the table in docs/attention.md
    python benchmarks/length_generalisation.py --steps 400 --schemes learned --own-n   # its "own n" column
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from seqcompress.compress import evaluate_quantized
from seqcompress.domains import get_domain
from seqcompress.model import ModelConfig, build_model
from seqcompress.train import TrainOptions, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-len", type=int, default=512)
    parser.add_argument("--eval-lens", default="512,1024,2048,4096")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--schemes", default="learned,none,t5,alibi,rope")
    parser.add_argument("--attention", default="full")
    parser.add_argument("--steps", type=int, default=400, help="training steps per model (batch 8)")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--own-n", action="store_true", help="instead: train each scheme at every eval length "
                        "(n_max = that length, the same symbols per step and steps) and evaluate it there")
    args = parser.parse_args()

    domain = get_domain("dna", {"k": 1})  # one base per token, as measured
    data = domain.default_data()
    domain = domain.learn(data)
    stream = torch.cat(domain.load_windows(data, args.train_len))  # (T,) every base in file order
    cut = int(len(stream) * 0.85)
    n = args.train_len
    test = {L: [stream[i : i + L] for i in range(cut, len(stream) - L + 1, L)]
            for L in (int(v) for v in args.eval_lens.split(","))}
    results = []
    runs = [(scheme, L) for scheme in args.schemes.split(",") for L in test] if args.own_n \
        else [(scheme, n) for scheme in args.schemes.split(",")]
    for scheme, train_len in runs:
        relative = scheme != "learned"
        config = ModelConfig(n_max=train_len, ratio=args.ratio, d_model=args.d_model, heads=4, ffn_dim=4 * args.d_model,
                             latent_dim=args.d_model, positions=scheme, attention=args.attention,
                             resize="relative" if relative else "absolute", **domain.model_fields())
        model = build_model(config, seed=args.seed)
        windows = [stream[i : i + train_len] for i in range(0, cut - train_len + 1, train_len)]
        batch = max(1, 8 * n // train_len)  # the same symbols per step at every length
        result = train(model, domain.objective, windows, TrainOptions(epochs=None, max_steps=args.steps, batch_size=batch,
                                                            val_fraction=0.02, seed=args.seed, device="cpu"))
        model.eval()
        row = {"positions": scheme, "resize": config.resize, "attention": config.attention, "train_len": train_len,
               "steps": result.steps, "parameters": model.parameter_count(), "base_accuracy": {}}
        for L, windows in test.items():
            if args.own_n and L != train_len:
                continue
            if config.max_length is not None and L > config.max_length:
                row["base_accuracy"][str(L)] = None  # refused: the model is bounded by n_max
                continue
            metrics = evaluate_quantized(model, domain, windows, "float32", batch_size=max(1, 8 * n // L))
            row["base_accuracy"][str(L)] = metrics[domain.metric_name]
        print(json.dumps(row), flush=True, file=__import__("sys").stderr)
        results.append(row)
    print(json.dumps({"benchmark": "length_generalisation", "domain": "dna", "train_len": n, "ratio": args.ratio,
                      "steps_per_model": args.steps, "seed": args.seed,
                      "test_windows": {str(L): len(w) for L, w in test.items()},
                      "machine": {"processor": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__},
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
