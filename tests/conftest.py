"""Shared fixtures. `SHARED_CORPUS` is the optional real corpus beside the repo (absent on a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processes import STARTUP_DEADLINE_S

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ai_wiki_dev.jsonl"


@pytest.fixture
def shared_corpus() -> Path:
    if not SHARED_CORPUS.is_file():
        pytest.skip(f"needs the real corpus at {SHARED_CORPUS} (not part of the repo)")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def prefect_harness():
    """One real, temporary Prefect server (SQLite) for every test that runs tasks or flows.

    Starting it costs 10-40 s on 2 busy cores, so the whole session shares it.
    """
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=int(STARTUP_DEADLINE_S)):
        yield


@pytest.fixture(autouse=True, scope="session")
def _torch_one_thread():
    """Tests use tiny tensors: a second OpenMP thread only adds sync stalls on 2 shared cores (10x here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_mlflow_globals():
    """A test that activates a store must leave neither MLflow's URIs nor their variables to the next."""
    from tests.mlflow_globals import mlflow_globals_kept

    with mlflow_globals_kept():
        yield
