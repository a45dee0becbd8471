"""Training: AdamW on reconstruction loss, the paper's LR schedule, held-out evaluation, checkpoints.

The loop knows nothing of files or terminals: it takes lists of windows, a domain (loss and
metric) and options, and reports progress through callbacks. The CLI draws the progress bar.

Schedule (Biermann et al.): LR falls linearly from `lr` to `lr_end` over the first
`decay_epochs` epochs, then stays at `lr_end`. Reproducible: the model, the held-out split and
the order of every epoch derive from `seed`, so a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as safetensors_bytes

from seqcompress.atomic import atomic_write_bytes, atomic_write_text
from seqcompress.attention import length_mask
from seqcompress.domain import Domain
from seqcompress.errors import InputError, ModelFileError
from seqcompress.model import SequenceAutoencoder

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainOptions:
    epochs: float | None = 1.0  # passes over the training windows (None: limited by steps or minutes)
    max_steps: int | None = None  # stop after this many optimizer steps
    max_minutes: float | None = None  # stop after this much training time
    batch_size: int = 8  # windows per step; small batches leave the early plateau sooner on CPU
    lr: float = 1e-3  # initial learning rate (paper: 1e-3)
    lr_end: float = 1e-4  # learning rate after the decay (paper: 1e-4)
    decay_epochs: float = 5.0  # epochs of linear decay (paper: 5)
    warmup_steps: int = 0  # optional linear warm-up steps before the decay
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    val_fraction: float = 0.05  # share of windows held out for validation
    eval_every: int = 0  # also evaluate every N steps (0: once per epoch and at the end)
    eval_batches: int | None = None  # cap held-out batches per evaluation (None: all)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.lr <= 0 or self.lr_end <= 0:
            raise InputError("learning rates must be positive")
        if self.epochs is None and self.max_steps is None and self.max_minutes is None:
            raise InputError("give epochs, max steps or max minutes")
        for name in ("epochs", "max_steps", "max_minutes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InputError(f"{name.replace('_', ' ')} must be positive, got {value}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"validation fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class Progress:
    """What the loop reports after each step (and, with `evaluated`, after an evaluation)."""

    step: int
    total_steps: int | None
    epoch: float
    loss: float
    batch_metric: float
    lr: float
    symbols_per_s: float
    elapsed_s: float
    held_out: dict[str, float] | None = None


@dataclass
class TrainResult:
    steps: int
    epochs: float
    seconds: float
    train_windows: int
    held_out_windows: int
    held_out_is_train: bool
    final_loss: float
    held_out: dict[str, float]
    symbols_per_s: float
    history: list[dict] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def split_held_out(windows: list[torch.Tensor], fraction: float, seed: int) -> tuple[list, list, bool]:
    """Seeded split into (train, held_out, held_out_is_train). With one window there is nothing to hold out."""
    if not windows:
        raise InputError("no data: the input produced no sequences")
    if len(windows) < 2 or fraction == 0:
        return windows, windows, True
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=g).tolist()
    n_val = min(len(windows) - 1, max(1, round(len(windows) * fraction)))
    return [windows[i] for i in order[n_val:]], [windows[i] for i in order[:n_val]], False


def collate(windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad windows (L,) or (L, F) to the longest: (B, N) or (B, N, F) and lengths (B,)."""
    lengths = torch.tensor([len(w) for w in windows])
    n = int(lengths.max())
    batch = windows[0].new_zeros((len(windows), n, *windows[0].shape[1:]))  # (B, N, ...)
    for i, w in enumerate(windows):
        batch[i, : len(w)] = w
    return batch, lengths


