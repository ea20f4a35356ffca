"""The pipeline's MLflow run: opened with the config and provenance, filled with metrics, closed.

One MLflow run per pipeline run. The flow opens it with `pipeline_run` before training (every config
field as a param, the caller's tags such as the data fingerprint, the git commit and the Prefect flow run),
so the train phase can log into it as it goes (`tasks.monitoring.live_metrics`, reaching the run through a
`RunRef`
even on another machine); the register phase fills it in and closes it, and `pipeline_run` closes it when a
phase failed or the flow was stopped. Metrics go in `log_batch` calls within MLflow's limits, under names
MLflow accepts, and a (metric, step) pair already in the run is not logged twice.

This module knows the run, not what goes in it: the reports, the model and the registry live in
`tasks.tracking.run_reports`, `tasks.tracking.model_versions` and `tasks.tracking.champion`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from pydantic import BaseModel, Field

from tasks.redact import redact_url
from tasks.tracking.mlflow_store import Store, ensure_experiment, resolve_store
from tinyllama_model.config_fields import operational

# MLflow's own limits (mlflow.utils.validation): entities per log_batch call, length of a param value.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE_CHARS = 6000
# The trainer's per-step rows live under "train/" in the run: its periodic val_bpb is an estimate on a sample
# of windows, and the plain val_* names belong to the evaluate phase's full held-out figures.
TRAIN_METRICS_PREFIX = "train/"

log = logging.getLogger(__name__)


class RunSettings(Protocol):
    """What this module reads of the register section (`tasks.register.RegisterConfig`)."""

    tracking_uri: str | None
    artifact_location: str | None
    experiment_name: str
    live_metrics_every_s: float


class RunRef(BaseModel):
    """The pipeline's open run as a phase reaches it, here or on another machine (a flow parameter).

    Every field is operational: which run watches a phase never changes what the phase computes, so a
    task that takes a RunRef keeps its cache key from run to run.
    """

    tracking_uri: str | None = Field(
        description="The store holding the run (resolved: a server URL or a SQLite file). None: the one "
        "MLFLOW_TRACKING_URI names where the phase runs (a URI with credentials is never put here, since "
        "flow parameters are shown in the Prefect UI).",
        json_schema_extra=operational(),
    )
    run_id: str = Field(description="The pipeline's MLflow run.", json_schema_extra=operational())
    metrics_every_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between batches of live training metrics (register.live_metrics_every_s).",
        json_schema_extra=operational(),
    )

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)


def open_store(cfg: RunSettings, root: str | Path) -> Store:
    """The configured store, made MLflow's process-wide default (pyfunc logging and `models:/` need it)."""
    store = resolve_store(cfg.tracking_uri, root, cfg.artifact_location)
    store.activate()
    return store


def flatten_params(params: Mapping[str, Any] | BaseModel, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.lr": "0.001", ...}; lists as JSON; credentials in URLs masked (a param is
    public to everyone who reads the run); values cut to MLflow's length limit."""
    if isinstance(params, BaseModel):
        params = params.model_dump(mode="json")
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
            continue
        text = redact_url(value if isinstance(value, str) else json.dumps(value, default=str))
        if len(text) > MAX_PARAM_VALUE_CHARS:
            text = text[: MAX_PARAM_VALUE_CHARS - 15] + "...[truncated]"
        flat[name] = text
    return flat


