"""`dask.enabled` runs collect and preprocess on a Dask cluster through prefect-dask."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.build import data_runner
from tasks.storage.artifacts import load_artifact
from tests.flows.helpers import tiny_config

pytestmark = pytest.mark.slow
distributed = pytest.importorskip("distributed", reason="the dask extra (prefect-dask) is not installed")


def test_data_phases_run_on_a_two_worker_cluster(prefect_harness, tmp_path: Path) -> None:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        cfg = tiny_config(tmp_path / "data", "dask.enabled=true", f"dask.address={cluster.scheduler_address}")
        with distributed.Client(cluster) as client, distributed.get_task_stream(client) as stream:
            clean = data_runner(cfg)(cfg, str(tmp_path / "data"))
        ran = {
            record["key"].rsplit("-", 1)[0] if isinstance(record["key"], str) else ""
            for record in stream.data
        }
    assert {"collect", "preprocess"} <= {key.split("-")[0] for key in ran}, ran
    assert load_artifact(tmp_path / "data", "preprocess", clean.fingerprint) == clean

    local = data_runner(tiny_config(tmp_path / "local"))(
        tiny_config(tmp_path / "local"), str(tmp_path / "local")
    )
    assert local.fingerprint == clean.fingerprint  # the same content whichever runner did the work
