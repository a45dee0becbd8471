"""Training options: a dataclass in a module that imports no torch, so the command line reads its defaults
(`TrainOptions.batch_size`, ...) without paying for torch at `--help`."""

from __future__ import annotations

from dataclasses import dataclass

from seqcompress.defaults import DEFAULT_BATCH
from seqcompress.errors import InputError


@dataclass
class TrainOptions:
    epochs: float | None = 1.0  # passes over the training windows (None: limited by steps or minutes)
    max_steps: int | None = None  # stop after this many optimizer steps
    max_minutes: float | None = None  # stop after this much training time
    batch_size: int = DEFAULT_BATCH  # windows per step; small batches leave the early plateau sooner on CPU
    lr: float = 1e-3  # initial learning rate (paper: 1e-3)
    lr_end: float = 1e-4  # learning rate after the decay (paper: 1e-4)
    decay_epochs: float | None = None  # epochs of linear decay; None: the domain's (paper and most domains: 5)
    warmup_steps: int = 0  # optional linear warm-up steps before the decay
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    val_fraction: float = 0.05  # share of windows held out for validation
    eval_every: int = 0  # also evaluate every N steps (0: once per epoch and at the end)
    eval_batches: int | None = None  # cap held-out batches per evaluation during training (None: all)
    shuffle_buffer: int = 4096  # windows shuffled together (fewer when they would pass SHUFFLE_BYTES)
    run_windows: int = 8  # models with memory: consecutive windows each batch lane trains on, one per step
    grad_accum: int = 1  # forward/backward passes per step and process (the batch is split among them)
    compile: bool = False  # torch.compile the model for training (worth it on a GPU; minutes of compiling first)
    log_every: int = 1  # report (progress, logs, the loss check) every N steps: each report syncs a GPU with the host
    sampled_softmax: int = 0  # token domains: train on the batch's own tokens and this many drawn from the
    # vocabulary instead of all of it (0: the full softmax); evaluation always scores the full vocabulary
    token_noise: float = 0.0  # token domains: the share of training tokens replaced by tokens drawn uniformly
    # from the vocabulary, in input and target alike, so the model learns to rebuild tokens the corpus never shows

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.lr <= 0 or self.lr_end <= 0:
            raise InputError(f"lr and lr_end must be positive, got {self.lr} and {self.lr_end}")
        if self.epochs is None and self.max_steps is None and self.max_minutes is None:
            raise InputError("give epochs, max_steps or max_minutes")
        for name in ("epochs", "max_steps", "max_minutes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InputError(f"{name} must be positive, got {value}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.run_windows < 1:
            raise InputError(f"run_windows must be at least 1, got {self.run_windows}")
        if self.log_every < 1:
            raise InputError(f"log_every must be at least 1, got {self.log_every}")
        if self.sampled_softmax < 0:
            raise InputError(f"sampled_softmax must be 0 (off) or a number of drawn tokens, got {self.sampled_softmax}")
        if not 0 <= self.token_noise < 1:
            raise InputError(f"token_noise must be in [0, 1), got {self.token_noise}")
        if self.decay_epochs is not None and not self.decay_epochs > 0:
            raise InputError(f"decay_epochs must be positive, got {self.decay_epochs}")
        if self.grad_accum < 1:
            raise InputError(f"grad_accum must be at least 1, got {self.grad_accum}")
        if self.shuffle_buffer < 1:
            raise InputError(f"shuffle_buffer must be at least 1, got {self.shuffle_buffer}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise InputError(f"eval_batches must be at least 1, got {self.eval_batches}")
