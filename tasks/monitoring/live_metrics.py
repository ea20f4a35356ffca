"""Training metrics into the pipeline's open MLflow run while training runs, at a bounded rate.

The trainer calls back on every step; one request per step would be hundreds a minute on a small model.
`MetricsStream` buffers the rows and sends them in one `log_batch` at most every `metrics_every_s`
seconds, and a validation row at once, so the MLflow UI draws the curves as they grow and shows each
evaluation as it happens. `close` sends the rest.

Live metrics are a view, never a reason for training to stop or wait: the first send that fails (a store
that does not answer) switches the stream off with one warning, so training waits on a broken store at
most once. Nothing is lost: the register phase logs from metrics.jsonl whatever the run lacks. A retried
attempt, which replays the steps after its last checkpoint, skips the (metric, step) pairs the run
already holds, as the register phase does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlflow import MlflowClient

from tasks.redact import redact_url
from tasks.tracking.mlflow_run import TRAIN_METRICS_PREFIX, RunRef, log_metrics_batched, logged_steps

log = logging.getLogger(__name__)


class MetricsStream:
    """The trainer's `on_metrics` rows, sent to one MLflow run in batches (see the module docstring)."""

    def __init__(
        self,
        run: RunRef,
        *,
        client: MlflowClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        warn: Callable[[str], None] = log.warning,
    ) -> None:
        self.run, self.clock, self.warn = run, clock, warn
        self.client = client or run.client()
        self.pending: list[Mapping[str, Any]] = []
        self.last_sent = -math.inf
        self.sent = self.batches = 0
        self.logged: dict[str, set[int]] | None = None
        try:
            self.logged = logged_steps(self.client, run.run_id, TRAIN_METRICS_PREFIX)
        except Exception as err:  # see the module docstring
            self._give_up(err)

    @property
    def live(self) -> bool:
        return self.logged is not None

    def __call__(self, row: Mapping[str, Any]) -> None:
        if not self.live:
            return
        self.pending.append(row)
        if "val_loss" in row or self.clock() - self.last_sent >= self.run.metrics_every_s:
            self.flush()

    def flush(self) -> None:
        if not self.live or not self.pending:
            return
        rows, self.pending = self.pending, []
        self.last_sent = self.clock()
        try:
            self.sent += log_metrics_batched(
                self.run.run_id, rows, self.client, prefix=TRAIN_METRICS_PREFIX, logged=self.logged
            )
            self.batches += 1
        except Exception as err:  # see the module docstring
            self._give_up(err)

    def close(self) -> None:
        self.flush()

    def _give_up(self, err: Exception) -> None:
        self.logged, self.pending = None, []
        self.warn(
            redact_url(  # a log line: the tracking URI and the error may carry credentials
                f"live metrics to MLflow run {self.run.run_id} at {self.run.tracking_uri} stopped: {err}; "
                "the register phase logs them from metrics.jsonl"
            )
        )
