"""The collect and preprocess Prefect tasks: UI artifacts, caching, and retries only for transient faults."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import tasks.collect as collect_module
from tasks.collect import CollectConfig
from tasks.preprocess import PreprocessConfig
from tasks.sources.errors import TransientSourceError
from tasks.storage.artifacts import Artifact
from tinyllama_model.errors import ConfigError

OFFLINE = CollectConfig(builtin=True, wikipedia={"enabled": False})


@pytest.mark.slow
def test_collect_then_preprocess_in_a_flow(prefect_harness, tmp_path):
    from prefect import flow
    from prefect.artifacts import Artifact as UiArtifact

    from tasks.collect import collect
    from tasks.preprocess import preprocess

    @flow
    def build(root: str):
        raw = collect(OFFLINE, root)
        state = preprocess(PreprocessConfig(), raw, root, return_state=True)
        return raw, state

    root = tmp_path / "data"
    raw, state = build(str(root))
    clean = state.result()
    assert isinstance(raw, Artifact) and raw.stats["per_source"]["builtin"] > 100
    assert clean.phase == "preprocess" and clean.stats["documents_kept"] > 100
    for key in ("collect-sources", "collect-summary", "preprocess-steps", "preprocess-report"):
        assert UiArtifact.get(key) is not None, key

    raw_again, state_again = build(str(root))
    assert raw_again.fingerprint == raw.fingerprint  # collected again, same content
    assert state_again.name == "Cached" and state_again.result() == clean

    # the data root deleted by hand (or a fresh clone at the same path): no cache hit on vanished files
    shutil.rmtree(root)
    _, state_fresh = build(str(root))
    assert state_fresh.name == "Completed" and state_fresh.result().fingerprint == clean.fingerprint
    assert (Path(clean.path) / "manifest.json").is_file()


@pytest.mark.slow
def test_collect_retries_transient_faults_only(prefect_harness, tmp_path, monkeypatch):
    from prefect import flow

    from tasks.collect import collect

    calls: list[str] = []
    real = collect_module.run_collect

    def flaky(cfg, root, **kw):
        calls.append("call")
        if len(calls) == 1:
            raise TransientSourceError("API down")
        return real(cfg, root, **kw)

    monkeypatch.setattr(collect_module, "run_collect", flaky)
    fast = collect.with_options(retry_delay_seconds=0)

    @flow
    def once(cfg: CollectConfig, root: str):
        return fast(cfg, root)

    assert once(OFFLINE, str(tmp_path)).stats["documents"] > 100
    assert len(calls) == 2

    calls.clear()
    monkeypatch.setattr(
        collect_module, "run_collect", lambda *a, **k: (calls.append("call"), real(*a, **k))[1]
    )
    with pytest.raises(ConfigError):
        once(CollectConfig(wikipedia={"enabled": False}), str(Path(tmp_path) / "other"))
    assert len(calls) == 1  # a bad config is not retried


@pytest.mark.slow
def test_local_jobs_run_as_prefect_task_runs(prefect_harness, tmp_path):
    """run_collect(..., mapper=task_map) inside a flow: each job a task run, the same artifact content."""
    from prefect import flow

    from tasks.collect import run_collect
    from tasks.shard_map import task_map
    from tests.tasks.test_collect_dump import dump_config, write_dump

    write_dump(tmp_path / "dump", files=3, rows=300)
    cfg = dump_config(tmp_path / "dump", shard_mb=0.1)

    @flow
    def collect_on_the_runner(root: str):
        return run_collect(cfg, root, mapper=task_map)

    state = collect_on_the_runner(str(tmp_path / "mapped"), return_state=True)
    mapped = state.result()
    serial = run_collect(cfg, tmp_path / "serial")
    assert len(mapped.shards["documents"]) == 3 and mapped.stats["documents"] == 900
    assert mapped.fingerprint == serial.fingerprint

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert sorted(r.name.split("-")[0] for r in runs) == ["read_job"] * 3
