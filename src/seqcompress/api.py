"""High-level library entry points: fit a model on files, evaluate it, describe it.

These are what the CLI calls; they work the same from Python:

    from seqcompress.api import fit, evaluate_files
    from seqcompress.domains import get_domain
    summary = fit(get_domain("text"), ["corpus.txt"], "model_dir", seq_len=128, ratio=0.5)
    print(evaluate_files("model_dir", ["other.txt"]))
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch

from seqcompress.atomic import atomic_write_text
from seqcompress.defaults import CHUNK_WINDOWS, DEFAULT_BATCH, STORED_DTYPE
from seqcompress.domain import Domain, check_data_paths
from seqcompress.errors import InputError, ModelFileError
from seqcompress.format import DTYPES
from seqcompress.model import CONFIG_FILE, ModelConfig, build_model, load_model
from seqcompress.train import (
    CHECKPOINT_DIR, Split, TrainOptions, WindowSource, collate, held_out_windows, pick_device, scan, train,
)

_RUN_FILE = "run.json"  # inside the checkpoint folder: what a --resume needs to rebuild the run


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
    domain: Domain,
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
    on_step=None,
    on_eval=None,
) -> dict:
    """Train a model on `paths` (the domain's bundled sample when empty) and save it in `out_dir`.

    The windows are streamed from the files on every pass (never all in memory). With `resume`, the run
    checkpointed in `out_dir` continues with the domain, model config and data it recorded. Returns the
    summary that `seqcompress fit --json` prints.
    """
    out_dir = Path(out_dir)
    options = options or TrainOptions()
    run_file = out_dir / CHECKPOINT_DIR / _RUN_FILE
    if resume:
        if not run_file.is_file():
            raise ModelFileError(f"nothing to resume in {out_dir}: no unfinished or finished run was checkpointed there")
        run = json.loads(run_file.read_text())
        domain = type(domain).from_state(run.get("domain") or domain.state())
        config = ModelConfig(**run["model"])
        data = [Path(p) for p in run["data"]]
    else:
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"{out_dir} exists and is not a directory")
        if (out_dir / CONFIG_FILE).exists() and not force:
            raise InputError(f"{out_dir} already holds a model; set force to replace it or resume to continue it")
        seq_len = seq_len or domain.default_seq_len
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
        data = [Path(p) for p in paths] if paths else domain.default_data()
        domain = domain.learn(data)  # before the config: a domain's model fields may depend on its data (channels)
        config = ModelConfig(n_max=seq_len, ratio=ratio, **{**extra, **domain.model_fields()})

    model = build_model(config, seed=options.seed)
    if not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_file, json.dumps({"model": asdict(config), "domain": domain.state(),
                                                "data": [str(p) for p in data]}, indent=2))
    result = train(model, domain.objective, WindowSource.files(domain, data, config.n_max), options,
                   checkpoint_dir=out_dir, resume=resume, on_step=on_step, on_eval=on_eval)
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
    }
    training = {k: summary[k] for k in ("metric", "value", "steps", "epochs", "seconds", "seed", "data")}
    training["val_fraction"] = options.val_fraction
    training["held_out_split"] = result.split.state()
    training["history"] = result.history
    model.save(out_dir, domain={**domain.state(), "training": training})
    return summary


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
    from seqcompress.domains import get_domain

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    model, meta = load_model(model_dir, pick_device(device))
    domain = get_domain(meta["domain"].get("name", ""), meta["domain"])
    changes = domain.settings_class.parse(options or {}, allowed=domain.settings_class.encode_names())
    domain = domain.with_settings(**changes) if changes else domain
    data = [Path(p) for p in paths] if paths else domain.default_data()
    pieces = (piece for path in check_data_paths(data) for piece in domain.codec.iter_windows(path, model.config.n_max))
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
    from seqcompress.domains import get_domain

    model, meta = load_model(model_dir)
    domain = get_domain(meta["domain"].get("name", ""), meta["domain"])
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
    reconstructed = domain.objective.prediction(out)[0]
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
