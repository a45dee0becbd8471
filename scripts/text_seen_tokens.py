"""Held-out token accuracy of a text model split by whether each token occurs in the training windows.

A held-out token that never occurs in the windows a model trained on has an embedding that training never
moved toward it (only away, as a negative), so a model trained without token noise (`fit --token-noise`)
does not rebuild it; on a small corpus these tokens cap the accuracy. This script measures that cap, and
how much of it a run got back, on the held-out split the run recorded.

Usage: python scripts/text_seen_tokens.py RUN_DIR [--json OUT]
RUN_DIR is a `seqcompress fit` output directory: its model, or, when the run was stopped before saving one,
its last checkpoint (checkpoint/run.json and train.safetensors). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from seqcompress.attention import length_mask
from seqcompress.compress import collate
from seqcompress.domains import get_domain
from seqcompress.model import ModelConfig, build_model, load_model
from seqcompress.train import Split, WindowSource, scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path, help="also write the result there")
    args = parser.parse_args()
    checkpoint = args.run / "checkpoint"
    if (args.run / "config.json").is_file():
        model, meta = load_model(args.run)
        domain_state, training = meta["domain"], meta["domain"]["training"]
        data, fraction, seed = training["data"], training["val_fraction"], training["seed"]
        split = Split.from_state(training["held_out_split"]) if "held_out_split" in training else None
        step = training.get("steps")
    else:
        record = json.loads((checkpoint / "run.json").read_text())
        state = json.loads((checkpoint / "state.json").read_text())
        model = build_model(ModelConfig(**record["model"]))
        weights = load_file(str(checkpoint / "train.safetensors"))
        model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")})
        model.eval()
        domain_state, data = record["domain"], record["data"]
        fraction, seed, split, step = state["options"]["val_fraction"], state["options"]["seed"], None, state["step"]
    domain = get_domain(domain_state["name"], domain_state)
    source = WindowSource.files(domain, data, model.config.n_max)
    split = split or scan(source, fraction, seed)
    seen: collections.Counter = collections.Counter()
    held_out = []
    for i, window in enumerate(source):
        if split.trains_on(i):
            seen.update(window.tolist())
        elif split.evaluates_on(i):
            held_out.append(window)
    counts = {"seen": [0, 0], "unseen": [0, 0]}  # [correct, total]
    with torch.inference_mode():
        for start in range(0, len(held_out), 8):
            x, lengths = collate(held_out[start : start + 8])
            hidden, _, _ = model(x, lengths, hidden=True)
            prediction = torch.stack([model.output(h).argmax(-1) for h in hidden])  # one window's logits at a time
            mask = length_mask(lengths, x.shape[1])
            known = torch.tensor([[seen[t] > 0 for t in row] for row in x.tolist()])
            for name, where in (("seen", known & mask), ("unseen", ~known & mask)):
                counts[name][0] += int(((prediction == x) & where).sum())
                counts[name][1] += int(where.sum())
    total = counts["seen"][1] + counts["unseen"][1]
    result = {
        "run": str(args.run), "step": step, "held_out_windows": len(held_out), "held_out_tokens": total,
        "token_accuracy": (counts["seen"][0] + counts["unseen"][0]) / total,
        "unseen_share": counts["unseen"][1] / total,
        "accuracy_on_seen_tokens": counts["seen"][0] / max(counts["seen"][1], 1),
        "accuracy_on_unseen_tokens": counts["unseen"][0] / max(counts["unseen"][1], 1),
        "cap_if_unseen_are_lost": counts["seen"][1] / total,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
