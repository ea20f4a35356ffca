"""MLflow's process-wide store URIs, put back as they were after a test or a module moves them.

`mlflow.set_tracking_uri` / `set_registry_uri` set a global and, when the value changes, also export
MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which `resolve_store` (and every subprocess) reads as the
user's choice of store. Putting a global back can therefore re-export a URI an earlier test left there:
the variables are restored after the globals, or a test that happens to run later in the same process
(another order, another xdist worker) is sent to a server that has long stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow

from tasks.tracking.mlflow_store import restore_uri_variables, uri_variables


@contextmanager
def mlflow_globals_kept() -> Iterator[None]:
    uris = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    variables = uri_variables()
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uris[0])
        mlflow.set_registry_uri(uris[1])
        restore_uri_variables(variables)
