"""Plot benchmarks/bench_attention.py output (forward+backward time and peak RSS against n, per mechanism)
and print it as the markdown tables of docs/attention.md.

    python scripts/plot_attention.py docs/data/bench_attention.json docs/img/attention_bench.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def cell(p: dict | None, key: str, ratio: str, memory: bool) -> str:
    if p is None:
        return "–"
    if "forward_s" not in p:
        return "out of memory" if p.get("oom") else ("timeout" if p.get("timeout") else "failed")
    text = f"{p[key]:.3g} s ({p['vs_sdpa'][ratio]:.2f}×)"
    return text + (f", {p['peak_rss_mb']:.0f} MB ({p['vs_sdpa']['peak_rss']:.2f}×)" if memory else "")


def markdown(data: dict) -> str:
    points = data["points"]
    mechanisms = list(dict.fromkeys(p["mechanism"] for p in points))
    ns = sorted({p["n"] for p in points})
    lines = []
    for title, key, ratio, memory in (("forward + backward, peak RSS", "forward_backward_s", "forward_backward", True),
                                      ("forward only", "forward_s", "forward", False)):
        lines += [f"{title} (ratio to self-full = SDPA at the same n):", "",
                  "| mechanism | " + " | ".join(f"n = {n:,}" for n in ns) + " |", "|---|" + "---:|" * len(ns)]
        for mech in mechanisms:
            at = {p["n"]: p for p in points if p["mechanism"] == mech}
            lines.append(f"| {mech} | " + " | ".join(cell(at.get(n), key, ratio, memory) for n in ns) + " |")
        lines.append("")
    lines.append("crossover n (forward + backward faster than SDPA from here on): " + ", ".join(
        f"{m} {n if n is not None else 'none'}" for m, n in data["crossover_n"].items()))
    return "\n".join(lines)


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    print(markdown(data))
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
