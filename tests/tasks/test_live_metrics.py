"""Training metrics into the pipeline's MLflow run while training runs, against a real SQLite store.

The pace is tested with a clock the test moves, so no assertion depends on how fast this machine is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.monitoring.live_metrics import MetricsStream
from tasks.register import RegisterConfig
from tasks.storage.artifacts import phase_fingerprint
from tasks.tokenizer import run_encode, run_tokenizer
from tasks.tracking.mlflow_run import RunRef, pipeline_run, shareable_uri, start_pipeline_run
from tasks.tracking.mlflow_store import resolve_store
from tasks.train import run_train
from tests.processes import free_port
from tests.tasks.test_tokenizer_task import SMALL, doc_texts, write_clean
from tests.tasks.test_train_task import MODEL, train_config


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingClient(MlflowClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def log_batch(self, run_id, metrics=(), **kwargs):
        self.batches.append(len(metrics))
        return super().log_batch(run_id, metrics=metrics, **kwargs)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


def open_run(root: Path, every_s: float = 10.0) -> RunRef:
    cfg = RegisterConfig(experiment_name="live", live_metrics_every_s=every_s)
    run_id = start_pipeline_run(cfg, root, {})
    return RunRef(tracking_uri=resolve_store(None, root).tracking_uri, run_id=run_id, metrics_every_s=every_s)


def train_row(step: int) -> dict:
    return {"step": step, "train_loss": 5.0 - step / 100, "lr": 1e-3, "tokens_per_s": 900.0}


def test_rows_go_in_batches_at_most_every_interval_and_validation_at_once(store_root: Path) -> None:
    run, clock = open_run(store_root, every_s=10.0), Clock()
    client = CountingClient(run.tracking_uri)
    stream = MetricsStream(run, client=client, clock=clock)
    for step in range(1, 101):  # 100 steps of 0.5 s: 50 s of training
        clock.now += 0.5
        stream(train_row(step))
        if step == 30:
            stream({"step": 30, "val_loss": 4.5, "val_bpb": 2.1})
    assert len(client.batches) <= 1 + 50 / 10 + 1  # the first row, one per 10 s, the validation
    history = client.get_metric_history(run.run_id, "train/val_loss")
    assert [m.step for m in history] == [30]  # sent with its row, not held for the interval
    stream.close()
    steps = sorted(m.step for m in client.get_metric_history(run.run_id, "train/train_loss"))
    assert steps == list(range(1, 101))  # nothing lost: close sends the rest


def test_a_retried_attempt_does_not_log_a_step_twice(store_root: Path) -> None:
    run = open_run(store_root)
    first = MetricsStream(run)
    for step in range(1, 21):
        first(train_row(step))
    first.close()
    again = MetricsStream(run)  # a retry resumed from the checkpoint at step 10 replays 11..20
    for step in range(11, 31):
        again(train_row(step))
    again.close()
    steps = [m.step for m in MlflowClient(run.tracking_uri).get_metric_history(run.run_id, "train/lr")]
    assert sorted(steps) == list(range(1, 31))


def test_a_store_that_does_not_answer_costs_one_warning_and_never_the_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    nobody = RunRef(tracking_uri=f"http://127.0.0.1:{free_port()}", run_id="0" * 32)  # nothing listens
    warnings: list[str] = []
    stream = MetricsStream(nobody, warn=warnings.append)
    for step in range(1, 50):
        stream(train_row(step))
    stream.close()
    assert not stream.live and len(warnings) == 1
    assert "register phase logs them from metrics.jsonl" in warnings[0]


@pytest.mark.slow
def test_the_trainer_fills_the_run_while_it_trains(tmp_path: Path, store_root: Path) -> None:
    """A real training run: after its first validation, the run already holds it and the steps so far."""
    clean = write_clean(tmp_path / "clean", doc_texts(30))
    tok = run_tokenizer(SMALL, clean, tmp_path)
    enc = run_encode(SMALL, clean, tok, tmp_path)
    run = open_run(store_root, every_s=3600.0)  # only validations flush before the end
    stream, seen = MetricsStream(run), {}

    def on_metrics(row: dict) -> None:
        stream(row)
        if row.get("step") == 11 and "train_loss" in row:  # the step after the first validation (10)
            client = MlflowClient(run.tracking_uri)
            seen["val"] = [m.step for m in client.get_metric_history(run.run_id, "train/val_loss")]
            seen["train"] = len(client.get_metric_history(run.run_id, "train/train_loss"))

    run_train(MODEL, train_config(), enc, tok, tmp_path, on_metrics=on_metrics)
    stream.close()
    assert seen == {"val": [10], "train": 10}
    client = MlflowClient(run.tracking_uri)
    assert len(client.get_metric_history(run.run_id, "train/train_loss")) == 20


def test_pipeline_run_closes_its_run_whatever_ends_the_block(store_root: Path) -> None:
    cfg, client = RegisterConfig(experiment_name="closing"), None
    with pipeline_run(cfg, store_root, {"a": 1}) as ok:
        client = ok.client()
        assert client.get_run(ok.run_id).info.status == "RUNNING"
    assert client.get_run(ok.run_id).info.status == "FINISHED"
    with pytest.raises(ValueError), pipeline_run(cfg, store_root, {}) as failed:
        raise ValueError("training diverged")
    assert client.get_run(failed.run_id).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt), pipeline_run(cfg, store_root, {}) as stopped:
        raise KeyboardInterrupt
    assert client.get_run(stopped.run_id).info.status == "KILLED"
    with pipeline_run(cfg, store_root, {}) as closed_inside:  # the register phase closed it already
        client.set_terminated(closed_inside.run_id, status="FAILED")
    assert client.get_run(closed_inside.run_id).info.status == "FAILED"


def test_a_run_ref_never_changes_a_cache_key() -> None:
    a = RunRef(tracking_uri="sqlite:///a.db", run_id="1" * 32, metrics_every_s=5)
    b = RunRef(tracking_uri="http://127.0.0.1:5000", run_id="2" * 32)
    assert phase_fingerprint("train", "1", mlflow_run=a) == phase_fingerprint("train", "1", mlflow_run=b)


def test_a_tracking_uri_with_credentials_never_becomes_a_flow_parameter() -> None:
    assert shareable_uri("https://alice:s3cret@mlflow.example.org") is None  # the worker's own env decides
    assert shareable_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert shareable_uri("sqlite:////data/mlflow/mlflow.db") == "sqlite:////data/mlflow/mlflow.db"
