"""The reduction probe: how far can a domain's sequences be shortened before information is lost?

For every cell (method, seq_len, ratio, seed) the probe trains one model under the same budget on
the same training windows, then scores it on the same held-out windows through the stored latent
dtype. Methods are the reducing-attention model ("attention", this project) and, with baselines,
the other length-changing layers in seqcompress/reducers.py plus the domain's classical codecs at
the same number of stored floats (seqcompress/baselines.py). Every cell is written to
REPORT_DIR/results.json as soon as it finishes, so a killed probe resumes where it stopped.

Held-out data is one of (`ProbePlan.split`, `test`):

    random          a seeded share `held_out` of the windows (the same for every method and seed);
    chronological   the last `held_out` of each training file's symbols: the model trains on the rest and is
                    scored on a future it never saw (a time series' last quarter);
    test files      whole files, never seen in training.

With the last two, each training file is one stream of symbols, and `train_shifts` cuts it into windows at
that many offsets (0, seq_len / k, 2 seq_len / k, ...), so that a short series still gives enough
training windows; a classical codec that learns (PCA) fits on every full window of the streams, at every
symbol offset. The domain learns its settings (normalisation) from the training files: whole, or with the
chronological split only from the part of each file before its held-out tail (`Domain.learn`'s `share`).

Reported next to every metric: the latent length, latent floats per input symbol and bits per
symbol at the stored dtype, so that "reduction" (fewer, wider vectors) is never mistaken for
"compression" (fewer bits).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path

import torch

from seqcompress.atomic import atomic_write_bytes, atomic_write_text
from seqcompress.baselines import baselines_for, unavailable_baselines
from seqcompress.compress import evaluate_quantized
from seqcompress.domain import Domain, split_windows
from seqcompress.errors import InputError
from seqcompress.format import DTYPES
from seqcompress.kernels import KERNELS, check_combination
from seqcompress.lengths import latent_length
from seqcompress.memory import Link, held_links
from seqcompress.model import ModelConfig, build_model, option_defaults
from seqcompress.positions import POSITIONS
from seqcompress.reducers import REDUCERS
from seqcompress.resize import RESIZES
from seqcompress.train import TrainOptions, WindowSource, pick_device, scan, train

RESULTS, CSV_FILE, REPORT, PLOT, METHODS_PLOT = "results.json", "results.csv", "report.md", "metric_vs_ratio.png", \
    "methods_vs_ratio.png"
SCHEMA = "seqcompress-probe/2"  # 2: hashed held-out split, settings learned from the training part only
HELD_OUT_SEED = 12_345  # the held-out split is the same for every method and seed
BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8}
SPLITS = ("random", "chronological")
BUDGET_KEYS = ("epochs", "max_steps", "max_minutes")
# A plan that sets none of BUDGET_KEYS trains each run for this long (the budget of the scripts the probe absorbed).
DEFAULT_BUDGET = {"epochs": None, "max_minutes": 2.0}


@dataclass
class ProbePlan:
    """Everything that decides a probe's numbers; a resumed probe must have the same plan."""

    domain: str
    domain_state: dict
    data: list[str]  # training files (empty: the domain's bundled sample)
    test: list[str] = field(default_factory=list)  # held-out files; empty: hold out `held_out` of the data
    held_out: float = 0.1  # share held out: of the windows (split "random") or of each file's symbols
    split: str = "random"  # without test files: "random" windows, or the "chronological" tail of each file
    train_shifts: int = 1  # with test files or a chronological split: offsets each training stream is cut at
    cells: list[tuple[int, float]] = field(default_factory=list)  # (seq_len, ratio)
    seeds: int = 3
    methods: list[str] = field(default_factory=lambda: ["attention"])
    classical: bool = False  # also score the domain's classical codecs
    model: dict = field(default_factory=dict)  # ModelConfig fields (d_model, layers, ...)
    training: dict = field(default_factory=dict)  # TrainOptions fields (budget: DEFAULT_BUDGET when none, lr, ...)
    dtype: str = "float16"  # latents are scored after storing them as this dtype
    batch_tokens: int | None = None  # symbols per optimizer step: batch size = batch_tokens // seq_len per cell
    # Variants of the reducing-attention method (every combination is a method of its own; the baselines
    # keep the paper's block): kernels, position schemes (empty: the model's), stage counts, resizes.
    attention: list[str] = field(default_factory=lambda: ["full"])
    positions: list[str] = field(default_factory=list)
    stages: list[int] = field(default_factory=lambda: [1])
    resize: list[str] = field(default_factory=lambda: ["absolute"])
    options: dict = field(default_factory=dict)  # kernel, position and resize options (window, rank, ...)
    memory: list[int] = field(default_factory=lambda: [0])  # memory across windows, in windows of the cell (0: none)

    def __post_init__(self) -> None:
        if not self.cells:
            raise InputError("the probe needs at least one (seq_len, ratio) cell")
        for seq_len, ratio in self.cells:
            if seq_len < 1:
                raise InputError(f"seq_len must be positive, got {seq_len}")
            if not 0 < ratio <= 1:
                raise InputError(f"ratio must be in (0, 1], got {ratio}")
        if self.seeds < 1:
            raise InputError(f"seeds must be at least 1, got {self.seeds}")
        unknown = [m for m in self.methods if m not in REDUCERS]
        if unknown or not self.methods:
            raise InputError(f"unknown method(s) {unknown}; choose from {', '.join(REDUCERS)}")
        if self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if not 0 < self.held_out < 1:
            raise InputError(f"held_out must be in (0, 1), got {self.held_out}")
        if self.split not in SPLITS:
            raise InputError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.split == "chronological" and self.test:
            raise InputError("split 'chronological' holds out the tail of each training file; give it or test "
                             "files, not both")
        if self.train_shifts < 1:
            raise InputError(f"train_shifts must be at least 1, got {self.train_shifts}")
        if self.train_shifts > 1 and self.split == "random" and not self.test:
            raise InputError("train_shifts cuts whole training files at several offsets, which would put held-out "
                             "windows into training: use it with split 'chronological' or test files")
        if not self.memory or any(not isinstance(k, int) or k < 0 for k in self.memory):
            raise InputError(f"memory counts windows and must be 0 or more, got {self.memory}")
        if any(k < 1 for k in self.stages):
            raise InputError(f"stages counts stages and must be at least 1, got {self.stages}")
        if not any(self.training.get(key) is not None for key in BUDGET_KEYS):
            self.training = {**self.training, **DEFAULT_BUDGET}
        self._check_variants()
        known = {f.name for f in fields(ModelConfig)} - {"n_max", "ratio", "vocab_size", "feature_dim", "reducer",
                                                           "attention", "resize", "stages", "options"}
        bad = set(self.model) - known
        if bad:
            raise InputError(f"unknown model option(s): {', '.join(sorted(bad))}")
        TrainOptions(**self.training)  # validates budget and schedule
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise InputError(f"batch_tokens must be positive, got {self.batch_tokens}")

    @classmethod
    def from_json(cls, plan: dict) -> "ProbePlan":
        return cls(**{**plan, "cells": [tuple(c) for c in plan["cells"]]})

    def as_json(self) -> dict:
        plan = asdict(self)
        plan["cells"] = [list(c) for c in self.cells]
        # Fields added later are left out at their defaults, so a probe started before they existed still resumes.
        for name, default in _LATER_DEFAULTS.items():
            if plan[name] == default:
                del plan[name]
        return plan

    def _check_variants(self) -> None:
        """Refuse before the first cell what would fail or be ignored later: a kernel, scheme or resize name,
        a combination that leaves no attention variant, an option no variant takes, an option value."""
        variants = self.variants()
        if "attention" in self.methods and not any(v["reducer"] == "attention" for v in variants.values()):
            scheme = (self.positions or [self.model.get("positions", "learned")])[0]
            raise InputError(f"no attention variant can be built: {check_combination(self.attention[0], POSITIONS[scheme], True)}")
        used = set()
        for v in variants.values():
            if v["reducer"] == "attention":
                takes = option_defaults(v["attention"], v["positions"], v["resize"])
                used |= set(takes)
                fields_ = {k: x for k, x in self.model.items() if k in ("d_model", "heads")}
                build_model(ModelConfig(n_max=8, ratio=0.5, vocab_size=2, reducer="attention", attention=v["attention"],
                                        positions=v["positions"], resize=v["resize"], **fields_,
                                        options={k: x for k, x in self.options.items() if k in takes}))
        unused = sorted(set(self.options) - used)
        if unused:
            raise InputError(f"option(s) {', '.join(unused)} are taken by none of the variants")

    def variants(self) -> dict[str, dict]:
        """Method label -> ModelConfig overrides, in run order: each reducer in `methods`; "attention" once per
        combination of kernel, position scheme, resize and stage count ("attention+local+alibi+2stages").
        Combinations a kernel refuses (lowrank with rope) are left out."""
        out: dict[str, dict] = {}
        default_positions = self.model.get("positions", "learned")
        for method in self.methods:
            if method != "attention":
                out[method] = {"reducer": method}
                continue
            for kernel in self.attention:
                for scheme in self.positions or [default_positions]:
                    for resize in self.resize:
                        for count in self.stages:
                            for name, value, registry in (("attention", kernel, KERNELS), ("positions", scheme, POSITIONS),
                                                          ("resize", resize, RESIZES)):
                                if value not in registry:
                                    raise InputError(f"unknown {name} {value!r}; choose from {', '.join(registry)}")
                            for windows in self.memory:
                                if check_combination(kernel, POSITIONS[scheme], resizing=True, memory=windows > 0):
                                    continue
                                parts = ["attention"] + ([kernel] if kernel != "full" else []) \
                                    + ([scheme] if scheme != default_positions else []) \
                                    + (["relative"] if resize != "absolute" else []) \
                                    + ([f"{count}stages"] if count > 1 else []) + ([f"mem{windows}"] if windows else [])
                                overrides = {"reducer": "attention", "attention": kernel, "positions": scheme,
                                             "resize": resize, "stage_count": count, "memory_windows": windows}
                                out["+".join(parts)] = overrides
        return out


