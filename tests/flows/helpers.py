"""What the flow tests ask Prefect about a finished run."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)

from flows.config import PipelineConfig, load_config

TINY_PRESET = Path(__file__).with_name("tiny.yaml")
PHASES = ("collect", "preprocess", "train-tokenizer", "encode", "train", "evaluate", "register")


def tiny_config(root: Path, *overrides: str) -> PipelineConfig:
    return load_config(str(TINY_PRESET), [f"data_root={root}", *overrides])


def task_states(flow_run_id: UUID) -> dict[str, str]:
    """Final state name of each task run of a flow run and its subflows, by task name."""
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(child.id for child in children)]
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids))
        )
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs if run.state is not None}


def ui_artifact_keys(flow_run_id: UUID) -> set[str]:
    """Keys of the UI artifacts the tasks of one flow run published (not its subflows')."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in found if a.key}
