"""What someone watching a training run sees while it runs: log lines, a progress bar, growing curves.

The train task hands a `TrainingMonitor` to the trainer as its `on_metrics` callback. From the rows:

- a line in the task's log (step, share of the budget, loss, tokens/s, ETA) every `train.log_every_s`
  seconds, also when no row comes for a while (a long validation, a slow step): a heartbeat thread then
  repeats the last figures and says how long the current step has been running;
- a line per validation;
- the progress bar `train-progress` (percent of the budget, `tasks.monitoring.progress_artifact`);
- the rows into the pipeline's MLflow run (`tasks.monitoring.live_metrics`), when the flow opened one.

Budget and ETA come from the rows alone (`train_config.budget_progress`), so the same monitor watches a
trainer in this process or one under torchrun whose rows arrive through metrics.jsonl.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tinyllama_model.training.progress import format_duration
from tinyllama_model.training.train_config import TrainConfig, budget_progress

Logger = logging.Logger | logging.LoggerAdapter


class Bar(Protocol):
    def update(self, fraction: float, description: str | None = None) -> None: ...


class Stream(Protocol):
    def __call__(self, row: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


class TrainingMonitor:
    """The train task's `on_metrics`; use it as a context manager so the heartbeat starts and stops."""

    def __init__(
        self,
        cfg: TrainConfig,
        logger: Logger,
        *,
        bar: Bar | None = None,
        stream: Stream | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg, self.logger, self.bar, self.stream, self.clock = cfg, logger, bar, stream, clock
        self.every_s = cfg.log_every_s
        self.started_at = clock()
        self.last_line_at = -math.inf
        self.last_row_at: float | None = None
        self.row: Mapping[str, Any] | None = None  # the latest train row
        self.progress = 0.0
        self.first: tuple[float, float, int] | None = None  # (progress, elapsed_s, tokens) at the first row
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.heartbeat = threading.Thread(target=self._beat, name="train-heartbeat", daemon=True)

    def __enter__(self) -> TrainingMonitor:
        self.heartbeat.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self.stop.set()
        self.heartbeat.join()
        if self.stream is not None:
            self.stream.close()
        if exc_type is None and self.bar is not None:
            done = f"done at step {self.row['step']}" if self.row is not None else "trained before: reused"
            self.bar.update(1.0, done)

    def __call__(self, row: Mapping[str, Any]) -> None:
        with self.lock:
            if "train_loss" in row:
                self._take(row)
            if "val_loss" in row:
                bpb = f", bpb {row['val_bpb']:.4f}" if row.get("val_bpb") is not None else ""
                self.logger.info("step %d: val loss %.4f%s", row["step"], row["val_loss"], bpb)
        if self.stream is not None:
            self.stream(row)

    def tick(self) -> None:
        """A line now if none was written for `every_s` seconds (the heartbeat calls this)."""
        with self.lock:
            now = self.clock()
            if now - self.last_line_at >= self.every_s:
                self._line(now)

    def status(self, now: float) -> str:
        """The progress line: where training is, how fast it goes, when it ends."""
        if self.row is None:
            return f"training: preparing, no step done yet ({format_duration(now - self.started_at)})"
        row = self.row
        text = (
            f"step {row['step']} | {self.progress:.1%} of budget | loss {row['train_loss']:.4f} | "
            f"{self.tokens_per_s():,.0f} tok/s | eta {format_duration(self.eta_s())}"
        )
        if self.last_row_at is not None and now - self.last_row_at >= self.every_s:
            text += f" | no new step for {format_duration(now - self.last_row_at)}"
        return text

    def eta_s(self) -> float:
        """Seconds left at this session's pace so far (inf until the pace is known)."""
        if self.first is None or self.row is None:
            return math.inf
        p0, t0, _ = self.first
        spent = float(self.row.get("elapsed_s", 0.0)) - t0
        if self.progress <= p0 or spent <= 0:
            return math.inf
        return max(0.0, 1.0 - self.progress) * spent / (self.progress - p0)

    def tokens_per_s(self) -> float:
        """The session's average since its first step (steady, unlike one step's rate under load)."""
        if self.first is None or self.row is None:
            return 0.0
        _, t0, n0 = self.first
        spent = float(self.row.get("elapsed_s", 0.0)) - t0
        return (
            (self.row.get("tokens", 0) - n0) / spent
            if spent > 0
            else float(self.row.get("tokens_per_s", 0.0))
        )

    def _take(self, row: Mapping[str, Any]) -> None:
        now = self.clock()
        self.row, self.last_row_at = row, now
        self.progress = budget_progress(
            self.cfg, row["step"], row.get("tokens", 0), row.get("epoch", 0.0), row.get("elapsed_s", 0.0)
        )
        if self.first is None:
            # the pace is measured from the first step of this session (a resumed run starts midway)
            self.first = (self.progress, float(row.get("elapsed_s", 0.0)), row.get("tokens", 0))
        if self.bar is not None:
            self.bar.update(self.progress, f"step {row['step']}, {self.progress:.0%} of the training budget")
        if now - self.last_line_at >= self.every_s:
            self._line(now)

    def _line(self, now: float) -> None:
        self.last_line_at = now
        self.logger.info(self.status(now))

    def _beat(self) -> None:
        # checking 4x per interval keeps the longest silence under 1.25 * every_s
        while not self.stop.wait(self.every_s / 4):
            self.tick()
