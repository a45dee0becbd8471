"""`seqcompress fit`: train a model on data files (or the domain's bundled sample) and save it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from seqcompress.cli.options import TRAIN_BATCH, LR, LR_END, DECAY_EPOCHS, D_MODEL, HEADS, LAYERS, LATENT_DIM, DEVICE, DOMAIN_OPTION, TOKENIZER

from seqcompress.domains import DEFAULT_DOMAIN
from seqcompress.defaults import PEER_LOST_EXIT


def fit(
    ctx: typer.Context,
    data: Optional[list[Path]] = typer.Argument(None, help="Data files; the domain's bundled sample when omitted."),
    domain: str = typer.Option(DEFAULT_DOMAIN, "--domain", "-d", help="Data domain (`seqcompress domains` lists them)."),
    domain_option: list[str] = DOMAIN_OPTION,
    tokenizer: Optional[str] = TOKENIZER,
    output: Path = typer.Option(..., "--output", "-o", help="Model directory to write."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Symbols per window (n_max); domain default when omitted."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Latents per symbol, in (0, 1]; default 0.5."),
    latent_len: Optional[int] = typer.Option(None, "--latent-len", help="Latents per full window (instead of --ratio)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the training windows (default 1)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Stop after this many minutes of training."),
    batch_size: int = TRAIN_BATCH,
    lr: float = LR,
    lr_end: float = LR_END,
    decay_epochs: Optional[float] = DECAY_EPOCHS,
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear warm-up steps."),
    d_model: int = D_MODEL,
    heads: int = HEADS,
    layers: int = LAYERS,
    latent_dim: Optional[int] = LATENT_DIM,
    resize_init: str = typer.Option("pool", "--resize-init", help="W_S/W_E initialisation: pool, random, dct or pca "
                                    "(vector domains: the model starts as the truncated DCT of each window, with pca "
                                    "each symbol's features on their principal axes in the training data)."),
    attention: str = typer.Option("full", "--attention", help="Attention kernel: full, lowrank, local, lsh or routing "
                                  "(docs/attention.md)."),
    positions: str = typer.Option("learned", "--positions", help="Position scheme: learned, none, t5, alibi or rope."),
    resize: str = typer.Option("absolute", "--resize", help="W_S/W_E: absolute (a table bounded by --seq-len) or "
                               "relative (a learned band profile, any length)."),
    stages: Optional[str] = typer.Option(None, "--stages", help="Hierarchical reduction: per-stage ratios, e.g. "
                                         "0.5,0.5 for n -> n/2 -> n/4 (sets --ratio to their product)."),
    memory: int = typer.Option(0, "--memory", help="Memory and recurrence: every block also attends to its inputs over "
                               "the last M symbols of the same record before the window (0: none; e.g. --memory "
                               "512 with --seq-len 512 keeps one window)."),
    run_windows: int = typer.Option(8, "--run-windows", help="With --memory: each lane of a batch trains on runs "
                                    "of this many consecutive windows, one per step, memory carried from step to "
                                    "step (the unit of shuffling and of the held-out split)."),
    option: list[str] = typer.Option([], "--option", "-O", help="Kernel, position or resize option KEY=VALUE, e.g. "
                                     "-O window=64 (local), -O rank=64 (lowrank), -O buckets=32 (t5), -O band=1 "
                                     "(relative)."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Share of windows held out."),
    eval_every: int = typer.Option(0, "--eval-every", help="Also evaluate every N steps (0: each epoch)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (model, split, batch order)."),
    device: str = DEVICE,
    grad_accum: int = typer.Option(1, "--grad-accum", help="Forward/backward passes per step and process: the batch "
                                   "is split among them (same result, less memory)."),
    nproc: int = typer.Option(1, "--nproc", help="Train data-parallel in this many processes on this machine (the "
                              "workers torchrun would start; on GPUs one per device; docs/scaling.md)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model for training (faster "
                                       "steps on a GPU after minutes of compiling)."),
    log_every: int = typer.Option(1, "--log-every", help="Report progress and log scalars every N steps (on a GPU "
                                  "each report waits for the device)."),
    sampled_softmax: int = typer.Option(0, "--sampled-softmax", help="Token domains: train the output layer on the "
                                        "batch's own tokens and N drawn from the vocabulary instead of all of it "
                                        "(0: the full softmax); held-out scores always use the whole vocabulary."),
    token_noise: float = typer.Option(0.0, "--token-noise", help="Token domains: replace this share of the "
                                      "training tokens by tokens drawn from the whole vocabulary (input and target), "
                                      "so the model also rebuilds tokens the corpus never shows (docs/text.md)."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Write the run's scalars there: scalars.csv, "
                                           "and TensorBoard event files when tensorboard is installed "
                                           "(`seqcompress plot DIR` draws the curve)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run checkpointed in the output directory, with "
                                "the domain, data, settings and budget it recorded."),
    force: bool = typer.Option(False, "--force", help="Replace a model already in the output directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a reducing-attention autoencoder and save it to a model directory.

    Seven mechanisms against attention dilution on long sequences (docs/attention.md):
    low-rank --attention lowrank; segmented --attention local;
    LSH sparse --attention lsh; routing --attention routing;
    hierarchical --stages; relative positions --positions t5|alibi|rope, --resize relative;
    memory and recurrence across windows --memory.
    """
    from seqcompress.api import fit as fit_model
    from seqcompress.cli.output import TrainingProgress, console, key_value_table, print_json
    from seqcompress.cli.options import domain_options, parse_key_values, split_key_values
    from seqcompress.cli.options import ratio_list
    from seqcompress.domains import make_domain
    from seqcompress import distributed
    from seqcompress.errors import InputError
    from seqcompress.train import TrainOptions

    if nproc > 1:
        if distributed.from_env().parallel:
            raise InputError("--nproc starts the workers itself; under torchrun leave it out")
        from seqcompress.cli.main import Terminated

        try:
            distributed.launch(nproc, _without_nproc(sys.argv[1:]))
        except distributed.Stopped as stop:
            raise Terminated(stop.signum) from None  # reported as any stopped command is
        except distributed.WorkerFailed as failed:
            if failed.exitcode in (1, PEER_LOST_EXIT):  # an expected error, which that worker reported in one line
                raise typer.Exit(1) from None
            raise
        return
    if not distributed.from_env().main:  # under torchrun, rank 0 alone reports and logs
        quiet, json_out, log_dir = True, False, None
    if resume:
        _resume(ctx, output, device, quiet or json_out, json_out, log_dir)
        return
    dom = make_domain(domain, domain_options(domain_option, domain, tokenizer))
    if epochs is None and max_steps is None and minutes is None:
        epochs = 1.0
    options = TrainOptions(
        epochs=epochs, max_steps=max_steps, max_minutes=minutes, batch_size=batch_size, lr=lr, lr_end=lr_end,
        decay_epochs=decay_epochs, warmup_steps=warmup_steps, seed=seed, device=device,
        val_fraction=val_fraction, eval_every=eval_every, run_windows=run_windows, grad_accum=grad_accum,
        log_every=log_every, compile=compile_model, sampled_softmax=sampled_softmax, token_noise=token_noise,
    )
    model_options = {"d_model": d_model, "heads": heads, "layers": layers, "ffn_dim": 4 * d_model,
                     "latent_dim": latent_dim or d_model, "resize_init": resize_init, "attention": attention,
                     "positions": positions, "resize": resize, "options": parse_key_values(option, "--option"),
                     "stages": ratio_list(stages, "--stages") if stages else None, "memory": memory}
    bar = TrainingProgress(dom.metric_name, minutes * 60 if minutes else None, quiet=quiet or json_out)
    with bar, _Callbacks(bar, log_dir, dom.metric_name) as calls:
        summary = fit_model(
            dom, data, output, seq_len=seq_len, ratio=ratio, latent_len=latent_len, model_options=model_options,
            options=options, resume=resume, force=force, on_step=calls.on_step, on_eval=calls.on_eval,
        )
    _report(summary, json_out)


