"""The training loop: one process by default, the same code under `torchrun` for DDP.

The trainer knows a model config, a train config, two packed token streams (train, val) and a run
directory; it knows nothing about Parquet, Prefect or MLflow. Metrics leave through a callback (a no-op
by default) and, on rank 0, through `metrics.jsonl` in the run directory. Its neighbours: the config and
the schedule are `train_config`, the run directory and what a checkpoint holds are `run_state`, the
device and its peak FLOP/s are `hardware`, starting a run from `run.json` (and torchrun) is `launch`.

Validation scores fixed non-overlapping windows of the validation stream (all of them, or `eval_tokens`
worth spread evenly over it, so a subset still samples every document).
Its bits per byte use the split's average bytes per token (`val_bytes_per_token`), which is exact when the
whole stream is scored and an estimate otherwise; the evaluate phase scores every token with sliding
windows for the reported figure.

With `ema_decay` the trainer also keeps the weights' exponential moving average (torch's
`AveragedModel`), and that average is what validation scores and the best checkpoint holds. Why: on the
10-minute preset the last steps, at the cosine's floor, still move the weights by more than they learn
(several passes over ~1M tokens), and the average of the last ~200 steps beats any one of them
(docs/tuning-log.md). The average is part of a checkpoint, so a resume is exact.

DDP: every rank draws the same global micro-batch of windows and trains on its own slice, gradients
are averaged across ranks (all-reduce only on the last micro-step of an accumulation, `no_sync` before),
so N ranks with batch B follow the same trajectory as one process with batch N*B. Rank 0 writes
checkpoints, metrics and logs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tinyllama_model.data import PackedTokens, WindowSampler, check_fits, eval_starts
from tinyllama_model.evaluation import LN2, windows_nll
from tinyllama_model.hardware import (
    autocast_for,
    compile_blocker,
    cpu_matmul_rates,
    measured_peak,
    pick_cpu_dtype,
    prepare_device,
    resolve_device,
)
from tinyllama_model.model import ModelConfig, TinyLlama
from tinyllama_model.training.optim import build_optimizer
from tinyllama_model.training.progress import ProgressLine, format_duration
from tinyllama_model.training.run_layout import (
    BEST_DIR,
    CHECKPOINT_DIR,
    METRICS_FILE,
    RESULT_FILE,
    list_checkpoints,
    step_of,
)
from tinyllama_model.training.run_state import (
    CHECKPOINT_FORMAT,
    read_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    truncate_metrics,
    write_checkpoint,
)
from tinyllama_model.training.train_config import OPERATIONAL, TrainConfig, budget_progress, lr_at

MetricsCallback = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)


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
        _check_streams(model_cfg, self.seq_len, train_data, val_data)
        self.train_data, self.val_data = train_data, val_data
        self.val_seq_len = min(self.seq_len, len(val_data) - 1)
        self.val_bytes_per_token = val_bytes_per_token
        self.tokenizer_file = tokenizer_file
        self.run_dir = Path(run_dir)
        self.on_metrics = on_metrics or (lambda row: None)

        # distributed layout (the process group, if any, was set up by `launch.main`)
        self.ddp = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        self.master = self.rank == 0
        self.device = resolve_device(cfg.device)
        prepare_device(self.device, cfg.num_threads, self.world)
        self.autocast, self.compute_dtype = self._pick_dtype(cfg.dtype)
        self.progress_line = ProgressLine(cfg.log_every_s, enabled=progress and self.master)

        self._build()
        self.step = self.tokens = 0
        self.elapsed = 0.0  # seconds of training so far, over all resumed sessions
        self.best_val_loss = math.inf
        self.resumed_from: Path | None = None
        self._resume()
        self.forward_model = self._wrap_for_training()

    def _pick_dtype(self, dtype: str) -> tuple[AbstractContextManager, str]:
        """The autocast context and compute dtype; "auto" on a CPU is decided by a matmul probe."""
        rates = None
        if dtype == "auto" and self.device.type == "cpu":
            rates = cpu_matmul_rates()
            dtype = pick_cpu_dtype(rates, self.cfg.cpu_bf16_min_speedup)
            if self.ddp:  # ranks measure their own cores and may disagree near the threshold: rank 0 decides
                flag = torch.tensor([float(dtype == "bfloat16")])
                dist.broadcast(flag, src=0)
                dtype = "bfloat16" if flag.item() else "float32"
        return autocast_for(self.device, dtype, rates)

    def _build(self) -> None:
        """Model, optimizer, data order and validation windows, seeded alike on every rank."""
        cfg = self.cfg
        # same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)
        seed_everything(cfg.seed)
        param_dtype = torch.float64 if self.compute_dtype == "float64" else torch.float32
        self.model = TinyLlama(self.model_cfg).to(self.device, dtype=param_dtype)
        self.optimizer = build_optimizer(self.model, cfg, self.device.type, self.compute_dtype)
        self.averaged = None  # the weights' moving average (train.ema_decay), updated after each step
        if cfg.ema_decay is not None:
            self.averaged = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
        self.sampler = WindowSampler(len(self.train_data), self.seq_len, cfg.seed)
        n_eval = None if cfg.eval_tokens is None else math.ceil(cfg.eval_tokens / self.val_seq_len)
        self.val_starts = eval_starts(len(self.val_data), self.val_seq_len, n_eval)
        seed_everything(cfg.seed + self.rank)  # dropout differs per rank; data order does not

    def _wrap_for_training(self) -> torch.nn.Module:
        """The module the training forward runs through: compiled and/or DDP-wrapped when asked."""
        forward_model: torch.nn.Module = self.model
        self.compiled = False
        blocker = compile_blocker(self.device) if self.cfg.compile else None
        if blocker:
            log.warning("train.compile is set but this run trains eager: %s", blocker)
        elif self.cfg.compile:
            forward_model, self.compiled = torch.compile(self.model), True
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward_model = DistributedDataParallel(forward_model, device_ids=ids)
        return forward_model

    # -- bookkeeping ---------------------------------------------------------------------------------

    @property
    def kept_model(self) -> TinyLlama:
        """The network validation scores and the best checkpoint holds: the average, when one is kept."""
        return self.model if self.averaged is None else self.averaged.module

    @property
    def global_batch(self) -> int:
        """Windows per micro-step over all ranks."""
        return self.cfg.batch_size * self.world

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.cfg.grad_accum * self.seq_len

    def progress(self) -> float:
        """The largest fraction used of any budget (1.0 ends training); agreed on by all ranks."""
        c = self.cfg
        p = budget_progress(c, self.step, self.tokens, self.sampler.epochs_done, self.elapsed)
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
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        loss = loss_sum / accum
        if self.ddp:  # for the log only (gloo has no AVG op)
            dist.all_reduce(loss)
            loss /= self.world
        return float(loss.item())

    def _timed_step(self, lr: float) -> tuple[float, float]:
        """One optimizer step and its counters; returns (train loss, seconds the step took)."""
        t0 = time.perf_counter()
        loss = self._train_step(lr)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.step += 1
        self.tokens += self.tokens_per_step
        return loss, dt

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss, perplexity and bpb on the fixed validation windows (sharded over ranks)."""
        self.kept_model.eval()
        mine = self.val_starts[self.rank :: self.world]
        nll, count = windows_nll(
            self.kept_model,
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
        peak = cfg.peak_flops or measured_peak(self.device, self.compute_dtype)
        flops_per_token = self.model_cfg.flops_per_token(self.seq_len)
        self.model.train()
        session_start, start_elapsed = time.perf_counter(), self.elapsed
        start_progress = progress = self.progress()
        last_eval_step = last_ckpt_step = -1
        self.progress_line.message(self._banner())
        while progress < 1.0:
            lr = lr_at(cfg, self.step, progress)
            loss, dt = self._timed_step(lr)
            self.elapsed = start_elapsed + (time.perf_counter() - session_start)
            tok_s = self.tokens_per_step / dt
            mfu = flops_per_token * tok_s / (peak * self.world)
            self._emit(self._train_row(loss, lr, tok_s, mfu))
            _require_finite(loss, self.step, cfg.lr)
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
                f"{tok_s:,.0f} tok/s | eta {format_duration(eta)}"
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

    def _banner(self) -> str:
        return (
            f"training {self.model.num_params():,} parameters on {self.device} ({self.compute_dtype}, "
            f"{self.world} process(es)), {self.tokens_per_step:,} tokens/step"
            + (f", resumed at step {self.step}" if self.resumed_from else "")
        )

    def _train_row(self, loss: float, lr: float, tok_s: float, mfu: float) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "train_loss": loss,
            "lr": lr,
            "tokens_per_s": tok_s,
            "mfu": mfu,
            "epoch": self.sampler.epochs_done,
            "elapsed_s": self.elapsed,
        }

    def _evaluate_and_keep_best(self) -> dict[str, float]:
        row = self.evaluate()
        self._emit(row)
        bpb = f", bpb {row['val_bpb']:.4f}" if "val_bpb" in row else ""
        self.progress_line.message(f"step {self.step}: val loss {row['val_loss']:.4f}{bpb}")
        if row["val_loss"] < self.best_val_loss:
            self.best_val_loss = row["val_loss"]
            if self.master:
                self.kept_model.save_pretrained(self.run_dir / BEST_DIR, tokenizer_file=self.tokenizer_file)
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
            "compiled": self.compiled,
            "resumed_from_step": None if self.resumed_from is None else step_of(self.resumed_from),
        }

    # -- checkpoints ---------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to resume: every field that changes the result."""
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
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "compute_dtype": self.compute_dtype,
        }
        return write_checkpoint(state, self.run_dir / CHECKPOINT_DIR, self.step, self.cfg.keep_last)

    def _resume(self) -> None:
        checkpoints = list_checkpoints(self.run_dir / CHECKPOINT_DIR)
        if not checkpoints:
            return
        path = checkpoints[-1]
        state = read_checkpoint(path, self._identity(), self.run_dir)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.averaged is not None:
            self.averaged.load_state_dict(state["averaged"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.best_val_loss = state["best_val_loss"]
        set_rng_state(state["rng"])
        if self.cfg.dtype == "auto" and state.get("compute_dtype", self.compute_dtype) != self.compute_dtype:
            # a probe near the threshold may decide otherwise this time; a run keeps the dtype it began in
            self.autocast, self.compute_dtype = autocast_for(self.device, state["compute_dtype"])
        self.resumed_from = path
        if self.master:  # rows a killed run logged after this checkpoint will be logged again
            truncate_metrics(self.run_dir / METRICS_FILE, self.step)


def _check_streams(model_cfg: ModelConfig, seq_len: int, train: PackedTokens, val: PackedTokens) -> None:
    """Refuse a window longer than the context, a training stream shorter than a window, an empty val."""
    if seq_len > model_cfg.max_seq_len:
        raise ValueError(
            f"train.seq_len={seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}; "
            "lower train.seq_len or raise model.max_seq_len"
        )
    check_fits(len(train), seq_len, "training")
    if len(val) < 2:
        raise ValueError(
            "the validation stream is empty; the encode phase must hold out at least one document"
        )


def _require_finite(loss: float, step: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training loss is {loss} at step {step}; lower train.lr (now {lr}) or check the data"
        )
