"""`seqcompress probe`: train one model per (seq-len, ratio, seed) and report the held-out metric.

Writes REPORT_DIR/results.json (after every cell, so a killed probe resumes), results.csv,
report.md and PNG plots. See seqcompress/probe.py for what is measured and docs/results.md for
the tables it produced.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from seqcompress.cli.options import TRAIN_BATCH, LR, LR_END, DECAY_EPOCHS, D_MODEL, HEADS, LAYERS, LATENT_DIM, DEVICE, DOMAIN_OPTION, TOKENIZER

from seqcompress.defaults import STORED_DTYPE
from seqcompress.domains import DEFAULT_DOMAIN


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _int_list(text: str, flag: str) -> list[int]:
    from seqcompress.errors import InputError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} takes whole numbers like 128,256, got {text!r}") from None
    if not values:
        raise InputError(f"{flag} is empty")
    return values


def probe(
    data: Optional[list[Path]] = typer.Argument(None, help="Training files; the domain's bundled sample when omitted."),
    domain: str = typer.Option(DEFAULT_DOMAIN, "--domain", "-d", help="Data domain (`seqcompress domains` lists "
                               "them)."),
    domain_option: list[str] = DOMAIN_OPTION,
    tokenizer: Optional[str] = TOKENIZER,
    test: list[Path] = typer.Option([], "--test", help="Held-out files (default: hold out a share of the data)."),
    held_out: float = typer.Option(0.1, "--val-fraction", help="Share held out when no --test is given: of the windows, "
                                   "or with --split chronological of each file's end."),
    split: str = typer.Option("random", "--split", help="Without --test: hold out random windows, or the "
                              "chronological end of each training file (train on the past, score the future)."),
    train_shifts: int = typer.Option(1, "--train-shifts", help="With --test or --split chronological: cut each "
                                     "training file into windows at this many offsets (more windows from a short "
                                     "series)."),
    ratios: str = typer.Option("0.5,0.25,0.125,0.0625", "--ratios", help="Latents per symbol, comma-separated."),
    seq_len: Optional[str] = typer.Option(None, "--seq-len", help="Window lengths, comma-separated "
                                           "(default: the domain's)."),
    cells: Optional[str] = typer.Option(None, "--cells", help="Explicit SEQ_LEN:LATENT_LEN pairs instead of the "
                                        "grid, e.g. 512:256,128:72."),
    seeds: int = typer.Option(3, "--seeds", help="Runs per cell, seeds 0..N-1."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Training minutes per run "
                                                   "(2 when no budget is given)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs per run (instead of minutes)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Also stop each run after this many steps."),
    baselines: bool = typer.Option(False, "--baselines", help="Also run the Perceiver-, Linformer- and mean-pool "
                                   "reducers (same as --methods with all four)."),
    methods: str = typer.Option("attention", "--methods", help="Reducers to train, comma-separated: attention, "
                                "perceiver, linformer, meanpool."),
    classical: bool = typer.Option(True, "--classical/--no-classical", help="Also score the domain's classical "
                                   "codecs, if it has any, at the same stored floats (seqcompress/baselines.py)."),
    attention: str = typer.Option("full", "--attention", help="Attention kernels of the reducing-attention "
                                  "method, comma-separated (full, lowrank, local, lsh, routing); each is a method of its own. With "
                                  "--stages, --positions, --resize and --memory: the seven mechanisms of "
                                  "docs/attention.md."),
    positions: Optional[str] = typer.Option(None, "--positions", help="Position schemes, comma-separated (learned, "
                                            "none, t5, alibi, rope); default: the model's."),
    stages: str = typer.Option("1", "--stages", help="Reduction stage counts, comma-separated, e.g. 1,2 (2: n -> "
                               "sqrt(n m) -> m)."),
    resize: str = typer.Option("absolute", "--resize", help="W_S kinds, comma-separated: absolute, relative."),
    memory: str = typer.Option("0", "--memory", help="Memory across windows, in windows of each cell, "
                               "comma-separated, e.g. 0,1 (1: every block also attends to the previous window)."),
    option: list[str] = typer.Option([], "--option", "-O", help="Kernel, position or resize option KEY=VALUE "
                                     "(window, rank, buckets, band); each variant takes the ones it uses."),
    batch_size: int = TRAIN_BATCH,
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Symbols per optimizer step instead: "
                                               "batch size = this // seq-len in each cell."),
    paper: Optional[str] = typer.Option(None, "--paper", help="Reproduce the paper's table: 'cpu' (under 2 hours on "
                                        "2 cores, smaller model) or 'full' (the paper's setting, CUDA); sets cells, "
                                        "baselines, model and budget (docs/reproduction.md)."),
    lr: float = LR,
    lr_end: float = LR_END,
    decay_epochs: Optional[float] = DECAY_EPOCHS,
    d_model: int = D_MODEL,
    heads: int = HEADS,
    layers: int = LAYERS,
    latent_dim: Optional[int] = LATENT_DIM,
    resize_init: str = typer.Option("pool", "--resize-init", help="How W_S/W_E start: pool, random, dct or pca (vector "
                                    "domains: the model starts as the truncated DCT, with pca on the features' "
                                    "principal axes in the training windows; docs/timeseries.md)."),
    sampled_softmax: int = typer.Option(0, "--sampled-softmax", help="Token domains: train on the batch's own "
                                        "tokens and N drawn from the vocabulary instead of all of it (0: the full "
                                        "softmax); scores always use the whole vocabulary."),
    token_noise: float = typer.Option(0.0, "--token-noise", help="Token domains: replace this share of the "
                                      "training tokens by tokens drawn from the whole vocabulary (docs/text.md)."),
    dtype: str = typer.Option(STORED_DTYPE, "--dtype", help="Score latents stored as float32, float16, bfloat16 or int8."),
    device: str = DEVICE,
    output: Path = typer.Option(..., "--output", "-o", help="Report directory (resumes the probe already there)."),
    jobs: int = typer.Option(1, "--jobs", help="Run independent cells in this many worker processes (CPU: the "
                             "cores shared among them; CUDA: one GPU each, round robin)."),
    force: bool = typer.Option(False, "--force", help="Discard a probe with other settings in the report directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary rows as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Measure how far sequences can be reduced: held-out metric per seq-len, ratio and seed."""
    from seqcompress.cli.options import domain_options, parse_key_values, ratio_list, split_key_values
    from seqcompress.cli.output import console, print_json, results
    from seqcompress.domain import check_data_paths
    from seqcompress.domains import make_domain
    from seqcompress.errors import InputError
    from seqcompress.probe import PAPER_CELLS, PAPER_DOMAIN, PAPER_PROTOCOLS, Probe, ProbePlan, grid, parse_cells, \
        summarise
    from seqcompress.reducers import REDUCERS

    model = {"d_model": d_model, "heads": heads, "layers": layers, "ffn_dim": 4 * d_model,
             "latent_dim": latent_dim or d_model}
    training = {"epochs": epochs, "max_minutes": minutes, "max_steps": max_steps, "batch_size": batch_size,
                "lr": lr, "lr_end": lr_end, "decay_epochs": decay_epochs, "device": device}
    if paper is not None:
        if paper not in PAPER_PROTOCOLS:
            raise InputError(f"--paper takes {' or '.join(PAPER_PROTOCOLS)}, got {paper!r}")
        if domain != PAPER_DOMAIN:
            raise InputError(f"--paper reproduces the paper's table on {PAPER_DOMAIN}: use it with --domain "
                             f"{PAPER_DOMAIN}")
        preset = PAPER_PROTOCOLS[paper]
        cells, baselines, model, batch_tokens = PAPER_CELLS, True, dict(preset["model"]), preset["batch_tokens"]
        training = {**training, "epochs": None, "max_minutes": None, **preset["training"]}
    if resize_init != "pool":  # only when asked: a probe begun before this option keeps its settings
        model["resize_init"] = resize_init
    if sampled_softmax:
        training["sampled_softmax"] = sampled_softmax
    if token_noise:  # only when asked, as above
        training["token_noise"] = token_noise
    dom = make_domain(domain, domain_options(domain_option, domain, tokenizer))
    if training["decay_epochs"] is None:  # the plan records the schedule it ran
        training["decay_epochs"] = dom.default_decay_epochs
    if cells:
        plan_cells = parse_cells(cells)
    else:
        plan_cells = grid(_int_list(seq_len, "--seq-len") if seq_len else [dom.default_seq_len],
                          ratio_list(ratios, "--ratios"))
    plan = ProbePlan(
        domain=domain, domain_state=dom.state(), data=[str(p) for p in check_data_paths(data)] if data else [],
        test=[str(p) for p in check_data_paths(test)] if test else [], held_out=held_out, split=split,
        train_shifts=train_shifts, cells=plan_cells, seeds=seeds,
        methods=list(REDUCERS) if baselines else _names(methods), classical=classical,
        attention=_names(attention), positions=_names(positions or ""), stages=_int_list(stages, "--stages"),
        resize=_names(resize), options=parse_key_values(option, "--option"), memory=_int_list(memory, "--memory"),
        model=model, training=training, dtype=dtype, batch_tokens=batch_tokens,
    )
    runner = Probe(plan, dom, output, force=force)
    metric = runner.results["metric"]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    bar = Progress(TextColumn("[bold]probe[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                   disable=quiet or json_out, transient=False)
    state_ = {"task": None, "start": time.perf_counter()}

    def on_cell(finished: int, total: int, cell: dict | None) -> None:
        if state_["task"] is None:
            state_["task"] = bar.add_task("cells", total=total, completed=finished)
            return
        note = f"{cell['method']} n={cell['seq_len']} ratio={cell['ratio']:.4g} seed={cell['seed']}: " \
               f"{metric} {cell['value']:.4f}"
        bar.update(state_["task"], completed=finished, description=note)

    with bar:
        runner.run(on_cell, jobs=jobs)
    written = runner.write_reports()
    rows = summarise(runner.results)
    if json_out:
        print_json({"report_dir": str(output), "metric": metric, "rows": rows,
                    "files": [str(p) for p in written]})
        return
    from rich.table import Table

    table = Table(title=f"seqcompress probe: {domain}, held-out {metric}, mean±std over seeds, "
                        "ranked within each cell", title_justify="left")
    for column, width in (("n", 4), ("ratio", 6), ("method", 9), ("held-out", 13), ("floats/sym", 6),
                          (f"bits/sym {dtype}", 7), ("params", 6)):
        table.add_column(column, min_width=width)
    for r in rows:
        table.add_row(str(r["seq_len"]), f"{r['ratio']:.4g}", r["method"], f"{r['mean']:.4f}±{r['std']:.4f}",
                      f"{r['latent_floats_per_symbol']:.3g}", f"{r['bits_per_symbol']:.4g}",
                      f"{r['parameters'] / 1e6:.2f}M")
    results.print(table)
    results.print(f"report: {', '.join(str(p) for p in written)}")


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
