"""Where MLflow keeps runs and models, and which store faults are worth a retry.

The default store's contents (its experiment's artifact folder, nothing under the working directory)
are checked against a real run in test_register.py.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.tracking.mlflow_store import is_connection_error, resolve_store, uri_variables
from tests.processes import free_port


def test_activating_one_store_does_not_capture_the_next_builds_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds with different data roots in one process (a worker, a notebook) keep their own stores."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    resolve_store(None, tmp_path / "first").activate()
    assert mlflow.get_registry_uri().endswith("first/mlflow/mlflow.db")  # the fluent API uses it
    leaked = {name: value for name, value in uri_variables().items() if value is not None}
    assert not leaked, f"a subprocess would inherit {leaked}"
    assert resolve_store(None, tmp_path / "second").tracking_uri.endswith("second/mlflow/mlflow.db")


def test_configured_uri_beats_environment_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env/m.db")
    env_store = resolve_store(None, tmp_path / "root")
    assert env_store.tracking_uri == f"sqlite:///{tmp_path}/env/m.db"
    assert (
        env_store.artifact_location == (tmp_path / "env" / "artifacts").as_uri()
    )  # beside the db, not ./mlruns
    assert resolve_store("http://mlflow:5000", tmp_path).artifact_location is None  # the server decides
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):
        resolve_store(None, None)


def test_only_an_unreachable_store_counts_as_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(MlflowException) as caught:
        MlflowClient(f"http://127.0.0.1:{free_port()}").get_experiment_by_name("x")  # nothing listens there
    assert is_connection_error(caught.value)
    assert not is_connection_error(ValueError("bad config"))
    assert not is_connection_error(MlflowException("no such model", error_code="RESOURCE_DOES_NOT_EXIST"))
