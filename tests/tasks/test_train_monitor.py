"""What someone watching training sees: the progress line, the heartbeat between rows, the progress bar.

Lines are driven by a clock the test moves; the heartbeat thread is waited for with a deadline of
minutes, so nothing depends on this machine's speed.
"""

from __future__ import annotations

import logging
import re
import uuid

import pytest

from tasks.monitoring.train_monitor import TrainingMonitor
from tests.processes import wait_until
from tinyllama_model.training.train_config import TrainConfig, budget_progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Bar:
    def __init__(self) -> None:
        self.fractions: list[float] = []

    def update(self, fraction: float, description: str | None = None) -> None:
        self.fractions.append(fraction)


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger(f"test-train-monitor-{uuid.uuid4().hex}")  # a fresh logger per test
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(Lines())
    return log


def lines_of(log: logging.Logger) -> list[str]:
    return log.handlers[0].lines  # type: ignore[attr-defined]


def row(step: int, seconds_per_step: float = 2.0, loss: float = 4.0) -> dict:
    return {
        "step": step,
        "tokens": step * 512,
        "train_loss": loss,
        "lr": 1e-3,
        "tokens_per_s": 512 / seconds_per_step,
        "epoch": step / 1000,
        "elapsed_s": step * seconds_per_step,
    }


def test_a_line_every_interval_with_step_loss_speed_and_eta(logger: logging.Logger) -> None:
    cfg, clock = TrainConfig(max_steps=100, max_minutes=None, log_every_s=30.0), Clock()
    monitor = TrainingMonitor(cfg, logger, clock=clock)
    for step in range(1, 51):  # 2 s per step: 100 s
        clock.now += 2.0
        monitor(row(step))
    lines = lines_of(logger)
    assert 3 <= len(lines) <= 1 + 100 / 30  # the first step, then one per 30 s: not one per step
    assert lines[-1].startswith("step 46 | 46.0% of budget | loss 4.0000 | 256 tok/s | eta ")
    # 49 steps took 98 s; 50 remain at that pace
    assert monitor.eta_s() == pytest.approx(50 * 2.0)
    assert re.search(r"eta 1m4\ds", monitor.status(clock.now))


def test_heartbeat_writes_a_line_while_no_row_comes(logger: logging.Logger) -> None:
    """A long validation or a slow step still leaves a line every interval, saying how long it has been."""
    cfg = TrainConfig(max_steps=100, max_minutes=None, log_every_s=0.2)
    with TrainingMonitor(cfg, logger) as monitor:
        monitor(row(3))
        wait_until(lambda: any("no new step for" in line for line in lines_of(logger)), "a heartbeat line")
    stale = next(line for line in lines_of(logger) if "no new step for" in line)
    assert stale.startswith("step 3 | 3.0% of budget | loss 4.0000")
    assert not monitor.heartbeat.is_alive()  # stopped with the block


def test_before_the_first_step_the_line_says_training_is_preparing(logger: logging.Logger) -> None:
    cfg, clock = TrainConfig(max_steps=10, max_minutes=None, log_every_s=10.0), Clock()
    monitor = TrainingMonitor(cfg, logger, clock=clock)
    clock.now = 65.0
    monitor.tick()
    assert lines_of(logger) == ["training: preparing, no step done yet (1m05s)"]
    monitor.tick()  # within the interval: nothing more
    assert len(lines_of(logger)) == 1


def test_validation_rows_get_their_own_line_and_rows_reach_the_stream(logger: logging.Logger) -> None:
    sent: list[dict] = []

    class Stream:
        def __call__(self, r: dict) -> None:
            sent.append(r)

        def close(self) -> None:
            sent.append({"closed": True})

    cfg = TrainConfig(max_steps=10, max_minutes=None)
    with TrainingMonitor(cfg, logger, stream=Stream()) as monitor:
        monitor(row(5))
        monitor({"step": 5, "val_loss": 3.25, "val_bpb": 1.5})
    assert "step 5: val loss 3.2500, bpb 1.5000" in lines_of(logger)
    assert sent == [row(5), {"step": 5, "val_loss": 3.25, "val_bpb": 1.5}, {"closed": True}]


def test_the_bar_follows_the_largest_budget_and_ends_full(logger: logging.Logger) -> None:
    bar = Bar()
    cfg = TrainConfig(max_steps=1000, max_minutes=1.0)  # 2 s per step: the minute budget binds at step 30
    with TrainingMonitor(cfg, logger, bar=bar) as monitor:
        for step in range(1, 31):
            monitor(row(step))
    assert bar.fractions[0] == pytest.approx(2 / 60) and bar.fractions[-2] == pytest.approx(1.0)
    assert bar.fractions == sorted(bar.fractions) and bar.fractions[-1] == 1.0


def test_a_failed_training_does_not_fill_the_bar(logger: logging.Logger) -> None:
    bar = Bar()
    with (
        pytest.raises(RuntimeError),
        TrainingMonitor(TrainConfig(max_steps=10, max_minutes=None), logger, bar=bar) as m,
    ):
        m(row(2))
        raise RuntimeError("diverged")
    assert bar.fractions == [0.2]


def test_budget_progress_is_the_largest_fraction_of_any_budget_set() -> None:
    cfg = TrainConfig(max_steps=100, max_tokens=10_000, max_epochs=None, max_minutes=2.0)
    assert budget_progress(cfg, step=10, tokens=5_000, epochs=9.0, elapsed_s=30.0) == 0.5  # tokens bind
    assert budget_progress(cfg, step=10, tokens=100, epochs=9.0, elapsed_s=90.0) == 0.75  # minutes bind


def test_speed_is_the_sessions_average_not_the_last_steps(logger: logging.Logger) -> None:
    monitor = TrainingMonitor(TrainConfig(max_steps=100, max_minutes=None), logger)
    monitor({**row(10), "elapsed_s": 10.0, "tokens": 5_120})
    monitor({**row(20), "elapsed_s": 30.0, "tokens": 10_240, "tokens_per_s": 99_999.0})  # one lucky step
    assert monitor.tokens_per_s() == pytest.approx(5_120 / 20.0)
