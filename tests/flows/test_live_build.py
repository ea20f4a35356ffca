"""A build watched while it runs (Prefect's harness, a real MLflow store, the tiny preset).

The MLflow run is open before training and fills as training goes; Prefect shows a progress bar for
collect and train and a progress line from training; the registered version carries its model card;
a build whose training fails leaves its run closed as FAILED, not open and not missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterTaskRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import TaskRun

from flows.build import build
from tests.flows.helpers import tiny_config
from tests.processes import wait_until

pytestmark = pytest.mark.slow
LINE = re.compile(r"step \d+ \| [\d.]+% of budget \| loss [\d.]+ \| [\d,]+ tok/s \| eta \S+")


def task_runs(flow_run_id: UUID) -> dict[str, TaskRun]:
    """The task runs of a flow run and its subflows, by task name."""
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id, *(c.id for c in children)])
            )
        )
    return {run.name.rsplit("-", 1)[0]: run for run in runs}


def progress_of(task_run: TaskRun, key: str) -> float | None:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return next((a.data for a in found if a.task_run_id == task_run.id), None)


def log_lines(task_run: TaskRun) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run.id])))
    return [log.message for log in logs]


def test_a_build_is_watched_as_it_runs_and_its_run_always_closes(prefect_harness, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", "train.log_every_s=0.5", "register.live_metrics_every_s=0.5")
    state = build(config=cfg, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    runs = task_runs(state.state_details.flow_run_id)
    mlflow = MlflowClient(result["registered"]["tracking_uri"])
    run = mlflow.get_run(result["registered"]["run_id"])
    ms = lambda when: when.timestamp() * 1000

    # the run opened before training, and training logged into it before registration began
    assert run.info.start_time <= ms(runs["train"].start_time)
    history = mlflow.get_metric_history(run.info.run_id, "train/train_loss")
    assert sorted(m.step for m in history) == list(range(1, 31))  # every step, none twice
    assert min(m.timestamp for m in history) < ms(runs["register"].start_time)
    assert run.info.status == "FINISHED"

    # Prefect: both progress bars full, and the training's progress line in its log
    assert progress_of(runs["train"], "train-progress") == 100
    assert progress_of(runs["collect"], "collect-progress") == 100
    wait_until(lambda: any(LINE.search(m) for m in log_lines(runs["train"])), "the progress line in the log")

    # the model card goes with the version
    version = mlflow.get_model_version("tinyllama", str(result["registered"]["version"]))
    assert version.description.startswith("# tinyllama: model card\n")
    assert version.tags["card.data_fingerprint"] == result["fingerprints"]["preprocess"]

    # training that fails (a window longer than the model's context) closes the run it opened
    failed = build(config=tiny_config(tmp_path / "data", "train.seq_len=128"), return_state=True)
    assert failed.is_failed()
    (last,) = mlflow.search_runs(
        [run.info.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )
    assert last.data.params["train.seq_len"] == "128" and last.info.status == "FAILED"