def batches(windows: list[torch.Tensor], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [collate(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]


def autocast_for(device: torch.device):
    """bf16 (or fp16) autocast on CUDA, nothing on CPU (fp32 is fastest there)."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(
    model: SequenceAutoencoder,
    domain: Domain,
    windows: list[torch.Tensor],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> dict[str, float]:
    """The domain's metrics and mean loss over `windows`, in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    loss_sum, count = 0.0, 0
    for i, (x, lengths) in enumerate(batches(windows, batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        x, lengths = x.to(device), lengths.to(device)
        with autocast_for(device):
            out, _, _ = model(x, lengths)
        mask = length_mask(lengths, x.shape[1])  # (B, N)
        symbols = int(mask.sum())
        loss_sum += float(domain.loss(out, x, mask)) * symbols
        count += symbols
        for key, value in domain.metric_totals(out.float(), x, mask).items():
            totals[key] = totals.get(key, 0.0) + value
    model.train(was_training)
    values = domain.metric_values(totals)
    values["loss"] = loss_sum / max(count, 1)
    return values


class _Schedule:
    """Linear warm-up, then linear decay lr -> lr_end over `decay_steps`, then constant."""

    def __init__(self, opts: TrainOptions, steps_per_epoch: int) -> None:
        self.opts, self.decay_steps = opts, max(1, round(opts.decay_epochs * steps_per_epoch))

    def __call__(self, step: int) -> float:
        o = self.opts
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        t = min(1.0, (step - o.warmup_steps) / self.decay_steps)
        return o.lr + (o.lr_end - o.lr) * t


def train(
    model: SequenceAutoencoder,
    domain: Domain,
    windows: list[torch.Tensor],
    opts: TrainOptions,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_step: Callable[[Progress], None] | None = None,
    on_eval: Callable[[Progress], None] | None = None,
) -> TrainResult:
    """Train `model` in place on `windows` (a held-out share is split off first) and return the summary."""
    device = pick_device(opts.device)
    model.to(device).train()
    train_w, val_w, held_out_is_train = split_held_out(windows, opts.val_fraction, opts.seed)
    steps_per_epoch = math.ceil(len(train_w) / opts.batch_size)
    limits = [s for s in (opts.max_steps, opts.epochs and math.ceil(opts.epochs * steps_per_epoch)) if s]
    total_steps = min(limits) if limits else None
    schedule = _Schedule(opts, steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())

    step, elapsed_before, history = 0, 0.0, []
    ckpt = Path(checkpoint_dir) / CHECKPOINT_DIR if checkpoint_dir else None
    if resume:
        if ckpt is None or not (ckpt / "state.json").is_file():
            raise ModelFileError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
        step, elapsed_before, history = _load_checkpoint(ckpt, model, optimizer, opts, device)

    start, symbols_done, last_loss = time.perf_counter(), 0, float("nan")
    order: list[int] = []
    while total_steps is None or step < total_steps:
        elapsed = elapsed_before + time.perf_counter() - start
        if opts.max_minutes is not None and elapsed >= opts.max_minutes * 60:
            break
        epoch, index = divmod(step, steps_per_epoch)
        if index == 0 or not order:
            g = torch.Generator().manual_seed(opts.seed * 100_003 + epoch)
            order = torch.randperm(len(train_w), generator=g).tolist()
        x, lengths = collate([train_w[i] for i in order[index * opts.batch_size : (index + 1) * opts.batch_size]])
        x, lengths = x.to(device), lengths.to(device)
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mask = length_mask(lengths, x.shape[1])  # (B, N)
        with autocast_for(device):
            out, _, _ = model(x, lengths)
            loss = domain.loss(out, x, mask)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        symbols_done += int(lengths.sum())
        last_loss = float(loss.detach())
        run_s = time.perf_counter() - start
        with torch.no_grad():
            batch_metric = domain.metric_values(domain.metric_totals(out.detach().float(), x, mask))[domain.metric_name]
        progress = Progress(
            step, total_steps, step / steps_per_epoch, last_loss, batch_metric, lr,
            symbols_done / max(run_s, 1e-9), elapsed_before + run_s,
        )
        if on_step:
            on_step(progress)
        end_of_epoch = step % steps_per_epoch == 0
        if end_of_epoch or (opts.eval_every and step % opts.eval_every == 0):
            progress.held_out = evaluate(model, domain, val_w, opts.batch_size * 4, device, opts.eval_batches)
            model.train()
            history.append({"step": step, "epoch": round(progress.epoch, 4), "elapsed_s": round(progress.elapsed_s, 1),
                            "train_loss": last_loss, **progress.held_out})
            if on_eval:
                on_eval(progress)
            if ckpt is not None and end_of_epoch:
                _save_checkpoint(ckpt, model, optimizer, opts, step, progress.elapsed_s, history)

    seconds = elapsed_before + time.perf_counter() - start
    held_out = evaluate(model, domain, val_w, opts.batch_size * 4, device)
    if not history or history[-1]["step"] != step:
        history.append({"step": step, "epoch": round(step / steps_per_epoch, 4), "elapsed_s": round(seconds, 1),
                        "train_loss": last_loss, **held_out})
    if ckpt is not None:
        _save_checkpoint(ckpt, model, optimizer, opts, step, seconds, history)
    model.eval()
    return TrainResult(
        steps=step, epochs=step / steps_per_epoch, seconds=seconds, train_windows=len(train_w),
        held_out_windows=len(val_w), held_out_is_train=held_out_is_train, final_loss=last_loss,
        held_out=held_out, symbols_per_s=symbols_done / max(time.perf_counter() - start, 1e-9), history=history,
    )


# ---- checkpoints: weights and optimizer state in safetensors, counters in JSON ------------------
def _save_checkpoint(ckpt: Path, model, optimizer, opts: TrainOptions, step: int, elapsed: float, history) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    atomic_write_bytes(ckpt / "train.safetensors", safetensors_bytes(tensors))
    meta = {"step": step, "elapsed_s": elapsed, "options": asdict(opts), "history": history,
            "param_groups": state["param_groups"]}
    atomic_write_text(ckpt / "state.json", json.dumps(meta, indent=2))


def _load_checkpoint(ckpt: Path, model, optimizer, opts: TrainOptions, device) -> tuple[int, float, list]:
    try:
        meta = json.loads((ckpt / "state.json").read_text())
        tensors = load_file(str(ckpt / "train.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelFileError(f"cannot read the checkpoint in {ckpt}: {exc}") from None
    for key in ("seed", "batch_size", "val_fraction"):
        if meta["options"].get(key) != getattr(opts, key):
            raise InputError(f"--resume needs the same {key.replace('_', ' ')} as the interrupted run "
                             f"({meta['options'].get(key)}), got {getattr(opts, key)}")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            optim_state.setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
    optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), float(meta["elapsed_s"]), list(meta["history"])
