"""A real build whose sources are reached with credentials in their URLs (userinfo and a token query, on
a loopback MediaWiki and a loopback web site) leaves them nowhere people read: no file under the data
root (Parquet read as rows, the MLflow SQLite store and artifacts as bytes), no Prefect log line, state
message or UI artifact of the run, no MLflow param, tag, metric key or model-version field."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from uuid import UUID

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from flows.build import build
from flows.config import PipelineConfig
from tests.flows.helpers import tiny_config
from tests.tasks.fakes.mediawiki import article, serve_mediawiki
from tests.tasks.fakes.server import loopback
from tests.tasks.fakes.web import serve_site

pytestmark = pytest.mark.slow

PASSWORD, TOKEN = "pw-s3cr3t-7781", "tok-s3cr3t-9924"
SECRETS = (PASSWORD, TOKEN)
AGENT = "tinyllama-tests/0.1 (https://example.org/tests; tests@example.org)"


def with_secret(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://alice:{PASSWORD}@{rest}?token={TOKEN}"


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


def data_root_leaks(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":  # compressed: read the rows, not the bytes
            content = json.dumps(pq.read_table(path).to_pylist(), default=str)
        else:
            content = path.read_bytes()
        if hit := leaks(content):
            found[str(path.relative_to(root))] = hit
    return found


def prefect_texts(flow_run_id: UUID) -> list[str]:
    """Every log line, state message (whole state history) and UI artifact of a run and its subflows."""
    for logger in (logging.getLogger(), logging.getLogger("prefect"), logging.getLogger("prefect.flow_runs")):
        for handler in logger.handlers:
            if isinstance(handler, APILogHandler):
                handler.flush()  # the last lines are sent in the background otherwise
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(child.id for child in children)]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids))
        )
        states = [s for run in task_runs for s in client.read_task_run_states(run.id)]
        states += [s for run_id in ids for s in client.read_flow_run_states(run_id)]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
    texts = [f"log: {log.message}" for log in logs]
    texts += [f"state {s.name}: {s.message}" for s in states if s.message]
    texts += [f"artifact {a.key}: {a.description} {json.dumps(a.data, default=str)}" for a in artifacts]
    assert any("web: rejected http://***@" in t for t in texts), "collect's log lines did not reach Prefect"
    return texts


def mlflow_fields(tracking_uri: str) -> list[str]:
    client = MlflowClient(tracking_uri=tracking_uri)
    fields = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            fields += [f"param {k}={v}" for k, v in run.data.params.items()]
            fields += [f"tag {k}={v}" for k, v in run.data.tags.items()]
            fields += [f"metric {k}" for k in run.data.metrics]
    for version in client.search_model_versions():
        fields += [f"version tag {k}={v}" for k, v in version.tags.items()]
        fields.append(f"version description {version.description}")
    assert any(f.startswith("param collect.web.urls") and "***@" in f for f in fields), fields[:20]
    return fields


def test_a_build_from_sources_with_credentials_shows_them_nowhere(prefect_harness, tmp_path: Path) -> None:
    with (
        loopback() as wiki_server,
        loopback() as web_server,
        serve_mediawiki(wiki_server) as wiki,
        serve_site(web_server) as site,
    ):
        for i in range(4):
            wiki.add(f"Tiny page {i}", article(f"Tiny page {i}"), topics=("tiny models",))
        base = tiny_config(tmp_path / "data").model_dump()
        base["collect"].update(
            user_agent=AGENT,
            wikipedia={
                **base["collect"]["wikipedia"],
                "enabled": True,
                "topics": ["tiny models"],
                "api_url": with_secret(wiki.url),
                "timeout_s": 5.0,
            },
            web={
                **base["collect"]["web"],
                "urls": [
                    with_secret(f"{site.url}/article.html"),
                    with_secret(f"{site.url}/missing.html"),
                ],
                "allow_hosts": [site.url.removeprefix("http://")],
                "per_host_delay_s": 0.0,
            },
        )
        cfg = PipelineConfig.model_validate(base)
        state = build(config=cfg, return_state=True)
        assert state.is_completed(), state
        result = state.result()
        # the credentials were used...
        assert wiki.requests and all(a.startswith("Basic ") for a in wiki.authorizations)
        assert all(r.get("token") == TOKEN for r in wiki.requests)

    root = Path(result["data_root"])
    assert data_root_leaks(root) == {}  # ...and are shown nowhere
    prefect = prefect_texts(state.state_details.flow_run_id)
    assert [t for t in prefect if leaks(t)] == []
    fields = mlflow_fields(result["registered"]["tracking_uri"])
    assert [f for f in fields if leaks(f)] == []
