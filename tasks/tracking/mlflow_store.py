"""Where MLflow keeps runs and models for this pipeline: one tracking URI and one artifact folder.

Nothing has to be started by hand: with no URI configured and no `MLFLOW_TRACKING_URI` in the
environment, runs and the model registry live in a SQLite file under the data root and their files in
an artifact folder beside it (`<root>/mlflow/mlflow.db`, `<root>/mlflow/artifacts`). Pointing
`register.tracking_uri` (or `MLFLOW_TRACKING_URI`) at `http://host:5000` shares one registry through
`mlflow server`, which then decides where artifacts go.

The experiment's artifact location is set explicitly for file-based stores because MLflow's own default
is `./mlruns` in whatever directory the process happens to run from.

It also tells a store that did not answer (the only fault worth a retry) from one that refused, and
how to open its UI on a run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException

from tasks.storage.data_root import DataRoot

STORE_DIR = "mlflow"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
URI_VARIABLES = (TRACKING_URI_ENV, "MLFLOW_REGISTRY_URI")  # what mlflow.set_*_uri export
log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # object-store roots already told where their default store is


@dataclass(frozen=True)
class Store:
    """A resolved MLflow store: where runs/models are recorded and where new experiments keep files."""

    tracking_uri: str
    artifact_location: str | None  # None: the tracking server decides

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def activate(self) -> None:
        """Point MLflow's process-wide URIs at this store.

        `mlflow.pyfunc.log_model`, `mlflow.pyfunc.load_model` and `models:/` URIs read the global URIs,
        not a client's, so they need this; explicit `MlflowClient` calls do not.
        """
        chosen_by_user = uri_variables()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        # MLflow also exports both URIs as variables; those are how a user picks a store (resolve_store
        # reads the first, MLflow and every subprocess both), so leaving ours there would send a later
        # build with another data root in this process, or a server it starts, to this store.
        restore_uri_variables(chosen_by_user)


def uri_variables() -> dict[str, str | None]:
    """The store URI variables as they stand (None: unset), for `restore_uri_variables`."""
    return {name: os.environ.get(name) for name in URI_VARIABLES}


def restore_uri_variables(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def default_tracking_uri(root: str | Path) -> str:
    """SQLite under the data root; for an object-store root (no SQLite there), under its local cache."""
    data_root = DataRoot.parse(root)
    db = (data_root.local / STORE_DIR / DB_FILE).resolve()
    if not data_root.is_local and data_root.url not in _WARNED:
        _WARNED.add(data_root.url)
        log.warning(
            "data_root %s is an object store, where MLflow's SQLite store cannot live: runs and models go to "
            "%s on this machine only. Set %s (e.g. an `mlflow server`) to share them.",
            data_root.url, db, TRACKING_URI_ENV,
        )  # fmt: skip
    return f"sqlite:///{db}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store URI (query parameters dropped); None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def resolve_store(
    tracking_uri: str | None, root: str | Path | None, artifact_location: str | None = None
) -> Store:
    """The configured URI, else `MLFLOW_TRACKING_URI`, else a SQLite store under the data root."""
    uri = tracking_uri or os.environ.get(TRACKING_URI_ENV)
    if not uri:
        if root is None:
            raise ValueError(
                "no MLflow store: set register.tracking_uri or MLFLOW_TRACKING_URI, or pass the data root "
                "so the default SQLite store under it is used"
            )
        uri = default_tracking_uri(root)
    if artifact_location is None:
        artifact_location = _local_artifact_location(uri)
    if (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return Store(tracking_uri=uri, artifact_location=artifact_location)


def _local_artifact_location(uri: str) -> str | None:
    """For a SQLite store the artifacts go beside the database file; a server picks its own."""
    if (db := sqlite_path(uri)) is not None:
        return (db.parent / ARTIFACTS_DIR).resolve().as_uri()
    return None  # a file store keeps artifacts in its own folder; a server has its artifact root


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of the experiment called `name`, created (or restored from the trash) when needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another pipeline created it between our lookup and our create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def is_connection_error(exc: BaseException) -> bool:
    """A transient store fault: a tracking server that did not answer, or a busy SQLite file."""
    import requests
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        if isinstance(seen, sqlalchemy.exc.OperationalError) and "locked" in str(seen):
            return True
        if isinstance(seen, MlflowException) and (
            seen.error_code == "TEMPORARILY_UNAVAILABLE" or _is_unanswered_request(seen.message)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_unanswered_request(message: str) -> bool:
    # MLflow's REST client flattens requests' errors into text: "API request to <url> failed with ..."
    return "API request to" in message and any(
        m in message for m in ("Max retries", "timeout", "Connection refused", "Failed to establish")
    )


def mlflow_run_link(tracking_uri: str, run_id: str) -> str:
    """A Markdown link to the run in the MLflow UI, or how to open that UI for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
        return f"[{run_id}]({tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id}` (open with `mlflow ui --backend-store-uri {tracking_uri}`)"