_LATER_DEFAULTS = {"attention": ["full"], "positions": [], "stages": [1], "resize": ["absolute"], "options": {},
                   "split": "random", "train_shifts": 1, "memory": [0]}


def stage_ratios(seq_len: int, ratio: float, count: int) -> list[float]:
    """`count` stages from seq_len to latent_length(seq_len, ratio) through geometrically spaced lengths, each an
    exact ratio of consecutive lengths (512 -> 128 in 2: 1/2, 1/2; 128 -> 64 in 2: 91/128, 64/91)."""
    m = latent_length(seq_len, ratio)
    lengths = [seq_len] + [max(m, round(seq_len * (m / seq_len) ** (i / count))) for i in range(1, count)] + [m]
    return [b / a for a, b in zip(lengths, lengths[1:])]


# The paper's table (arXiv 2310.14837): input:latent lengths on Wikipedia text with the BERT tokenizer,
# AdamW, LR 1e-3 -> 1e-4 linearly over the first 5 epochs.
PAPER_DOMAIN = "text"
PAPER_CELLS = "512:256,512:128,128:64,128:72"
PAPER_PROTOCOLS = {
    # Finishes in under 2 hours on 2 CPU cores: a narrower model (d_model 128), 0.3 epochs per run on the
    # paper's schedule (1e-3 falling towards 1e-4 over 5 epochs, so the run ends near 0.95e-3: squeezing
    # the decay into 0.3 epochs cost 13 points at 128 -> 64), 1,024 tokens per step at every length
    # (steps, not tokens, limit early progress on CPU), all four reducers, 3 seeds.
    "cpu": {"model": {"d_model": 128, "heads": 4, "layers": 2, "ffn_dim": 512, "latent_dim": 128},
            "training": {"epochs": 0.3, "decay_epochs": 5.0, "lr": 1e-3, "lr_end": 1e-4},
            "batch_tokens": 1024},
    # The paper's setting for a CUDA machine: the default model, 10 epochs, decay over the first 5,
    # 8 windows of 512 tokens per step. Not run on the project's CPU machine.
    "full": {"model": {"d_model": 256, "heads": 4, "layers": 2, "ffn_dim": 1024, "latent_dim": 256},
             "training": {"epochs": 10.0, "decay_epochs": 5.0, "lr": 1e-3, "lr_end": 1e-4},
             "batch_tokens": 4096},
}