class _Callbacks:
    """The progress bar's callbacks, and the training log's with --log-dir."""

    def __init__(self, bar, log_dir: Optional[Path], metric: str) -> None:
        from seqcompress.logs import TrainingLog

        self.bar, self.log = bar, TrainingLog(log_dir, metric) if log_dir else None

    def on_step(self, progress) -> None:
        self.bar.on_step(progress)
        if self.log:
            self.log.on_step(progress)

    def on_eval(self, progress) -> None:
        self.bar.on_eval(progress)
        if self.log:
            self.log.on_eval(progress)

    def __enter__(self) -> "_Callbacks":
        return self

    def __exit__(self, *exc) -> None:
        if self.log:
            self.log.close()


_NOT_RECORDED = {"output", "resume", "force", "json_out", "quiet", "device", "nproc", "log_dir", "compile_model"}  # may differ on --resume


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line a worker runs: this one without --nproc (each worker is one process of the job)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _resume(ctx: typer.Context, output: Path, device: str, quiet: bool, json_out: bool,
            log_dir: Optional[Path]) -> None:
    """`fit -o DIR --resume`: the run's record supplies everything; an option that contradicts it is refused."""
    from seqcompress.api import fit as fit_model, resume_conflicts, resumed_metric
    from seqcompress.cli.output import TrainingProgress
    from seqcompress.errors import InputError

    given = {name: value for name, value in ctx.params.items() if name not in _NOT_RECORDED
             and _given(ctx, name)}
    conflicts = resume_conflicts(output, given)
    if conflicts:
        flags = {p.name: (p.opts[0] if p.opts[0].startswith("-") else p.name.upper()) for p in ctx.command.params}
        raise InputError("--resume continues the run as it recorded it; leave out or match: "
                         + "; ".join(f"{flags.get(name, name)} ({why})" for name, why in conflicts))
    explicit_device = _given(ctx, "device")
    bar = TrainingProgress("", None, quiet=quiet)
    with bar, _Callbacks(bar, log_dir, resumed_metric(output)) as calls:
        summary = fit_model(None, None, output, resume=True, device=device if explicit_device else None,
                            on_step=calls.on_step, on_eval=calls.on_eval)
    _report(summary, json_out)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set option `name` (on the command line or in the environment), not its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _report(summary: dict, json_out: bool) -> None:
    from seqcompress import distributed
    from seqcompress.cli.output import console, key_value_table, print_json
    from seqcompress.cli.text import plain

    if not distributed.from_env().main:  # under torchrun, rank 0 alone reports
        return
    if json_out:
        print_json(summary)
        return
    if summary.get("checkpoint_error"):
        console.print(f"note: the model was saved, but the last checkpoint could not be written "
                      f"({plain(summary['checkpoint_error'])})")
    console.print(key_value_table(f"seqcompress fit: {summary['domain']} model saved to {summary['model_dir']}", [
        (f"held-out {summary['metric']}", summary["value"]
         if not summary["held_out_is_training_data"] else f"{summary['value']:.4g} (on training data: too little to hold out)"),
        ("reduction", f"{summary['seq_len']} -> {summary['latent_len']} (ratio {summary['ratio']:.4g})"),
        ("attention / positions / resize", summary["architecture"]),
        ("latent floats per symbol", summary["latent_floats_per_symbol"]),
        ("parameters", f"{summary['parameters']:,}"),
        ("steps / epochs", f"{summary['steps']} / {summary['epochs']:.2f}"),
        ("windows (train / held out)", f"{summary['train_windows']} / {summary['held_out_windows']}"),
        ("time", f"{summary['seconds']:.0f} s on {summary['device']}"
                 + (f" x {summary['processes']} processes" if summary.get("processes", 1) > 1 else "")
                 + f" ({summary['symbols_per_s']:,.0f} symbols/s)"),
    ]))


def register(app: typer.Typer) -> None:
    app.command("fit")(fit)
