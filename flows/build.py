"""The `tinyllama-build` flow: the diagram of docs/architecture.md, one task per arrow.

    collect -> preprocess -> tokenizer -> encode -> train -> evaluate -> register

Every phase is cached on its content fingerprint, so a re-run with nothing changed re-uses every stored
artifact, and a changed config section re-runs only its phase and what follows. The data phases run in
the `tinyllama-data` subflow: each phase's task (named after the phase) runs in the flow's process and
maps its per-shard jobs onto the subflow's task runner as `shard` task runs, so with `dask.enabled` the
shards run on the cluster's workers and this process holds only artifacts and counts. Training runs in
this process unless `train_deployment` names a deployment on the GPU pool. The pipeline's MLflow run is
open from training to registration (closed FAILED if a phase fails), and training logs into it as it goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow
from prefect.deployments import run_deployment
from pydantic import BaseModel

from flows.config import DaskConfig, PipelineConfig, load_config
from flows.embedded_server import quiet_server_telemetry
from tasks.collect import collect
from tasks.evaluate import evaluate
from tasks.preprocess import preprocess
from tasks.register import register
from tasks.storage.artifacts import Artifact, load_artifact
from tasks.storage.data_root import DataRoot
from tasks.tokenizer import build_tokenizer, encode
from tasks.tracking.mlflow_run import RunRef, pipeline_run
from tasks.train import train, train_fingerprint

quiet_server_telemetry()


class DataArtifacts(BaseModel):
    """What the data flow hands on: four artifacts (paths and fingerprints, never the data)."""

    raw: Artifact
    clean: Artifact
    tokenizer: Artifact
    tokens: Artifact


@flow(name="tinyllama-data")
def prepare_data(cfg: PipelineConfig, root: str) -> DataArtifacts:
    """collect -> preprocess -> tokenizer -> encode; each phase's shards go to this flow's task runner."""
    raw = collect(cfg.collect, root)
    clean = preprocess(cfg.preprocess, raw, root)
    tokenizer = build_tokenizer(cfg.tokenizer, clean, root)
    tokens = encode(cfg.tokenizer, clean, tokenizer, root)
    return DataArtifacts(raw=raw, clean=clean, tokenizer=tokenizer, tokens=tokens)


def cluster_kwargs(dask: DaskConfig) -> dict[str, Any]:
    """The LocalCluster started when no `dask.address` is given, with each worker's memory set explicitly."""
    return {
        "n_workers": dask.n_workers,
        "threads_per_worker": dask.threads_per_worker,
        "memory_limit": dask.memory_limit,
    }


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which switches off glibc's adaptive mmap
# threshold, so every large temporary is mapped and unmapped again and the shard jobs run at half speed.
DASK_WORKER_SETTINGS = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


@contextmanager
def worker_settings(dask: DaskConfig) -> Iterator[None]:
    """Dask's settings for the workers a local cluster started inside this block spawns."""
    if not dask.enabled:
        yield
        return
    import dask as dask_lib

    with dask_lib.config.set(DASK_WORKER_SETTINGS):
        yield


def run_data(cfg: PipelineConfig, root: str) -> DataArtifacts:
    """The data flow on its task runner (threads here, or Dask workers started with our settings)."""
    with worker_settings(cfg.dask):
        return data_runner(cfg)(cfg, root)


def data_runner(cfg: PipelineConfig) -> Any:
    """The flow that runs the data phases: shards on threads, or on a Dask cluster (`dask.enabled`)."""
    if not cfg.dask.enabled:
        return prepare_data
    from prefect_dask import DaskTaskRunner

    if cfg.dask.address:
        runner = DaskTaskRunner(address=cfg.dask.address)
    else:
        runner = DaskTaskRunner(cluster_kwargs=cluster_kwargs(cfg.dask))
    return prepare_data.with_options(task_runner=runner)


def train_on_pool(
    cfg: PipelineConfig, tokens: Artifact, tokenizer: Artifact, root: str, mlflow_run: RunRef | None = None
) -> Artifact:
    """Hand training to the GPU deployment and pick its model up from the shared data root.

    A training run handed back to the queue because its GPU machine went away (AwaitingRetry) is not
    final, so `run_deployment` keeps waiting until another gpu worker finishes it.
    """
    run = run_deployment(
        cfg.train_deployment,
        parameters={
            "model": cfg.model,
            "train": cfg.train,
            "tokens": tokens,
            "tokenizer": tokenizer,
            "data_root": root,
            "mlflow_run": mlflow_run,
        },
    )
    if not run.state or not run.state.is_completed():
        state = run.state.name if run.state else "without a state"
        raise RuntimeError(f"training deployment {cfg.train_deployment} ended {state}")
    fingerprint = train_fingerprint(cfg.model, cfg.train, tokens, tokenizer)
    artifact = load_artifact(root, "train", fingerprint)
    if artifact is None:
        raise FileNotFoundError(
            f"{cfg.train_deployment} completed but {root}/train/{fingerprint} is missing: "
            f"the GPU worker must see the same data_root ({root})"
        )
    return artifact


@flow(name="tinyllama-build", log_prints=True)
def build(
    config: PipelineConfig | None = None, preset: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Build, evaluate and register a model. Give a full `config`, or a `preset` name plus `overrides`."""
    cfg = config or load_config(preset, overrides or [])
    root = DataRoot.parse(cfg.data_root).url  # an absolute folder, or an object-store URL

    data = run_data(cfg, root)
    clean, tokenizer, tokens = data.clean, data.tokenizer, data.tokens
    # The MLflow run opens before training, so its curves grow while the model trains.
    with pipeline_run(cfg.register, root, cfg, tags={"data_fingerprint": clean.fingerprint}) as run:
        if cfg.train_deployment:
            model = train_on_pool(cfg, tokens, tokenizer, root, run)
        else:
            model = train(cfg.model, cfg.train, tokens, tokenizer, root, run)
        evaluation = evaluate(cfg.evaluate, model, tokens, root)
        reports = {"data": clean, "tokenizer": tokenizer, "tokens": tokens}
        registered = register(cfg.register, model, evaluation, reports, run.run_id, root)

    return {
        "data_root": root,
        "fingerprints": {a.phase: a.fingerprint for a in (clean, tokenizer, tokens, model, evaluation)},
        "evaluation": evaluation.stats,
        "registered": registered.stats,
    }