def grid(seq_lens: list[int], ratios: list[float]) -> list[tuple[int, float]]:
    return [(n, r) for n in seq_lens for r in ratios]


def parse_cells(text: str) -> list[tuple[int, float]]:
    """"512:256,128:72" -> [(512, 0.5), (128, 0.5625)]: explicit input:latent lengths (the paper's table)."""
    cells = []
    for item in text.split(","):
        try:
            n, m = (int(v) for v in item.split(":"))
        except ValueError:
            raise InputError(f"cells are SEQ_LEN:LATENT_LEN pairs like 512:256, got {item!r}") from None
        if not 0 < m <= n:
            raise InputError(f"cells: the latent length must be in 1..{n}, got {item!r}")
        cells.append((n, m / n))
    return cells


def cell_key(method: str, seq_len: int, ratio: float, seed: int | None) -> str:
    return f"{method}|{seq_len}|{Fraction(ratio).limit_denominator(1_000_000)}|{seed}"


def machine() -> dict:
    device = pick_device("auto")
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "device": str(device), "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "torch": torch.__version__}


# ---- held-out data ---------------------------------------------------------------------------------
@dataclass
class Split:
    """The windows of one seq_len: what the models train on, what every method is scored on, and the training
    streams (each training file's symbols in order, for a split that keeps files whole; None for a random one)."""

    train: list[torch.Tensor]
    test: list[torch.Tensor]
    streams: list[torch.Tensor] | None = None
    train_links: list[Link] | None = None  # each window's stream and record start (models with memory)
    test_links: list[Link] | None = None
    cut: Callable[[torch.Tensor], torch.Tensor] | None = None  # a window cut from a stream (`Domain.cut`)

    def codec_windows(self, seq_len: int) -> list[torch.Tensor]:
        """What a classical codec that learns fits on: every full window of the streams, at every symbol offset
        (views, not copies, unless the domain makes each cut its own window), or the training windows of a
        random split."""
        if self.streams is None:
            return self.train
        cut = self.cut or (lambda w: w)
        return [cut(s[i : i + seq_len]) for s in self.streams for i in range(len(s) - seq_len + 1)]


def tail_split(stream: torch.Tensor, held_out: float, where: str = "the data") -> tuple[torch.Tensor, torch.Tensor]:
    """A stream of symbols (S, ...) -> its first and its last `held_out` share (views)."""
    cut = round(len(stream) * (1 - held_out))
    if not 0 < cut < len(stream):
        raise InputError(f"{where} holds {len(stream)} symbol(s): too few to hold out its last {held_out:.0%} "
                         "and train on the rest")
    return stream[:cut], stream[cut:]


