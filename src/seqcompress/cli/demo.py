"""`seqcompress demo`: the main job on bundled data, start to finish in a few minutes on a laptop CPU.

For each domain it trains a small model on the bundled sample under a time budget, evaluates it
on windows held out from training, and prints one table: held-out metric and reduction ratio.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer


def demo(
    minutes: float = typer.Option(2.5, "--minutes", help="Total training time budget across domains."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Keep the trained models in this directory."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Train, evaluate and show a reconstruction on the bundled samples."""
    from rich.markup import escape
    from rich.table import Table

    from seqcompress.api import fit, held_out_example
    from seqcompress.cli.output import TrainingProgress, console, print_json, results as out
    from seqcompress.domains import DEMO_RUNS, get_domain
    from seqcompress.train import TrainOptions

    if minutes <= 0:
        from seqcompress.errors import InputError

        raise InputError(f"--minutes must be positive, got {minutes}")
    results = []
    with tempfile.TemporaryDirectory(prefix="seqcompress-demo-") as tmp:
        root = output or Path(tmp)
        for name, seq_len, ratio, share in DEMO_RUNS:
            dom = get_domain(name)
            budget = minutes * share
            if not json_out:
                console.print(f"[bold]{name}[/]: training {seq_len} -> {int(seq_len * ratio)} on the bundled sample "
                              f"for {budget:.1f} min")
            options = TrainOptions(epochs=None, max_minutes=budget, seed=seed, device="auto")
            bar = TrainingProgress(dom.metric_name, budget * 60, quiet=json_out)
            with bar:
                summary = fit(dom, None, root / name, seq_len=seq_len, ratio=ratio, options=options, force=True,
                              on_step=bar.on_step)
            summary["example"] = held_out_example(root / name)
            results.append(summary)
    if json_out:
        print_json({"runs": results})
        return
    table = Table(title="seqcompress demo: held-out reconstruction", title_justify="left")
    for column in ("domain", "metric", "held-out value", "reduction", "floats/symbol", "train time"):
        table.add_column(column)
    for s in results:
        better = "" if get_domain(s["domain"]).objective.higher_is_better else " (lower is better)"
        table.add_row(s["domain"], s["metric"] + better, f"{s['value']:.4f}", f"{s['seq_len']} -> {s['latent_len']}",
                      f"{s['latent_floats_per_symbol']:.0f}", f"{s['seconds']:.0f} s")
    out.print(table)
    for s in results:
        if s["example"]:
            out.print(f"[bold]{s['domain']} example[/] (a held-out window):")
            out.print(f"  original:      {escape(s['example']['original'])}")
            out.print(f"  reconstructed: {escape(s['example']['reconstructed'])}")
    out.print("The reduction is in sequence length (latent vectors per input symbol), not in bytes.")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
