"""The training loop: one process by default, the same code under `torchrun` for DDP.

The trainer knows a model config, a train config, two packed token streams (train, val) and a run
directory; it knows nothing about Parquet, Prefect or MLflow. Metrics leave through a callback (a no-op
by default) and, on rank 0, through `metrics.jsonl` in the run directory.

Run directory (rank 0 writes it):
    run.json             model + train config and the data files (written by `write_run_spec`)
    checkpoints/         step-0000100.pt ...: the last `keep_last` full training states
    best/                the model directory with the lowest validation loss so far
    metrics.jsonl        one JSON row per step (train) and per evaluation (val), keyed by "step"
    result.json          final summary, written when training ends

Schedule: the budget is any of steps, tokens, epochs or wall-clock minutes (several may be set; the
first one reached ends training). `progress` in [0, 1] is the largest fraction of any budget used, and
the learning rate follows a cosine in progress from `lr` down to `lr * min_lr_ratio`, after a linear
warmup over `warmup_steps`. With a wall-clock budget the cosine therefore spans the minutes given,
whatever the machine's speed, and the run ends at the floor of the schedule.

Validation scores fixed non-overlapping windows of the validation stream (all of them, or `eval_tokens`
worth spread evenly over it, so a subset still samples every document).
Its bits per byte use the split's average bytes per token (`val_bytes_per_token`), which is exact when the
whole stream is scored and an estimate otherwise; the evaluate phase scores every token with sliding
windows for the reported figure.

Exact resume: a checkpoint holds the model, optimizer state, step/token/elapsed counters, the sampler's
`(epoch, index)` position, the best validation loss so far and every RNG state (torch, CUDA, numpy,
python). The learning rate is a pure function of those counters, so there is no scheduler object to
save. Restarting from a checkpoint on CPU with a step/token/epoch budget gives weights bit-identical to
the uninterrupted run (a wall-clock budget is inherently timing-dependent).

DDP: every rank draws the same global micro-batch of windows and trains on its own slice, gradients
are averaged across ranks (all-reduce only on the last micro-step of an accumulation, `no_sync` before),
so N ranks with batch B follow the same trajectory as one process with batch N*B. Rank 0 writes
checkpoints, metrics and logs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist

from tinyllama_model.checkpoint import load_torch_file, save_torch_file
from tinyllama_model.config_fields import operational, operational_fields
from tinyllama_model.data import PackedTokens, WindowSampler, check_fits, eval_starts
from tinyllama_model.errors import ConfigError
from tinyllama_model.evaluation import LN2, windows_nll
from tinyllama_model.model import ModelConfig, TinyLlama
from tinyllama_model.optim import OPTIMIZERS, build_optimizer

log = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, Any]], None]
CHECKPOINT_DIR, BEST_DIR = "checkpoints", "best"
METRICS_FILE, RESULT_FILE, RUN_SPEC = "metrics.jsonl", "result.json", "run.json"
CHECKPOINT_FORMAT = 2  # 2: optimizer state keyed by optimizer name (adamw, muon)


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
    muon_lr: float = field(default=0.02, metadata=_doc("Muon's peak learning rate (optimizer=muon)."))
    muon_momentum: float = field(default=0.95, metadata=_doc("Muon's Nesterov momentum (optimizer=muon)."))
    grad_clip: float = field(default=1.0, metadata=_doc("Clip the global gradient norm to this (0: off)."))
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
            "auto (bf16 autocast on CUDA, fp32 elsewhere), float32, bfloat16, or float64 (weights and "
            "arithmetic in double: slow, for runs that must agree to rounding, e.g. equivalence tests)."
        ),
    )
    compile: bool = field(
        default=False, metadata=_doc("torch.compile the model (worth it on CUDA).", is_operational=True)
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
        _require(0 <= self.muon_momentum < 1, "muon_momentum", "in [0, 1)")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        _require(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        _require(self.weight_decay >= 0, "weight_decay", ">= 0")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)"
        )
        _require(self.grad_clip >= 0, "grad_clip", ">= 0 (0 turns clipping off)")
        _require(self.log_every_s > 0, "log_every_s", "positive")
        _require(self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}")
        if not any(getattr(self, b) is not None for b in BUDGETS):
            raise ConfigError(f"TrainConfig needs a budget: set at least one of {', '.join(BUDGETS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"unknown train config key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


DTYPES = ("auto", "float32", "bfloat16", "float64")
BUDGETS = ("max_steps", "max_tokens", "max_epochs", "max_minutes")
# Knobs marked operational change how a run is watched or where it runs, never what it computes; every
# other field must match for a checkpoint to resume, and only those make the train fingerprint.
OPERATIONAL = operational_fields(TrainConfig)


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"train.{name} must be {what}")


class CheckpointMismatchError(ValueError):
    """A checkpoint written by another model or train config than the one resuming from it."""


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, times a cosine in budget progress from lr to lr * min_lr_ratio."""
    p = min(max(progress, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    cosine = floor + 0.5 * (1.0 + math.cos(math.pi * p)) * (cfg.lr - floor)
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cosine * warmup


class ProgressLine:
    """One progress line: rewritten in place on a TTY, else a log line every `every_s` seconds (no spam)."""

    def __init__(self, every_s: float, stream: TextIO | None = None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.enabled = enabled
        self.every_s = 0.2 if self.tty else every_s
        self.last = -math.inf

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every_s):
            return
        self.last = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        else:
            log.info(text)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + "\n")
            self.stream.flush()
        else:
            log.info(text)

    def close(self) -> None:
        if self.tty and self.enabled:
            self.stream.write("\n")


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_for(device: torch.device, dtype: str) -> tuple[AbstractContextManager, str]:
    """bf16 autocast on CUDA under "auto" (or when asked), plain fp32 elsewhere; float64 runs in double."""
    use_bf16 = dtype == "bfloat16" or (
        dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bfloat16"
    return nullcontext(), "float64" if dtype == "float64" else "float32"


class Trainer:
    """Trains one model on one packed stream; resumes from the newest checkpoint in `run_dir` if any."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        train_data: PackedTokens,
        val_data: PackedTokens,
        run_dir: str | Path,
        *,
        val_bytes_per_token: float | None = None,
        tokenizer_file: str | Path | None = None,
        on_metrics: MetricsCallback | None = None,
        progress: bool = True,
    ):
        self.model_cfg, self.cfg = model_cfg, cfg
        self.seq_len = cfg.seq_len or model_cfg.max_seq_len
        if self.seq_len > model_cfg.max_seq_len:
            raise ValueError(
                f"train.seq_len={self.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}; "
                "lower train.seq_len or raise model.max_seq_len"
            )
        check_fits(len(train_data), self.seq_len, "training")
        if len(val_data) < 2:
            raise ValueError(
                "the validation stream is empty; the encode phase must hold out at least one document"
            )
        self.train_data, self.val_data = train_data, val_data
        self.val_seq_len = min(self.seq_len, len(val_data) - 1)
        self.val_bytes_per_token = val_bytes_per_token
        self.tokenizer_file = tokenizer_file
        self.run_dir = Path(run_dir)
        self.on_metrics = on_metrics or (lambda row: None)

        # distributed layout (the process group, if any, was set up by `main`)
        self.ddp = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        self.master = self.rank == 0
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.num_threads or self.device.type == "cpu":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // local_world))
        self.autocast, self.compute_dtype = autocast_for(self.device, cfg.dtype)
        self.progress_line = ProgressLine(cfg.log_every_s, enabled=progress and self.master)

        # same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)
        _seed_everything(cfg.seed)
        param_dtype = torch.float64 if self.compute_dtype == "float64" else torch.float32
        self.model = TinyLlama(model_cfg).to(self.device, dtype=param_dtype)
        self.optimizer = build_optimizer(self.model, cfg, self.device.type)
        self.sampler = WindowSampler(len(train_data), self.seq_len, cfg.seed)
        n_eval = None if cfg.eval_tokens is None else math.ceil(cfg.eval_tokens / self.val_seq_len)
        self.val_starts = eval_starts(len(val_data), self.val_seq_len, n_eval)
        _seed_everything(cfg.seed + self.rank)  # dropout differs per rank; data order does not
        self.step = self.tokens = 0
        self.elapsed = 0.0  # seconds of training so far, over all resumed sessions
        self.best_val_loss = math.inf
        self.resumed_from: Path | None = None
        self._resume()

        self.forward_model: torch.nn.Module = self.model
        if cfg.compile:
            self.forward_model = torch.compile(self.model)
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=ids)

    # -- bookkeeping ---------------------------------------------------------------------------------

    @property
    def global_batch(self) -> int:
        """Windows per micro-step over all ranks."""
        return self.cfg.batch_size * self.world

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.cfg.grad_accum * self.seq_len

    def progress(self) -> float:
        """The largest fraction used of any budget (1.0 ends training); agreed on by all ranks."""
        c, fractions = self.cfg, []
        if c.max_steps:
            fractions.append(self.step / c.max_steps)
        if c.max_tokens:
            fractions.append(self.tokens / c.max_tokens)
        if c.max_epochs:
            fractions.append(self.sampler.epochs_done / c.max_epochs)
        if c.max_minutes:
            fractions.append(self.elapsed / (60.0 * c.max_minutes))
        p = max(fractions)
        if self.ddp and c.max_minutes:  # clocks differ between ranks; everyone follows the slowest
            t = torch.tensor([p], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            p = float(t.item())
        return p

    def _emit(self, row: dict[str, Any]) -> None:
        if not self.master:
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.on_metrics(row)

    # -- training ------------------------------------------------------------------------------------

    def _train_step(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        b, accum = self.cfg.batch_size, self.cfg.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(accum):
            starts = self.sampler.next_starts(self.global_batch)[self.rank * b : (self.rank + 1) * b]
            x, y = self.train_data.windows(starts, self.seq_len)  # (B, T) each
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == accum - 1
            sync = nullcontext() if (last or not self.ddp) else self.forward_model.no_sync()
            with sync:
                with self.autocast:
                    _, loss = self.forward_model(x, y)
                (loss / accum).backward()
            loss_sum += loss.detach()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss_sum / accum
        if self.ddp:  # for the log only (gloo has no AVG op)
            dist.all_reduce(loss)
            loss /= self.world
        return float(loss.item())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss, perplexity and bpb on the fixed validation windows (sharded over ranks)."""
        self.model.eval()
        mine = self.val_starts[self.rank :: self.world]
        nll, count = windows_nll(
            self.model,
            self.val_data.tokens,
            mine,
            self.val_seq_len,
            batch_size=self.cfg.eval_batch_size or self.cfg.batch_size,
            device=self.device,
            autocast=self.autocast,
        )
        self.model.train()
        if self.ddp:
            t = torch.tensor([nll, count], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            nll, count = float(t[0]), int(t[1])
        loss = nll / count
        row = {
            "step": self.step,
            "tokens": self.tokens,
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 700)),
        }
        if self.val_bytes_per_token:
            row["val_bpb"] = loss / LN2 / self.val_bytes_per_token
        return row

    def fit(self) -> dict[str, Any]:
        """Train until the budget is spent; returns the summary also written to result.json."""
        cfg = self.cfg
        if self.master:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        peak = cfg.peak_flops or _measured_peak(self.device, self.compute_dtype)
        flops_per_token = self.model_cfg.flops_per_token(self.seq_len)
        self.model.train()
        session_start, start_elapsed = time.perf_counter(), self.elapsed
        start_progress = progress = self.progress()
        last_eval_step = last_ckpt_step = -1
        self.progress_line.message(
            f"training {self.model.num_params():,} parameters on {self.device} ({self.compute_dtype}, "
            f"{self.world} process(es)), {self.tokens_per_step:,} tokens/step"
            + (f", resumed at step {self.step}" if self.resumed_from else "")
        )
        while progress < 1.0:
            lr = lr_at(cfg, self.step, progress)
            t0 = time.perf_counter()
            loss = self._train_step(lr)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            self.step += 1
            self.tokens += self.tokens_per_step
            self.elapsed = start_elapsed + (time.perf_counter() - session_start)
            tok_s = self.tokens_per_step / dt
            row = {
                "step": self.step,
                "tokens": self.tokens,
                "train_loss": loss,
                "lr": lr,
                "tokens_per_s": tok_s,
                "mfu": flops_per_token * tok_s / (peak * self.world),
                "epoch": self.sampler.epochs_done,
                "elapsed_s": self.elapsed,
            }
            self._emit(row)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss is {loss} at step {self.step}; "
                    f"lower train.lr (now {cfg.lr}) or check the data"
                )
            if self.step % cfg.eval_every == 0:
                self._evaluate_and_keep_best()
                last_eval_step = self.step
            if self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
                last_ckpt_step = self.step
            self.elapsed = start_elapsed + (time.perf_counter() - session_start)
            progress = self.progress()
            rate = (progress - start_progress) / max(self.elapsed - start_elapsed, 1e-9)
            eta = (1.0 - progress) / rate if rate > 0 else math.inf
            self.progress_line.update(
                f"step {self.step} {progress:6.1%} | loss {loss:.4f} | lr {lr:.2e} | "
                f"{tok_s:,.0f} tok/s | eta {_fmt_seconds(eta)}"
            )
        if last_eval_step != self.step:
            self._evaluate_and_keep_best()
        if last_ckpt_step != self.step:
            self.save_checkpoint()
        self.progress_line.close()
        result = self.summary(peak, flops_per_token)
        if self.master:
            (self.run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
        return result

    def _evaluate_and_keep_best(self) -> dict[str, float]:
        row = self.evaluate()
        self._emit(row)
        bpb = f", bpb {row['val_bpb']:.4f}" if "val_bpb" in row else ""
        self.progress_line.message(f"step {self.step}: val loss {row['val_loss']:.4f}{bpb}")
        if row["val_loss"] < self.best_val_loss:
            self.best_val_loss = row["val_loss"]
            if self.master:
                self.model.save_pretrained(self.run_dir / BEST_DIR, tokenizer_file=self.tokenizer_file)
        self.last_val = row
        return row

    def summary(self, peak: float, flops_per_token: int) -> dict[str, Any]:
        tok_s = self.tokens / max(self.elapsed, 1e-9)
        best_bpb = (
            self.best_val_loss / LN2 / self.val_bytes_per_token
            if self.val_bytes_per_token and math.isfinite(self.best_val_loss)
            else None
        )
        return {
            "steps": self.step,
            "tokens": self.tokens,
            "epochs": self.sampler.epochs_done,
            "wall_time_s": self.elapsed,
            "tokens_per_s": tok_s,
            "mfu": flops_per_token * tok_s / (peak * self.world),
            "peak_flops": peak,
            "num_params": self.model.num_params(),
            "final_val_loss": self.last_val["val_loss"],
            "final_val_bpb": self.last_val.get("val_bpb"),
            "best_val_loss": self.best_val_loss,
            "best_val_bpb": best_bpb,
            "world_size": self.world,
            "device": str(self.device),
            "dtype": self.compute_dtype,
            "resumed_from_step": None if self.resumed_from is None else _step_of(self.resumed_from),
        }

    # -- checkpoints ---------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        train = {k: v for k, v in self.cfg.to_dict().items() if k not in OPERATIONAL}
        train["betas"] = list(train["betas"])
        return {"model": self.model_cfg.to_dict(), "train": train, "world_size": self.world}

    def save_checkpoint(self) -> Path | None:
        """Write the full training state atomically (rank 0) and delete all but the last `keep_last`."""
        if not self.master:
            return None
        state = {
            "format": CHECKPOINT_FORMAT,
            "identity": self._identity(),
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val_loss,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": _rng_state(),
        }
        ckpt_dir = self.run_dir / CHECKPOINT_DIR
        path = save_torch_file(state, ckpt_dir / f"step-{self.step:08d}.pt")
        for old in list_checkpoints(ckpt_dir)[: -self.cfg.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def _resume(self) -> None:
        checkpoints = list_checkpoints(self.run_dir / CHECKPOINT_DIR)
        if not checkpoints:
            return
        path = checkpoints[-1]
        state = load_torch_file(path, map_location="cpu")
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(
                f"{path} is not a training checkpoint of this trainer (format {CHECKPOINT_FORMAT}); "
                "train in a fresh run directory"
            )
        ours, theirs = self._identity(), state["identity"]
        if ours != theirs:
            diffs = _diff(theirs, ours)
            raise CheckpointMismatchError(
                f"{path} was written by a different configuration ({'; '.join(diffs[:6])}). Resume with the "
                f"configuration it was written with, or train in a fresh run directory, not {self.run_dir} "
                "(the existing checkpoints were left untouched)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.best_val_loss = state["best_val_loss"]
        _set_rng_state(state["rng"])
        self.resumed_from = path
        if self.master:  # rows a killed run logged after this checkpoint will be logged again
            _truncate_metrics(self.run_dir / METRICS_FILE, self.step)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files of an interrupted save start with a dot)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("step-*.pt"), key=_step_of)


def _step_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _diff(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(k), ours.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r} vs now {b!r}")
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    rows = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every RNG as plain tensors/numbers (weights_only loading accepts nothing else)."""
    _kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _measured_peak(device: torch.device, dtype: str) -> float:
    from tinyllama_model.sizing import measure_matmul_flops

    return measure_matmul_flops(device, getattr(torch, dtype))


# -- the run directory and the torchrun entry point -------------------------------------------------


def write_run_spec(
    run_dir: str | Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    token_dtype: str,
    val_bytes_per_token: float | None,
    tokenizer_file: str | Path | None,
    train_file: str = "train.bin",
    val_file: str = "val.bin",
) -> Path:
    """Describe a run so that `python -m tinyllama_model.trainer RUN_DIR` (or torchrun) can start it."""
    spec = {
        "model": model_cfg.to_dict(),
        "train": cfg.to_dict(),
        "token_dtype": token_dtype,
        "train_file": train_file,
        "val_file": val_file,
        "val_bytes_per_token": val_bytes_per_token,
        "tokenizer_file": None if tokenizer_file is None else str(tokenizer_file),
    }
    path = Path(run_dir) / RUN_SPEC
    tmp = path.with_name(f".{RUN_SPEC}.tmp")
    tmp.write_text(json.dumps(spec, indent=2))
    os.replace(tmp, path)
    return path


def trainer_from_run_dir(run_dir: str | Path, **kwargs: Any) -> Trainer:
    run_dir = Path(run_dir)
    spec_path = run_dir / RUN_SPEC
    if not spec_path.is_file():
        raise FileNotFoundError(f"no {RUN_SPEC} in {run_dir}; write one with write_run_spec")
    spec = json.loads(spec_path.read_text())
    dtype = np.dtype(spec["token_dtype"])
    return Trainer(
        ModelConfig.from_dict(spec["model"]),
        TrainConfig.from_dict(spec["train"]),
        PackedTokens.from_file(run_dir / spec["train_file"], dtype),
        PackedTokens.from_file(run_dir / spec["val_file"], dtype),
        run_dir,
        val_bytes_per_token=spec["val_bytes_per_token"],
        tokenizer_file=spec["tokenizer_file"],
        **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m tinyllama_model.trainer RUN_DIR`, alone or under `torchrun --nproc_per_node N`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a directory holding run.json (see write_run_spec)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)  # rank, world and rendezvous from torchrun's env vars
    try:
        trainer_from_run_dir(args.run_dir, progress=not args.quiet).fit()
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