def shifted_windows(stream: torch.Tensor, seq_len: int, shifts: int, per_offset: bool = False) -> list:
    """Windows of seq_len symbols cut from the stream (S, ...) at `shifts` offsets 0, seq_len // shifts,
    2 seq_len // shifts, ... (each cut drops the symbols before its offset; the last window of each is
    shorter). One shift is the ordinary cut. With `per_offset`, one list of windows per offset."""
    offsets = sorted({k * seq_len // shifts for k in range(shifts)})
    cuts = [split_windows(stream[offset:], seq_len) for offset in offsets if offset < len(stream)]
    return cuts if per_offset else [w for cut in cuts for w in cut]


# ---- running ---------------------------------------------------------------------------------------
class Probe:
    """Runs a plan's cells in `out_dir`, resuming the cells of a probe with the same plan already there (with
    `force`, its results are discarded instead)."""

    def __init__(self, plan: ProbePlan, domain: Domain, out_dir: str | os.PathLike, force: bool = False) -> None:
        self.plan, self.domain, self.out = plan, domain, Path(out_dir)
        self.learned: Domain | None = None  # the domain with what it learned from the training files
        self._splits: dict[int, Split] = {}  # per seq_len, made when a cell first needs it
        self.results = self._load_or_start(force)

    def _load_or_start(self, force: bool) -> dict:
        path = self.out / RESULTS
        if path.is_file() and not force:
            try:
                results = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{path} is not valid JSON ({exc}); remove it to start over") from None
            if results.get("schema") != SCHEMA or results.get("plan") != self.plan.as_json():
                raise InputError(f"{self.out} holds a probe with different settings; use another output "
                                 "directory, or force to start over")
            return results
        objective = self.learned_domain().objective  # a domain may build its objective only once it has learned
        return {"schema": SCHEMA, "plan": self.plan.as_json(), "machine": machine(), "metric": objective.metric_name,
                "higher_is_better": objective.higher_is_better, "cells": []}

    def todo(self) -> list[tuple[str, int, float, int | None]]:
        """Every cell of the plan, in run order: (method, seq_len, ratio, seed); seed None for classical codecs."""
        cells = []
        classical = list(baselines_for(self.domain)) if self.plan.classical else []
        for seq_len, ratio in self.plan.cells:
            cells += [(name, seq_len, ratio, None) for name in classical]
            for seed in range(self.plan.seeds):
                cells += [(method, seq_len, ratio, seed) for method in self.plan.variants()]
        return cells

    def done(self) -> set[str]:
        return {c["key"] for c in self.results["cells"]}

    def check(self, cells: list[tuple[str, int, float, int | None]]) -> None:
        """Refuse, before anything trains, a plan whose model cells cannot all be built or trained (e.g. the dct
        start with another reducer, a sampled softmax on vector outputs): not after hours of earlier cells."""
        for method, seq_len, ratio, seed in cells:
            if seed is None:
                continue
            config = self.config(method, seq_len, ratio)
            if self._options(seq_len).sampled_softmax and not config.vocab_size:
                raise InputError("a sampled softmax (--sampled-softmax) is for token domains (text, DNA); the "
                                 f"{self.plan.domain} domain's models output vectors")
            if self._options(seq_len).token_noise and not config.vocab_size:
                raise InputError("token noise (--token-noise) is for token domains (text, DNA); the "
                                 f"{self.plan.domain} domain's models output vectors")

    def run(self, on_cell: Callable[[int, int, dict | None], None] | None = None, jobs: int = 1) -> dict:
        """Run every unfinished cell; on_cell(finished, total, cell) after each one (cell None at the start).
        With `jobs` > 1, cells run in that many worker processes (`_Workers`), each finished cell saved as it
        arrives, in the order they finish."""
        if jobs < 1:
            raise InputError(f"jobs must be at least 1, got {jobs}")
        todo, done = self.todo(), self.done()
        if on_cell:
            on_cell(len(done), len(todo), None)
        left = [cell for cell in todo if cell_key(*cell) not in done]
        self.check(left)
        # Classical codecs this machine cannot run (libsndfile without Opus) are named in the report, not scored.
        self.results.pop("skipped", None)
        if skipped := unavailable_baselines(self.domain) if self.plan.classical else {}:
            self.results["skipped"] = skipped
        finished = _Workers(self, jobs).run(left) if jobs > 1 and len(left) > 1 else map(self.cell, left)
        for cell in finished:
            self.results["cells"].append(cell)
            self.save()
            done.add(cell["key"])
            if on_cell:
                on_cell(len(done), len(todo), cell)
        return self.results

    def cell(self, todo: tuple[str, int, float, int | None]) -> dict:
        """One cell of `todo()`, run: a classical codec (seed None) or a trained model."""
        method, seq_len, ratio, seed = todo
        if seq_len not in self._splits:
            self._splits[seq_len] = self.split(seq_len)
        split = self._splits[seq_len]
        cell = (self.classical_cell(method, seq_len, ratio, split) if seed is None
                else self.model_cell(method, seq_len, ratio, seed, split))
        cell["key"] = cell_key(method, seq_len, ratio, seed)
        return cell

    def training_files(self) -> list[Path]:
        return [Path(p) for p in self.plan.data] or self.domain.default_data()

    def learned_domain(self) -> Domain:
        """The domain with the settings it learns from the training files (learned once): with a chronological
        split, from the part of each file the models train on (`share` = 1 - held_out, cut where `split` cuts),
        so that the held-out future never reaches the normalisation; otherwise from the whole files."""
        if self.learned is None:
            if self.plan.split == "chronological":
                self.learned = self.domain.learn(self.training_files(), share=1 - self.plan.held_out)
            else:
                self.learned = self.domain.learn(self.training_files())
        return self.learned

    def split(self, seq_len: int) -> Split:
        """The training and held-out windows of seq_len symbols (see the module's docstring)."""
        domain = self.learned_domain()
        if self.plan.split == "random" and not self.plan.test:
            pairs = list(domain.linked_windows(self.training_files(), seq_len))
            # With memory variants the windows are held out in runs, so that held-out windows keep their context
            # (the same split for every method of the probe).
            split = scan([w for w, _ in pairs], self.plan.held_out, HELD_OUT_SEED, block=self._block(seq_len))
            if split.held_out_is_train:
                raise InputError(f"the data gives a single window of {seq_len} symbols: nothing to hold out; "
                                 "give more data, test files or a shorter seq_len")
            train = list(held_links((w, link, split.trains_on(i)) for i, (w, link) in enumerate(pairs)))
            test = list(held_links((w, link, split.evaluates_on(i)) for i, (w, link) in enumerate(pairs)))
            return Split([w for w, _ in train], [w for w, _ in test], None, [lk for _, lk in train],
                         [lk for _, lk in test])
        streams, test_w, test_links = [], [], []
        for path in self.training_files():
            windows = domain.load_windows([path], seq_len)
            if not windows:
                raise InputError(f"{path} gives no windows")
            stream = domain.joined(windows)  # (S, ...) the file's symbols in order
            if self.plan.split == "chronological":
                stream, tail = tail_split(stream, self.plan.held_out, str(path))
                tail_windows = [domain.cut(w) for w in split_windows(tail, seq_len)]
                test_w += tail_windows
                test_links += [Link(0, i == 0) for i in range(len(tail_windows))]
            streams.append(stream)
        if self.plan.test:
            pairs = list(domain.linked_windows([Path(p) for p in self.plan.test], seq_len))
            test_w, test_links = [w for w, _ in pairs], [link for _, link in pairs]
        # A training stream is one file's symbols joined: each cut of it is one record for memory.
        cuts = [shifted_windows(s, seq_len, self.plan.train_shifts, per_offset=True) for s in streams]
        train_w = [domain.cut(w) for offsets in cuts for cut in offsets for w in cut]
        train_links = [Link(0, i == 0) for offsets in cuts for cut in offsets for i in range(len(cut))]
        return Split(train_w, test_w, streams, train_links, test_links, domain.cut)

    def _options(self, seq_len: int, seed: int = 0) -> TrainOptions:
        batch = {"batch_size": max(1, self.plan.batch_tokens // seq_len)} if self.plan.batch_tokens else {}
        options = TrainOptions(**{"val_fraction": 0.02, **self.plan.training, **batch, "seed": seed})
        if options.decay_epochs is None:  # a plan that names no schedule takes the domain's
            options = replace(options, decay_epochs=self.domain.default_decay_epochs)
        return options

    def _block(self, seq_len: int) -> int:
        """Windows held out together: a training run when memory variants run (`run_windows`), else 1."""
        return self._options(seq_len).run_windows if any(self.plan.memory) else 1

    def config(self, method: str, seq_len: int, ratio: float) -> ModelConfig:
        overrides = dict(self.plan.variants()[method])
        count = overrides.pop("stage_count", 1)
        windows = overrides.pop("memory_windows", 0)
        if windows:
            overrides["memory"] = windows * seq_len
        if count > 1:
            overrides["stages"] = stage_ratios(seq_len, ratio, count)
            ratio = math.prod(overrides["stages"])
        if overrides["reducer"] == "attention":
            takes = option_defaults(overrides["attention"], overrides["positions"], overrides["resize"])
            overrides["options"] = {k: v for k, v in self.plan.options.items() if k in takes}
        fixed = self.learned_domain().model_fields()
        return ModelConfig(n_max=seq_len, ratio=ratio, **{**self.plan.model, **overrides, **fixed})

    def _budget(self, config: ModelConfig, windows: list[torch.Tensor]) -> dict:
        lengths = [len(w) for w in windows]
        symbols = max(sum(lengths), 1)
        latent = sum(config.latent_length(n) for n in lengths) * config.latent_dim
        # The side numbers a window keeps (RevIN's mean and scale) count too, as float32 (every method stores them).
        side = sum(self.learned_domain().side_floats(w) for w in windows)
        per_symbol = (latent + side) / symbols
        return {"latent_len": config.m_max, "latent_dim": config.latent_dim, "latent_floats_per_symbol": per_symbol,
                "bits_per_symbol": (latent * BITS[self.plan.dtype] + side * 32) / symbols,
                "dtype": self.plan.dtype, "test_windows": len(windows), "test_symbols": sum(lengths)}

    def train_model(self, model, windows: list[torch.Tensor], options: TrainOptions):
        """Train one cell's model in place on its windows; the TrainResult."""
        return train(model, self.learned_domain().objective, windows, options)

    def model_cell(self, method: str, seq_len: int, ratio: float, seed: int, split: Split) -> dict:
        domain = self.learned_domain()
        config = self.config(method, seq_len, ratio)
        model = build_model(config, seed=seed, feature_basis=domain.start_basis(config.resize_init, lambda: split.train))
        options = self._options(seq_len, seed)
        result = self.train_model(model, WindowSource.of(split.train, split.train_links), options)
        model.cpu().eval()
        metrics = evaluate_quantized(model, domain.objective, split.test, self.plan.dtype, batch_size=32,
                                     links=split.test_links)
        return {"method": method, "kind": "model", "seq_len": seq_len, "ratio": ratio, "seed": seed,
                "metrics": metrics, "value": metrics[domain.metric_name], **self._budget(config, split.test),
                "parameters": model.parameter_count(), "steps": result.steps, "epochs": round(result.epochs, 4),
                "seconds": round(result.seconds, 1), "train_windows": result.train_windows}

    def classical_cell(self, name: str, seq_len: int, ratio: float, split: Split) -> dict:
        """A classical codec given each held-out window's stored floats of the model (m latents x latent_dim)."""
        domain = self.learned_domain()
        config = ModelConfig(n_max=seq_len, ratio=ratio, **{**self.plan.model, **domain.model_fields()})
        floats = [config.latent_length(len(w)) * config.latent_dim for w in split.test]
        start = time.perf_counter()
        baseline = baselines_for(domain, BITS[self.plan.dtype])[name]
        fit_on = split.codec_windows(seq_len) if baseline.learns else []
        outputs = baseline.reconstruct(fit_on, split.test, floats)
        totals = domain.objective.accumulator()
        for out, target in zip(outputs, split.test):
            totals.add(out[None].float(), target[None], torch.ones(1, len(target), dtype=torch.bool))
        metrics = totals.values()
        budget = self._budget(config, split.test)
        # A codec that cannot be held to the budget (Opus) reports what it stored: kept next to the budget.
        measured = {} if baseline.stored_bits is None else \
            {"actual_bits_per_symbol": baseline.stored_bits / max(budget["test_symbols"], 1)}
        return {"method": name, "kind": "classical", "seq_len": seq_len, "ratio": ratio, "seed": None,
                "metrics": metrics, "value": metrics[domain.metric_name], **budget, **measured,
                **({"note": baseline.note} if baseline.note else {}),
                "parameters": 0, "steps": 0, "epochs": 0, "seconds": round(time.perf_counter() - start, 1),
                "train_windows": len(fit_on)}

    # ---- outputs ---------------------------------------------------------------------------------
    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / RESULTS, json.dumps(self.results, indent=2) + "\n")

    def write_reports(self) -> list[Path]:
        """results.csv, report.md and the PNG plots from results.json."""
        self.save()
        rows = summarise(self.results)
        atomic_write_text(self.out / CSV_FILE, cells_csv(self.results["cells"]))
        atomic_write_text(self.out / REPORT, report_markdown(self.results, rows))
        written = [self.out / RESULTS, self.out / CSV_FILE, self.out / REPORT]
        written += write_plots(self.results, rows, self.out)
        return written


# ---- cells in worker processes ---------------------------------------------------------------------
class _Workers:
    """`probe --jobs N`: independent cells in N worker processes (spawned: each imports torch afresh). Each
    worker rebuilds the probe from its plan (JSON) and the domain's state, makes the splits it needs (the same
    as the parent's: they are seeded) and returns finished cells; the parent saves them. On CPU each worker
    gets cores / N threads; with CUDA devices, worker i trains on GPU i mod count."""

    def __init__(self, probe: Probe, jobs: int) -> None:
        self.probe, self.jobs = probe, jobs

    def run(self, todo: list) -> Iterator[dict]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        context = multiprocessing.get_context("spawn")
        device = self.probe.plan.training.get("device", "auto")
        gpus = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        counter = context.Value("i", 0)
        plan, out = self.probe.plan.as_json(), str(self.probe.out)
        pool = ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_worker_start,
                                   initargs=(plan, out, threads, gpus, counter))
        try:
            running = {pool.submit(_worker_cell, cell) for cell in todo}
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()  # a worker's error is raised here
        except BrokenProcessPool:
            raise InputError("a probe worker process died (out of memory?); the finished cells are saved: run "
                             "the probe again to resume, with fewer --jobs") from None
        finally:  # on an error or a stop, the cells still running are abandoned with their workers
            processes = list(getattr(pool, "_processes", {}).values())  # no public way to stop running tasks
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()


_WORKER: Probe | None = None  # the probe a worker process runs cells of


def _worker_start(plan: dict, out: str, threads: int, gpus: int, counter) -> None:
    global _WORKER
    import signal

    from seqcompress.domains import get_domain

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    torch.set_num_threads(threads)
    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    if gpus:
        torch.cuda.set_device(index % gpus)
    plan = ProbePlan.from_json(plan)
    # force: the worker keeps its results in memory only; the parent saves what it returns
    _WORKER = Probe(plan, get_domain(plan.domain, plan.domain_state), out, force=True)


def _worker_cell(todo: tuple) -> dict:
    return _WORKER.cell(tuple(todo))


# ---- summaries -----------------------------------------------------------------------------------
def summarise(results: dict) -> list[dict]:
    """One row per (seq_len, ratio, method): mean and std over seeds, ranked within each (seq_len, ratio)."""
    groups: dict[tuple, list[dict]] = {}
    for c in results["cells"]:
        groups.setdefault((c["seq_len"], c["ratio"], c["method"]), []).append(c)
    rows = []
    for (seq_len, ratio, method), cells in groups.items():
        values = [c["value"] for c in cells]
        first = cells[0]
        rows.append({"seq_len": seq_len, "ratio": ratio, "method": method, "kind": first["kind"],
                     "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "runs": len(values), "latent_len": first["latent_len"],
                     "latent_floats_per_symbol": first["latent_floats_per_symbol"],
                     "bits_per_symbol": first["bits_per_symbol"], "parameters": first["parameters"],
                     "steps": statistics.fmean(c["steps"] for c in cells)})
        if "actual_bits_per_symbol" in first:  # a codec that stored other than the budget (classical: one cell)
            rows[-1]["actual_bits_per_symbol"] = statistics.fmean(c["actual_bits_per_symbol"] for c in cells)
    sign = -1 if results["higher_is_better"] else 1
    rows.sort(key=lambda r: (r["seq_len"], -r["ratio"], sign * r["mean"]))
    rank, previous = 0, None
    for r in rows:
        rank = rank + 1 if previous == (r["seq_len"], r["ratio"]) else 1
        previous, r["rank"] = (r["seq_len"], r["ratio"]), rank
    return rows


def cells_csv(cells: list[dict]) -> str:
    metric_keys = sorted({k for c in cells for k in c["metrics"]})
    base = ["method", "kind", "seq_len", "ratio", "seed", "latent_len", "latent_dim", "latent_floats_per_symbol",
            "bits_per_symbol", "dtype", "value", "parameters", "steps", "epochs", "seconds", "train_windows",
            "test_windows", "test_symbols", "actual_bits_per_symbol", "note"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(base + metric_keys)
    for c in cells:
        writer.writerow([c.get(k) for k in base] + [c["metrics"].get(k) for k in metric_keys])
    return buf.getvalue()


def _mean_std(row: dict) -> str:
    return f"{row['mean']:.4f} ± {row['std']:.4f}"


def _ratio(r: float) -> str:
    return str(Fraction(r).limit_denominator(1000))


def report_markdown(results: dict, rows: list[dict]) -> str:
    plan, metric = results["plan"], results["metric"]
    better = "higher is better" if results["higher_is_better"] else "lower is better"
    budget = plan["training"]
    m = results["machine"]
    lines = [f"# Reduction probe: {plan['domain']}", "",
             f"Held-out **{metric}** ({better}), mean ± std over seeds, latents stored as {plan['dtype']}. "
             f"Training budget per run: {json.dumps(budget)}; model: {json.dumps(plan['model']) or 'defaults'}. "
             f"Machine: {m['processor']}, {m['cpus']} CPUs, {m['device']}, torch {m['torch']}.", ""]
    models = [r for r in rows if r["method"] == "attention"]
    seq_lens = sorted({r["seq_len"] for r in rows})
    ratios = sorted({r["ratio"] for r in rows}, reverse=True)
    if models:
        lines += ["## Reducing attention by input length", "",
                  "| ratio | " + " | ".join(f"n = {n}" for n in seq_lens) + " |",
                  "|---|" + "---:|" * len(seq_lens)]
        for ratio in ratios:
            cells = []
            for n in seq_lens:
                hit = [r for r in models if r["seq_len"] == n and r["ratio"] == ratio]
                cells.append(_mean_std(hit[0]) if hit else "")
            lines.append(f"| {_ratio(ratio)} | " + " | ".join(cells) + " |")
        lines.append("")
    methods = sorted({r["method"] for r in rows}, key=lambda name: (name != "attention", name))  # ours first
    if len(methods) > 1:
        lines += ["## Methods side by side (best in bold)", "",
                  "| n → latents | ratio | " + " | ".join(methods) + " |",
                  "|---|---|" + "---:|" * len(methods)]
        for n, ratio in dict.fromkeys((r["seq_len"], r["ratio"]) for r in rows):
            here = {r["method"]: r for r in rows if (r["seq_len"], r["ratio"]) == (n, ratio)}
            cells = [("" if k not in here else f"**{_mean_std(here[k])}**" if here[k]["rank"] == 1
                      else _mean_std(here[k])) for k in methods]
            latents = next(iter(here.values()))["latent_len"]
            lines.append(f"| {n} → {latents} | {_ratio(ratio)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## All methods, ranked within each cell", "",
              "| n | ratio | rank | method | " + metric + " | runs | latents | floats/symbol | bits/symbol | "
              "parameters | steps |",
              "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bits = f"{r['bits_per_symbol']:.2f}"
        if "actual_bits_per_symbol" in r:
            bits += f" ({r['actual_bits_per_symbol']:.2f} stored)"
        lines.append(f"| {r['seq_len']} | {_ratio(r['ratio'])} | {r['rank']} | {r['method']} | "
                     f"{_mean_std(r)} | {r['runs']} | {r['latent_len']} | "
                     f"{r['latent_floats_per_symbol']:.3f} | {bits} | "
                     f"{r['parameters']:,} | {r['steps']:.0f} |")
    measured = " A codec that cannot be held to that budget exactly (Opus) is asked for it; what it stored is in " \
        "brackets." if any("actual_bits_per_symbol" in r for r in rows) else ""
    lines += ["", "Floats/symbol counts stored latent values per input symbol (the same for every method in a "
              "cell); bits/symbol multiplies it by the stored dtype's width. A ratio below 1 is a shorter "
              "sequence of wider vectors, not necessarily fewer bits." + measured, ""]
    notes = [f"- {c['method']} at n = {c['seq_len']}, ratio {_ratio(c['ratio'])}: {c['note']}"
             for c in results["cells"] if c.get("note")]
    notes += [f"- {name}: not run, {why}" for name, why in results.get("skipped", {}).items()]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    counts = {(r["seq_len"], r["ratio"]): r["parameters"] for r in models}
    off = [r for r in rows if r["kind"] == "model" and r["method"] != "attention"
           and counts.get((r["seq_len"], r["ratio"])) and
           abs(r["parameters"] / counts[(r["seq_len"], r["ratio"])] - 1) > 0.10]
    if off:
        lines += ["Parameter counts differing from the reducing-attention model by more than 10 %: " +
                  ", ".join(f"{r['method']} at n = {r['seq_len']}, ratio {_ratio(r['ratio'])}" for r in off), ""]
    return "\n".join(lines)


def write_plots(results: dict, rows: list[dict], out: Path) -> list[Path]:
    """metric_vs_ratio.png (reducing attention, one line per seq-len) and, with several methods,
    methods_vs_ratio.png (one panel per seq-len, one line per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metric"]
    seq_lens = sorted({r["seq_len"] for r in rows})
    written = []

    def draw(ax, subset, label, ratios):
        """One line; x ticks at `ratios` (those of this panel), with room so no end point sits on the frame."""
        ax.set_xscale("log", base=2)
        subset = sorted(subset, key=lambda r: r["ratio"])
        ax.errorbar([r["ratio"] for r in subset], [r["mean"] for r in subset], yerr=[r["std"] for r in subset],
                    marker="o", capsize=3, label=label)
        ax.set_xticks(ratios, [_ratio(r) for r in ratios])
        ax.set_xlim(min(ratios) / 1.25, max(ratios) * 1.25)
        ax.minorticks_off()

    fig, ax = plt.subplots(figsize=(6, 4))
    # The paper's block, or the first reducing-attention variant when only variants ran.
    ours = "attention" if any(r["method"] == "attention" for r in rows) else \
        next((r["method"] for r in rows if r["method"].startswith("attention")), "attention")
    ratios = sorted({r["ratio"] for r in rows if r["method"] == ours})
    for n in seq_lens:
        subset = [r for r in rows if r["method"] == ours and r["seq_len"] == n]
        if subset:
            draw(ax, subset, f"n = {n}", ratios)
    ax.set_xlabel("ratio (latents per input symbol)")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"{results['plan']['domain']}: reducing attention ({ours})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    written.append(_save_png(fig, out / PLOT))
    plt.close(fig)

    methods = sorted({r["method"] for r in rows})
    if len(methods) > 1:
        fig, axes = plt.subplots(1, len(seq_lens), figsize=(5 * len(seq_lens), 4), squeeze=False)
        for ax, n in zip(axes[0], seq_lens):
            ratios = sorted({r["ratio"] for r in rows if r["seq_len"] == n})
            for method in methods:
                subset = [r for r in rows if r["method"] == method and r["seq_len"] == n]
                if subset:
                    draw(ax, subset, method, ratios)
            ax.set_xlabel("ratio")
            ax.set_title(f"n = {n}")
            ax.grid(True, alpha=0.3)
        axes[0][0].set_ylabel(f"held-out {metric}")
        axes[0][-1].legend()
        fig.tight_layout()
        written.append(_save_png(fig, out / METHODS_PLOT))
        plt.close(fig)
    return written


def _save_png(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    return path
