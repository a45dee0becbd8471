"""Plot benchmarks/bench_attention.py output: forward+backward time and peak RSS against n, per mechanism.

    python scripts/plot_attention.py docs/data/bench_attention.json docs/img/attention_bench.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    points = [p for p in data["points"] if "forward_s" in p]
    mechanisms = sorted({p["mechanism"] for p in points}, key=lambda m: (m != "self-full", m))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    for mech in mechanisms:
        rows = sorted((p["n"], p["forward_backward_s"], p["peak_rss_mb"]) for p in points if p["mechanism"] == mech)
        style = dict(marker="o", lw=2.5 if mech == "self-full" else 1.5, ls="-" if mech.startswith("self") else "--")
        ax_t.plot([r[0] for r in rows], [r[1] for r in rows], label=mech, **style)
        ax_m.plot([r[0] for r in rows], [r[2] for r in rows], label=mech, **style)
    for ax, label in ((ax_t, "forward + backward (s)"), (ax_m, "peak RSS of the process (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n (symbols)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"One block, batch {data['settings']['batch']}, d_model {data['settings']['d_model']}, "
                 f"{data['settings']['heads']} heads; {m['cpus']} CPUs, torch {m['torch']}")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
