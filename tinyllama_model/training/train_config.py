"""What a training run computes and for how long: `TrainConfig`, its checks, and the learning-rate schedule.

Pure configuration: nothing here touches a device, a file or a model. The schedule lives here rather than
in the trainer because it is a pure function of the config and the run's counters, which is also why
exact resume needs no scheduler state.

Schedule: the budget is any of steps, tokens, epochs or wall-clock minutes (several may be set; the
first one reached ends training). `progress` in [0, 1] is the largest fraction of any budget used, and
the learning rate follows a cosine in progress from `lr` down to `lr * min_lr_ratio`, after a linear
warmup over `warmup_steps`. With a wall-clock budget the cosine therefore spans the minutes given,
whatever the machine's speed, and the run ends at the floor of the schedule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tinyllama_model.config_fields import operational, operational_fields
from tinyllama_model.errors import ConfigError
from tinyllama_model.mixture.config import MixtureConfig, check_moved

OPTIMIZERS = ("adamw", "muon")  # what `optim.build_optimizer` can build
DTYPES = ("auto", "float32", "bfloat16", "float64")
BUDGETS = ("max_steps", "max_tokens", "max_epochs", "max_minutes")


def _doc(text: str, *, is_operational: bool = False) -> dict[str, Any]:
    """Field metadata pydantic reads as the description (so the Prefect form explains each knob)."""
    return operational(description=text) if is_operational else {"description": text}


@dataclass
class TrainConfig:
    # batch: tokens per optimizer step = batch_size * grad_accum * seq_len * world_size
    batch_size: int = field(default=8, metadata=_doc("Sequences per micro-batch per process."))
    grad_accum: int = field(default=1, metadata=_doc("Micro-batches accumulated per optimizer step."))
    seq_len: int | None = field(default=None, metadata=_doc("Training window in tokens; None: max_seq_len."))
    # optimizer and schedule
    lr: float = field(
        default=6e-4, metadata=_doc("Peak AdamW learning rate (optimizer=muon: of embeddings, head, norms).")
    )
    min_lr_ratio: float = field(default=0.1, metadata=_doc("Cosine floor as a fraction of lr."))
    warmup_steps: int = field(default=100, metadata=_doc("Linear warmup steps before the cosine."))
    weight_decay: float = field(
        default=0.1,
        metadata=_doc("Decoupled decay on weight matrices only (Muon: the same shrink per step)."),
    )
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=_doc("AdamW betas."))
    optimizer: str = field(
        default="adamw",
        metadata=_doc("adamw, or muon: Muon for the hidden matrices, AdamW for embeddings, head and norms."),
    )
    head_lr: float | None = field(
        default=None,
        metadata=_doc("Peak AdamW learning rate of an untied output head; None: lr."),
    )
    muon_lr: float = field(default=0.02, metadata=_doc("Muon's peak learning rate (optimizer=muon)."))
    muon_momentum: float = field(default=0.95, metadata=_doc("Muon's Nesterov momentum (optimizer=muon)."))
    grad_clip: float = field(default=1.0, metadata=_doc("Clip the global gradient norm to this (0: off)."))
    ema_decay: float | None = field(
        default=None,
        metadata=_doc(
            "Keep an exponential moving average of the weights, this much of the old average kept per step "
            "(0.995: the last ~200 steps); validation, the best checkpoint and the published model are the "
            "average. null: the weights as trained."
        ),
    )
    mixture: MixtureConfig = field(
        default_factory=MixtureConfig,
        metadata=_doc(
            "What is fitted after training on the validation split: calibration, the experts of the "
            "test-time mixture and dynamic evaluation (tinyllama_model/mixture/config.py)."
        ),
    )
    # budget: set one or more; training ends at the first reached and the cosine spans it
    max_steps: int | None = field(default=None, metadata=_doc("Budget in optimizer steps."))
    max_tokens: int | None = field(default=None, metadata=_doc("Budget in training tokens."))
    max_epochs: float | None = field(
        default=None, metadata=_doc("Budget in passes over the training stream.")
    )
    max_minutes: float | None = field(
        default=10.0, metadata=_doc("Budget in wall-clock minutes of training.")
    )
    # validation, checkpoints, logging
    eval_every: int = field(
        default=200, metadata=_doc("Validate every N steps (and at the end).", is_operational=True)
    )
    eval_tokens: int | None = field(
        default=131_072,
        metadata=_doc(
            "Validation tokens per evaluation (windows spread over the split); None: all of it.",
            is_operational=True,
        ),
    )
    eval_batch_size: int | None = field(
        default=None, metadata=_doc("Windows per validation batch; None: batch_size.", is_operational=True)
    )
    checkpoint_every: int = field(
        default=200, metadata=_doc("Save a resumable checkpoint every N steps.", is_operational=True)
    )
    keep_last: int = field(
        default=2, metadata=_doc("Checkpoints kept on disk (older ones are deleted).", is_operational=True)
    )
    log_every_s: float = field(
        default=10.0, metadata=_doc("Seconds between progress lines in non-TTY logs.", is_operational=True)
    )
    # reproducibility and hardware
    seed: int = field(default=1337, metadata=_doc("Seed of weights init, data order and dropout."))
    device: str = field(
        default="auto",
        metadata=_doc("auto (cuda if present, else cpu), cpu, cuda, cuda:N, mps.", is_operational=True),
    )
    dtype: str = field(
        default="auto",
        metadata=_doc(
            "auto (bf16 autocast on CUDA; on a CPU when a matmul probe finds bf16 at least "
            "cpu_bf16_min_speedup times faster than fp32; fp32 otherwise), float32, bfloat16, or float64 "
            "(weights and arithmetic in double: slow, for runs that must agree to rounding, e.g. equivalence "
            "tests). A resumed run keeps the dtype its checkpoint was trained in."
        ),
    )
    cpu_bf16_min_speedup: float = field(
        default=1.5,
        metadata=_doc(
            "dtype=auto on a CPU: train under bf16 autocast when bf16 matmul measures at least this many "
            "times fp32's rate (AVX512-BF16/AMX parts: ~2.4x; AVX2 parts emulate bf16 and are slower)."
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_doc(
            "torch.compile the model (CUDA; on a CPU +6% tokens in 10 minutes at the cpu_10min shape). "
            "A CPU without a C++ compiler trains eager and says so.",
            is_operational=True,
        ),
    )
    num_threads: int | None = field(
        default=None, metadata=_doc("CPU threads per process; None: cores / processes.", is_operational=True)
    )
    peak_flops: float | None = field(
        default=None,
        metadata=_doc(
            "Peak FLOP/s per device for MFU; None: measure a matmul at start.", is_operational=True
        ),
    )
    nproc_per_node: int = field(
        default=1,
        metadata=_doc("Processes to launch with torchrun (DDP); 1: in-process.", is_operational=True),
    )

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives lists
        if isinstance(self.mixture, dict):  # from run.json or a preset's mapping
            self.mixture = MixtureConfig.from_dict(self.mixture)
        positive = [
            "batch_size",
            "grad_accum",
            "eval_every",
            "checkpoint_every",
            "keep_last",
            "nproc_per_node",
        ]
        for name in positive:
            _require(
                isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "a positive integer"
            )
        for name in ("seq_len", "eval_tokens", "eval_batch_size", "num_threads", "max_steps", "max_tokens"):
            v = getattr(self, name)
            _require(v is None or (isinstance(v, int) and v > 0), name, "a positive integer or None")
        for name in ("max_epochs", "max_minutes", "peak_flops"):
            v = getattr(self, name)
            _require(v is None or v > 0, name, "a positive number or None")
        _require(self.lr > 0, "lr", "positive (e.g. 6e-4)")
        _require(self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}")
        _require(self.muon_lr > 0, "muon_lr", "positive (e.g. 0.02)")
        _require(self.head_lr is None or self.head_lr > 0, "head_lr", "positive (e.g. 4e-3) or None")
        _require(self.cpu_bf16_min_speedup > 0, "cpu_bf16_min_speedup", "positive (e.g. 1.5)")
        _require(0 <= self.muon_momentum < 1, "muon_momentum", "in [0, 1)")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        _require(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        _require(self.weight_decay >= 0, "weight_decay", ">= 0")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)"
        )
        _require(self.grad_clip >= 0, "grad_clip", ">= 0 (0 turns clipping off)")
        decay = self.ema_decay
        ok = decay is None or (_positive(decay) and decay < 1)
        _require(ok, "ema_decay", "a number in (0, 1), e.g. 0.995, or null")
        _require(self.log_every_s > 0, "log_every_s", "positive")
        _require(self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}")
        if not any(getattr(self, b) is not None for b in BUDGETS):
            raise ConfigError(f"TrainConfig needs a budget: set at least one of {', '.join(BUDGETS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        check_moved(d)
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"unknown train config key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


# Knobs marked operational change how a run is watched or where it runs, never what it computes; every
# other field must match for a checkpoint to resume, and only those make the train fingerprint.
OPERATIONAL = operational_fields(TrainConfig)


def _positive(x: Any) -> bool:
    """A positive number, not a bool (which Python counts as an int)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"train.{name} must be {what}")


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, times a cosine in budget progress from lr to lr * min_lr_ratio."""
    p = min(max(progress, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    cosine = floor + 0.5 * (1.0 + math.cos(math.pi * p)) * (cfg.lr - floor)
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cosine * warmup


def budget_progress(cfg: TrainConfig, step: int, tokens: int, epochs: float, elapsed_s: float) -> float:
    """The largest fraction used of any budget set: 1.0 ends training (the trainer's and a watcher's view)."""
    used = (
        (cfg.max_steps, step),
        (cfg.max_tokens, tokens),
        (cfg.max_epochs, epochs),
        (None if cfg.max_minutes is None else 60.0 * cfg.max_minutes, elapsed_s),
    )
    return max(done / budget for budget, done in used if budget)