def start_pipeline_run(
    cfg: RunSettings,
    root: str | Path,
    params: Mapping[str, Any] | BaseModel,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> str:
    """Open the pipeline's MLflow run (status RUNNING) and return its id; `run_register` closes it.

    Tags: the caller's (e.g. `data_fingerprint`), plus the git commit of this code and the Prefect flow
    run (id, name, UI link) when there is one; the caller's values win.
    """
    store = open_store(cfg, root)
    client = store.client()
    experiment_id = ensure_experiment(client, cfg.experiment_name, store.artifact_location)
    all_tags = {**source_tags(), **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    run_name = run_name or all_tags.get("prefect.flow_run_name")
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    items = [Param(k, v) for k, v in flatten_params(params).items()]
    for chunk in chunks(items, MAX_PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=chunk)
    return run.info.run_id


def finish_pipeline_run(cfg: RunSettings, root: str | Path, run_id: str, failed: bool = False) -> None:
    """Close a run the pipeline could not finish (call it when a phase before `register` fails)."""
    open_store(cfg, root).client().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


@contextmanager
def pipeline_run(
    cfg: RunSettings,
    root: str | Path,
    params: Mapping[str, Any] | BaseModel,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[RunRef]:
    """The pipeline's run, open for the phases inside the block and closed whatever ends it.

    The register phase closes it FINISHED (or FAILED); a run still open when the block ends is closed
    here: FAILED after an exception, KILLED after a cancellation or interrupt, FINISHED otherwise.
    """
    run_id = start_pipeline_run(cfg, root, params, tags)
    uri = shareable_uri(open_store(cfg, root).tracking_uri)
    ref = RunRef(tracking_uri=uri, run_id=run_id, metrics_every_s=cfg.live_metrics_every_s)
    try:
        yield ref
    except Exception:
        _close_if_open(ref, RunStatus.FAILED)
        raise
    except BaseException:
        _close_if_open(ref, RunStatus.KILLED)
        raise
    _close_if_open(ref, RunStatus.FINISHED)


def shareable_uri(uri: str) -> str | None:
    """The URI if it may travel as a flow parameter (shown in the Prefect UI); None if it has credentials."""
    return uri if redact_url(uri) == uri else None


def _close_if_open(ref: RunRef, status: int) -> None:
    """End the run unless a phase already did; a store that fails here must not hide the phase's error."""
    try:
        client = ref.client()
        if client.get_run(ref.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            client.set_terminated(ref.run_id, status=RunStatus.to_string(status))
    except Exception as err:  # reported; the phase's own outcome decides the flow's
        log.warning("could not close MLflow run %s as %s: %s", ref.run_id, RunStatus.to_string(status), err)


def logged_steps(client: MlflowClient, run_id: str, prefix: str = "") -> dict[str, set[int]]:
    """The steps already in the run, per metric key under `prefix`: what a repeated log must skip."""
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefix)]
    return {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}


def log_metrics_batched(
    run_id: str,
    rows: Iterable[Mapping[str, Any]],
    client: MlflowClient | None = None,
    prefix: str = "",
    logged: dict[str, set[int]] | None = None,
) -> int:
    """Log per-step metric rows ({"step": 10, "train_loss": 3.2, ...}) in `log_batch` calls of <= 1000.

    Non-numeric values are skipped and key characters MLflow refuses become "_"; `prefix` namespaces
    the keys ("train/" groups them in the MLflow UI). A row without "step" takes its position in `rows`.
    With `logged` (see `logged_steps`), a (key, step) pair found there is skipped and what is logged is
    added to it, so live logging, a retried attempt and the final backfill never log a point twice.
    Returns the number of metric values logged.
    """
    client = client or MlflowClient()
    now = int(time.time() * 1000)
    metrics: list[Metric] = []
    for i, row in enumerate(rows):
        step = int(row.get("step", i))
        for key, value in row.items():
            if key == "step" or not is_number(value):
                continue
            name = metric_key(prefix + key)
            if logged is not None:
                if step in logged.setdefault(name, set()):
                    continue
                logged[name].add(step)
            metrics.append(Metric(name, float(value), now, step))
    for chunk in chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    return len(metrics)


def source_tags() -> dict[str, str]:
    """Where the run comes from: this code's git commit (and whether it was dirty), the Prefect flow run."""
    tags = {"mlflow.source.name": "tinyllama-pipeline", "mlflow.source.type": "JOB"}
    tags.update(_git_tags(Path(__file__).resolve().parents[1]))
    try:
        from prefect.runtime import flow_run

        if flow_run.id:
            tags["prefect.flow_run_id"] = str(flow_run.id)
            tags["prefect.flow_run_name"] = str(flow_run.name)
            if flow_run.ui_url:
                tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    except Exception:  # outside a flow run, or a Prefect without the runtime module
        pass
    return tags


def _git_tags(repo: Path) -> dict[str, str]:
    git = ["git", "-C", str(repo)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"mlflow.source.git.commit": commit, "git_dirty": str(bool(dirty))}
    except (OSError, subprocess.SubprocessError):
        # No checkout (an installed wheel, a Docker image): the images record the commit at build time.
        if (commit := os.environ.get("TINYLLAMA_GIT_COMMIT", "unknown")) != "unknown":
            return {"mlflow.source.git.commit": commit}
        return {}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flat_numbers(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested mapping under dotted keys ({"a": {"b": 1}} -> {"a.b": 1.0})."""
    out: dict[str, float] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, f"{prefix}{key}."))
        elif is_number(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def metric_key(key: str) -> str:
    """MLflow accepts letters, digits, and _ - . space / in metric names."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(key))


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
