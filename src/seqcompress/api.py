"""High-level library entry points: fit a model on files, evaluate it, describe it.

These are what the CLI calls; they work the same from Python:

    from seqcompress.api import fit, evaluate_files
    from seqcompress.domains import get_domain
    summary = fit(get_domain("text"), ["corpus.txt"], "model_dir", seq_len=128, ratio=0.5)
    print(evaluate_files("model_dir", ["other.txt"]))
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from seqcompress import distributed
from seqcompress.defaults import CHUNK_WINDOWS, DEFAULT_BATCH, STORED_DTYPE
from seqcompress.domain import Domain, check_data_paths
from seqcompress.domains import get_domain
from seqcompress.errors import InputError, ModelFileError, SeqCompressError, WriteError
from seqcompress.format import DTYPES
from seqcompress.model import CONFIG_FILE, ModelConfig, build_model, check_config_against_weights, load_model
from seqcompress.train import (
    CHECKPOINT_DIR, STATE_FILE, TENSORS_FILE, Split, TrainOptions, WindowSource, collate, held_out_windows, pick_device,
    read_checkpoint_record, scan, train, training_windows,
)

log = logging.getLogger("seqcompress")


def resolve_ratio(seq_len: int, ratio: float | None, latent_len: int | None) -> float:
    """The latents-per-symbol ratio from `ratio` or `latent_len` (latents for a full window)."""
    if ratio is not None and latent_len is not None:
        raise InputError("give either ratio or latent_len, not both")
    if latent_len is not None:
        if not 1 <= latent_len <= seq_len:
            raise InputError(f"latent_len must be between 1 and seq_len ({seq_len}), got {latent_len}")
        return latent_len / seq_len
    ratio = 0.5 if ratio is None else ratio
    if not 0 < ratio <= 1:
        raise InputError(f"ratio must be in (0, 1], got {ratio}")
    return ratio


def fit(
    domain: Domain | None,
    paths: list[str | os.PathLike] | None,
    out_dir: str | os.PathLike,
    *,
    seq_len: int | None = None,
    ratio: float | None = None,
    latent_len: int | None = None,
    model_options: dict | None = None,
    options: TrainOptions | None = None,
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    on_step=None,
    on_eval=None,
) -> dict:
    """Train a model on `paths` (the domain's bundled sample when empty) and save it in `out_dir`.

    The windows are streamed from the files on every pass (never all in memory). With `resume`, the run
    checkpointed in `out_dir` continues with the domain, model config, data and training options it recorded
    (`domain`, `paths` and the other arguments must then be left out, see `resume_conflicts`; `device` may
    differ, as it may on a new run where it overrides `options.device`). The model
    directory is written as a whole at the end, and the checkpoint folder is removed with it. Returns the
    summary that `seqcompress fit --json` prints.
    """
    out_dir = Path(out_dir)
    try:
        run = _prepare(domain, paths, out_dir, seq_len, ratio, latent_len, model_options, options, resume, force, device)
        error = None
    except SeqCompressError as exc:
        run, error = None, exc
    # Under torchrun every rank checks; all go on or all stop (rank 0 would otherwise wait alone in a collective).
    parallel = distributed.from_env().parallel
    if parallel:
        try:
            chosen = pick_device(run[2].device if run else device or (options.device if options else "auto"))
        except InputError:
            chosen = torch.device("cpu")
        distributed.start(chosen)
    try:
        distributed.agree(error)
        summary = _train_and_save(*run, out_dir, resume, force, on_step, on_eval)
        distributed.finish()  # every rank waits for rank 0's save before any leaves the group
        return summary
    finally:
        if parallel:
            distributed.stop()


def _train_and_save(domain: Domain, data: list[Path], options: TrainOptions, config: ModelConfig, out_dir: Path,
                    resume: bool, force: bool, on_step, on_eval) -> dict:
    world = distributed.current()
    source = WindowSource.files(domain, data, config.n_max)

    def training():  # the windows training will draw from (the held-out split as `train` settles it)
        block = options.run_windows if config.memory else 1
        return training_windows(source, scan(source, options.val_fraction, options.seed, block))

    # A resumed run loads its weights: its start (and a "pca" start's pass over the data) is not needed.
    basis = None if resume else domain.start_basis(config.resize_init, training)
    model = build_model(config, seed=options.seed, feature_basis=basis)
    # Absolute paths: a resume may start in another working directory (a cron job, a CI step).
    record = {"model": asdict(config), "domain": domain.state(), "data": [str(p.resolve()) for p in data]}
    with distributed.peers_checked():
        result = train(model, domain.objective, source, options,
                       checkpoint_dir=out_dir, resume=resume, on_step=on_step, on_eval=on_eval, record=record)
    summary = {
        "domain": domain.name,
        "metric": domain.metric_name,
        "value": result.held_out[domain.metric_name],
        "held_out": result.held_out,
        "held_out_is_training_data": result.held_out_is_train,
        "seq_len": config.n_max,
        "latent_len": config.m_max,
        "ratio": config.ratio,
        "latent_floats_per_symbol": config.m_max * config.latent_dim / config.n_max,
        "parameters": model.parameter_count(),
        "steps": result.steps,
        "epochs": round(result.epochs, 4),
        "seconds": round(result.seconds, 1),
        "symbols_per_s": round(result.symbols_per_s, 1),
        "train_windows": result.train_windows,
        "held_out_windows": result.held_out_windows,
        "device": str(pick_device(options.device)),
        "seed": options.seed,
        "data": [str(p) for p in data],
        "model_dir": str(out_dir),
        "checkpoint_error": result.checkpoint_error,
        "architecture": f"{config.attention} / {config.positions} / {config.resize}"
                        + (f", stages {','.join(f'{x:g}' for x in config.stages)}" if config.stages else "")
                        + "".join(f", {k}={v}" for k, v in config.options.items()),
    }
    training = {k: summary[k] for k in ("metric", "value", "steps", "epochs", "seconds", "seed", "data")}
    training["val_fraction"] = options.val_fraction
    training["held_out_split"] = result.split.state()
    training["history"] = result.history
    summary["processes"] = world.size
    if not world.main:  # rank 0 alone writes
        return summary
    if not resume and not force and (out_dir / CONFIG_FILE).exists():
        raise InputError(f"a model appeared in {out_dir} while this one trained (another fit?); it was kept, and "
                         f"this run can be saved over it with: seqcompress fit -o {out_dir} --resume")
    _save_model(model, out_dir, {**domain.state(), "training": training}, summary)
    return summary


def _prepare(domain, paths, out_dir: Path, seq_len, ratio, latent_len, model_options, options, resume, force,
             device) -> tuple[Domain, list[Path], TrainOptions, ModelConfig]:
    """`fit`'s checks and settings before anything is written: (learned domain, data, options, model config)."""
    ckpt = out_dir / CHECKPOINT_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a directory")
    if resume:
        given = {"domain": domain, "paths": paths, "seq_len": seq_len, "ratio": ratio, "latent_len": latent_len,
                 "model_options": model_options, "options": options}
        if any(v for v in given.values()):
            raise InputError(f"resume continues the run as it recorded it; leave out "
                             f"{', '.join(k for k, v in given.items() if v)} (see resume_conflicts)")
        record, state = read_checkpoint_record(ckpt)
        try:
            domain = get_domain(str(record["domain"].get("name", "")), record["domain"])
            config = ModelConfig(**record["model"])
            options = TrainOptions(**state["options"])
            check_config_against_weights(config, ckpt / TENSORS_FILE)  # before the model is built
        except (TypeError, ValueError, InputError) as exc:
            raise ModelFileError(f"the checkpoint in {ckpt} records an invalid run: {exc}") from None
        data = [Path(p) for p in record["data"]]
        if device is not None:
            options = replace(options, device=device)
    else:
        if domain is None:
            raise InputError("give a domain (or resume a checkpointed run)")
        options = options or TrainOptions()
        if device is not None:
            options = replace(options, device=device)
        if options.decay_epochs is None:  # recorded as chosen, so a resumed run keeps its schedule
            options = replace(options, decay_epochs=domain.default_decay_epochs)
        if (out_dir / CONFIG_FILE).exists() and not force:
            raise InputError(f"{out_dir} already holds a model; set force to replace it or resume to continue it")
        if (ckpt / STATE_FILE).exists() and not force:
            raise InputError(f"{out_dir} holds an unfinished run; set resume to continue it or force to start over")
        seq_len = domain.default_seq_len if seq_len is None else seq_len
        if seq_len < 1:
            raise InputError(f"seq_len must be at least 1, got {seq_len}")
        known = {f.name for f in fields(ModelConfig)}
        extra = {k: v for k, v in (model_options or {}).items() if v is not None}
        unknown = set(extra) - known
        if unknown:
            raise InputError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        stages = extra.get("stages")
        if stages and ratio is None and latent_len is None:
            ratio = math.prod(stages)  # stages alone set the overall ratio
        ratio = resolve_ratio(seq_len, ratio, latent_len)
        pick_device(options.device)  # an unavailable device fails now, before anything is read or written
        data = [Path(p) for p in paths] if paths else domain.default_data()
        check_data_paths(data)
        for path in data:
            if out_dir.exists() and out_dir.resolve() in path.resolve().parents:
                raise InputError(f"the data file {path} is inside the output directory {out_dir}; choose another")
        domain = domain.learn(data)  # before the config: a domain's model fields may depend on its data (channels)
        config = ModelConfig(n_max=seq_len, ratio=ratio, **{**extra, **domain.model_fields()})
    processes = distributed.from_env().size
    if options.batch_size < processes * options.grad_accum:
        raise InputError(f"batch_size ({options.batch_size}) must be at least the number of processes "
                         f"({processes}) times grad_accum ({options.grad_accum})")
    return domain, data, options, config


def _save_model(model, out_dir: Path, domain: dict, summary: dict) -> None:
    """Save the trained model and drop the run's checkpoint; on a full disk, drop the checkpoint first (three
    times the model's size) and try once more, so the training is not lost for want of its own checkpoint."""
    try:
        model.save(out_dir, domain=domain, drop=(CHECKPOINT_DIR,))
    except WriteError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not (out_dir / CHECKPOINT_DIR).exists():
            raise
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
        log.warning("the disk was full: removed the checkpoint to make room for the model")
        model.save(out_dir, domain=domain, drop=(CHECKPOINT_DIR,))
        summary["checkpoint_error"] = "removed to make room for the model on a full disk"


# What `resume_conflicts` compares: an argument of `seqcompress fit` -> where the run's record keeps it.
_RECORDED = {
    "epochs": ("options", "epochs"), "max_steps": ("options", "max_steps"), "minutes": ("options", "max_minutes"),
    "batch_size": ("options", "batch_size"), "lr": ("options", "lr"), "lr_end": ("options", "lr_end"),
    "decay_epochs": ("options", "decay_epochs"), "warmup_steps": ("options", "warmup_steps"),
    "seed": ("options", "seed"), "val_fraction": ("options", "val_fraction"), "eval_every": ("options", "eval_every"),
    "seq_len": ("model", "n_max"), "ratio": ("model", "ratio"), "d_model": ("model", "d_model"),
    "heads": ("model", "heads"), "layers": ("model", "layers"), "latent_dim": ("model", "latent_dim"),
    "resize_init": ("model", "resize_init"), "attention": ("model", "attention"),
    "positions": ("model", "positions"), "resize": ("model", "resize"), "domain": ("domain", "name"),
    "memory": ("model", "memory"), "run_windows": ("options", "run_windows"),
    "grad_accum": ("options", "grad_accum"), "log_every": ("options", "log_every"),
    "sampled_softmax": ("options", "sampled_softmax"), "token_noise": ("options", "token_noise"),
}


def resumed_metric(out_dir: str | os.PathLike) -> str:
    """The metric of the run checkpointed in `out_dir` (its domain's)."""
    record, _ = read_checkpoint_record(Path(out_dir) / CHECKPOINT_DIR)
    try:
        return get_domain(str(record["domain"].get("name", "")), record["domain"]).metric_name
    except (InputError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"the checkpoint in {out_dir} records an invalid domain: {exc}") from None


def resume_conflicts(out_dir: str | os.PathLike, given: dict) -> list[tuple[str, str]]:
    """(name, why) for each argument in `given` (name -> value, as `seqcompress fit` names them) that differs
    from what the run checkpointed in `out_dir` recorded; arguments it cannot compare always conflict."""
    record, state = read_checkpoint_record(Path(out_dir) / CHECKPOINT_DIR)
    sections = {"options": state["options"], "model": record["model"], "domain": record["domain"]}
    conflicts = []
    for name, value in given.items():
        if name == "data":
            recorded = [str(Path(p)) for p in record["data"]]  # resolved when recorded
            if [str(Path(p).resolve()) for p in value] != recorded:
                conflicts.append((name, f"the run recorded {', '.join(record['data'])}"))
        elif name in _RECORDED:
            section, key = _RECORDED[name]
            recorded = sections[section].get(key)
            if recorded != value and not (isinstance(value, (int, float)) and isinstance(recorded, (int, float))
                                          and float(recorded) == float(value)):
                conflicts.append((name, f"the run recorded {recorded!r}, given {value!r}"))
        else:
            conflicts.append((name, "the run's record holds it"))
    return conflicts


def load(model_dir: str | os.PathLike, device: str = "cpu"):
    """A saved model, its metadata and its domain, each checked: (model, meta, domain).

    Beyond `load_model`'s checks, the domain's saved state must restore and must fit the model (its
    vocabulary or feature count), so a config.json edited by hand fails here with one clear line."""
    model, meta = load_model(model_dir, pick_device(device))
    state = meta["domain"]
    try:
        domain = get_domain(str(state.get("name", "")), state)
        fixed = domain.model_fields()
    except (InputError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"the domain settings in {Path(model_dir) / CONFIG_FILE} are invalid: {exc}") from None
    wrong = {k: v for k, v in fixed.items() if getattr(model.config, k) != v}
    if wrong:
        k = next(iter(wrong))
        raise ModelFileError(f"the domain settings in {Path(model_dir) / CONFIG_FILE} do not fit the model: the domain "
                             f"needs {k} {wrong[k]}, the model has {getattr(model.config, k)}")
    return model, meta, domain


def evaluate_files(
    model_dir: str | os.PathLike,
    paths: list[str | os.PathLike] | None,
    batch_size: int = DEFAULT_BATCH,
    device: str = "auto",
    dtype: str = STORED_DTYPE,
    chunk_windows: int = CHUNK_WINDOWS,
    options: dict[str, str] | None = None,
    on_progress=None,
) -> dict:
    """The domain's reconstruction metrics of a saved model on `paths` (its bundled sample when empty), streamed.

    The latents go through the same storage as `encode` (grouped into chunks and quantised per chunk exactly
    as `encode_file` does), so the value is what `decode` of a file encoded with the same dtype gives.
    `options` are encode settings of the domain, as text (e.g. {"qualities": "drop"})."""
    from seqcompress.compress import evaluate_stream

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    model, meta, domain = load(model_dir, device)
    changes = domain.settings_class.parse(options or {}, allowed=domain.settings_class.encode_names())
    domain = domain.with_settings(**changes) if changes else domain
    data = [Path(p) for p in paths] if paths else domain.default_data()
    pieces = domain.pieces(check_data_paths(data), model.config.n_max)  # memory resets at each file
    result = evaluate_stream(model, domain.objective, pieces, dtype, batch_size, chunk_windows, on_progress)
    return {
        "domain": domain.name,
        "metric": domain.metric_name,
        "value": result.values[domain.metric_name],
        "metrics": result.values,
        "ratio": model.config.ratio,
        "dtype": dtype,
        "seq_len": model.config.n_max,
        "latent_len": model.config.m_max,
        "n_sequences": result.windows,
        "n_symbols": result.symbols,
        "data": [str(p) for p in data],
        "model_fingerprint": meta["fingerprint"],
    }


def held_out_example(model_dir: str | os.PathLike, limit: int = 160) -> dict:
    """The first held-out window of a model's own training run, rendered before and after reconstruction.

    The training data is streamed up to that window; the split is the one training recorded."""
    model, meta, domain = load(model_dir)
    training = meta["domain"].get("training", {})
    source = WindowSource.files(domain, training["data"], model.config.n_max)
    if "held_out_split" in training:
        split = Split.from_state(training["held_out_split"])
    else:  # a model saved before the split was recorded: settle it with a counting pass
        split = scan(source, training["val_fraction"], training["seed"])
    window = next(held_out_windows(source, split), None)
    if window is None:
        raise InputError(f"the training data of {model_dir} has changed: it no longer holds a held-out window")
    x, lengths = collate([window])
    with torch.inference_mode():
        out, _, _ = model(x, lengths)
    reconstructed = domain.with_side(domain.objective.prediction(out)[0], window)
    return {"original": domain.render(window, limit), "reconstructed": domain.render(reconstructed, limit)}


def describe_model(model_dir: str | os.PathLike) -> dict:
    """What `seqcompress info MODEL_DIR` shows: config, domain, fingerprint, size and training summary."""
    model, meta = load_model(model_dir)
    domain = dict(meta.get("domain", {}))
    training = domain.pop("training", {})
    training.pop("history", None)
    return {
        "model_dir": str(model_dir),
        "domain": domain.get("name"),
        "fingerprint": meta["fingerprint"],
        "parameters": model.parameter_count(),
        "seq_len": model.config.n_max,
        "latent_len": model.config.m_max,
        "config": asdict(model.config),
        "domain_state": domain,
        "training": training,
    }
