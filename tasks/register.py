"""The register phase: fill in and close the pipeline's MLflow run, register the model, crown it if better.

The flow opens one MLflow run per pipeline run (`tasks.tracking.mlflow_run.start_pipeline_run`);
`run_register`,
the last phase, fills it in and closes it: per-step training metrics, the data and tokenizer reports,
the loss curve, sample generations and the evaluation metrics (`tasks.tracking.run_reports`), then the
model as an
MLflow pyfunc registered as a new version of `tinyllama` (`tasks.tracking.model_versions`), with its model
card
(`tasks.tracking.model_card`) as the version's description, as `card.*` tags and as README.md beside the model
files. The alias `champion` moves to the new version only when its validation bits per byte are strictly
lower than the current champion's (`tasks.tracking.champion`).

A model that is already registered (same train-artifact fingerprint, e.g. a nightly rebuild that found
nothing new) is not logged again: the run points at the existing version instead, so the registry does
not fill with copies of one model.

This module holds the phase's config section, the function that orders those steps, and the Prefect
task; getting a registered model back is `tasks.tracking.model_refs`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks import markdown as md
from tasks.redact import redact_url
from tasks.retries import retry_if
from tasks.storage.artifacts import Artifact, materialize, phase_fingerprint, publish
from tasks.storage.cache_records import artifact_cache
from tasks.tracking.champion import promote_if_better
from tasks.tracking.mlflow_run import flat_numbers, open_store
from tasks.tracking.mlflow_store import is_connection_error, mlflow_run_link
from tasks.tracking.model_card import ModelCard, build_card
from tasks.tracking.model_refs import find_model_dir
from tasks.tracking.model_versions import MODEL_FINGERPRINT_TAG, find_version, log_and_register
from tasks.tracking.run_reports import evaluation_metrics, log_run_contents, read_samples
from tinyllama_model.config_fields import operational

CODE_VERSION = "1"
REGISTRATION_FILE = "registration.json"


class RegisterConfig(BaseModel):
    """Where MLflow records runs and models, and how the registered model serves by default."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking/registry URI (sqlite:///..., http://host:5000). Empty: "
        "MLFLOW_TRACKING_URI if set, else SQLite at <data root>/mlflow/mlflow.db with artifacts beside it.",
    )
    artifact_location: str | None = Field(
        None,
        description="Where a newly created experiment stores files. Empty: <store folder>/artifacts for a "
        "SQLite store; the server's choice for a tracking server.",
    )
    experiment_name: str = Field(
        "tinyllama", description="MLflow experiment holding one run per pipeline run."
    )
    model_name: str = Field(
        "tinyllama", description="Registered model name; each pipeline run adds a version."
    )
    champion_alias: str = Field(
        "champion", description="Alias of the best version so far; serve it as models:/<name>@<alias>."
    )
    champion_metric: str = Field(
        "val_bpb",
        description="Evaluation metric that decides the champion (lower is better). Bits per byte compare "
        "models with different tokenizers.",
    )
    log_step_metrics: bool = Field(
        True, description="Log the per-step training metrics (metrics.jsonl of the train phase) into the run."
    )
    live_metrics_every_s: float = Field(
        10.0,
        gt=0,
        description="While training runs: seconds between batches of train loss, lr and tokens/s sent to the "
        "MLflow run (validation rows go at once). Bounds the requests to the store, not what is kept: every "
        "step is in the run at the end.",
        json_schema_extra=operational(),
    )
    example_prompt: str = Field(
        "The future of AI is",
        description="Input example stored with the model (also a load-and-predict check).",
    )
    max_new_tokens: int = Field(64, ge=1, description="Serving default: tokens generated per prompt.")
    temperature: float = Field(0.8, ge=0.0, description="Serving default: sampling temperature (0 = greedy).")
    top_k: int = Field(50, ge=0, description="Serving default: keep the k most likely tokens (0 = off).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Serving default: nucleus sampling mass (1 = off).")
    repetition_penalty: float = Field(1.0, gt=0.0, description="Serving default: >1 discourages repeats.")
    bundle_code: bool = Field(
        True,
        description="Copy the tinyllama_model package into the logged model (code_paths), so it loads where "
        "this project is not installed, e.g. `mlflow models serve --env-manager virtualenv`.",
    )
    pip_requirements: list[str] | None = Field(
        None,
        description="Requirements stored with the model. Empty: the installed torch, numpy, sentencepiece "
        "and safetensors versions (MLflow adds mlflow itself).",
    )


def run_register(
    cfg: RegisterConfig,
    model: Artifact,
    evaluation: Artifact,
    reports: Mapping[str, Artifact | str | Path],
    run_id: str,
    root: str | Path,
) -> Artifact:
    """Fill in and close the pipeline run, register the model, move the champion alias if it is better.

    `model` is the train artifact (a `model/` directory and `metrics.jsonl`), `evaluation` holds
    `metrics.json` and `samples.json`, `reports` maps a name (e.g. "data", "tokenizer") to an artifact or
    a file/folder whose JSON/Markdown files are logged under `reports/<name>/`. Returns a small
    "register" artifact whose stats say which version was registered and whether it became champion.
    """
    model, evaluation = materialize(model), materialize(evaluation)
    reports = {name: materialize(r) if isinstance(r, Artifact) else r for name, r in reports.items()}
    store = open_store(cfg, root)
    client = store.client()
    model_dir = find_model_dir(model.dir)
    metrics = evaluation_metrics(evaluation)
    missing = [
        f"{name}: {r}" for name, r in reports.items() if not isinstance(r, Artifact) and not Path(r).exists()
    ]
    if missing:
        raise FileNotFoundError(f"reports to log do not exist: {missing}")
    fingerprint = phase_fingerprint(
        "register", CODE_VERSION, cfg=cfg, model=model, evaluation=evaluation, run_id=run_id
    )
    card = build_card(cfg.model_name, model, model_dir, metrics, read_samples(evaluation), reports)

    with mlflow.start_run(run_id=run_id):  # closes the run: FINISHED, or FAILED on an exception
        log_run_contents(client, run_id, model, evaluation, metrics, reports, cfg.log_step_metrics)
        client.log_text(run_id, card.markdown(), "model_card.md")
        mv, reused = _new_or_existing_version(client, cfg, model, evaluation, metrics, model_dir, card)
        version = int(mv.version)
        client.update_model_version(cfg.model_name, str(version), description=card.description())
        decision = promote_if_better(client, cfg, version, metrics.get(cfg.champion_metric))
        model_uri = f"models:/{cfg.model_name}/{version}"
        client.set_tag(run_id, "model_uri", model_uri)
        client.set_tag(run_id, "champion_moved", str(decision["champion_moved"]))

    stats = {
        "run_id": run_id,
        "tracking_uri": redact_url(store.tracking_uri),  # stats are shown: registration.json, the UI
        "run_link": redact_url(mlflow_run_link(store.tracking_uri, run_id)),  # needs the real URI
        "model_name": cfg.model_name,
        "version": version,
        "model_uri": model_uri,
        "reused_version": reused,
        cfg.champion_metric: metrics.get(cfg.champion_metric),
        **decision,
    }

    def build(staging: Path) -> dict[str, Any]:
        (staging / REGISTRATION_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        return stats

    return publish(root, "register", fingerprint, build, reuse=False)


def _new_or_existing_version(
    client: MlflowClient,
    cfg: RegisterConfig,
    model: Artifact,
    evaluation: Artifact,
    metrics: Mapping[str, float],
    model_dir: Path,
    card: ModelCard,
) -> tuple[ModelVersion, bool]:
    """The version for this model and whether it existed; either way it carries the current figures."""
    version_tags = {
        **{k: repr(v) for k, v in metrics.items()},
        **{f"train.{k}": repr(v) for k, v in flat_numbers(model.stats).items()},
        **card.tags(),
        MODEL_FINGERPRINT_TAG: model.fingerprint,
        "evaluation_fingerprint": evaluation.fingerprint,
    }
    mv = find_version(client, cfg.model_name, model.fingerprint)
    # The same model again: refresh its figures (the evaluation may have changed). Its README.md stays as
    # first logged; the description and tags carry the current card.
    if mv is not None:
        for key, value in version_tags.items():
            client.set_model_version_tag(cfg.model_name, str(mv.version), key, value)
        return mv, True
    serving = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")
    mv = log_and_register(
        model_dir,
        cfg.model_name,
        version_tags,
        serving_defaults={name: getattr(cfg, name) for name in serving},
        example_prompt=cfg.example_prompt,
        pip_requirements=cfg.pip_requirements,
        bundle_code=cfg.bundle_code,
        readme=card.markdown(),
    )
    return mv, False


def registration_markdown(cfg: RegisterConfig, stats: Mapping[str, Any]) -> str:
    """The Prefect UI's summary of a registration: which version, the metric, where the champion is."""
    metric, previous = stats.get(cfg.champion_metric), stats.get("previous_champion_value")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    link = stats.get("run_link") or mlflow_run_link(stats["tracking_uri"], stats["run_id"])  # older stats
    return "\n".join(
        [
            f"# Registered {md.code(stats['model_uri'])}"
            + (" (existing version)" if stats["reused_version"] else ""),
            "",
            "| | |",
            "|---|---|",
            f"| MLflow run | {link} |",
            f"| tracking URI | {md.code(stats['tracking_uri'])} |",
            f"| {cfg.champion_metric} | {fmt(metric)} |",
            f"| champion before | {md.cell(stats['previous_champion'])} ({fmt(previous)}) |",
            f"| `@{cfg.champion_alias}` now | version {stats['champion_version']} "
            f"({'moved' if stats['champion_moved'] else 'unchanged'}) |",
            "",
            f"Load it: `mlflow.pyfunc.load_model('models:/{cfg.model_name}@{cfg.champion_alias}')`",
        ]
    )


# -- the Prefect task -----------------------------------------------------------------------------------


@task(
    name="register",
    **artifact_cache("register", CODE_VERSION),
    retries=2,
    retry_delay_seconds=[30, 120],
    retry_condition_fn=retry_if(is_connection_error),  # the tracking store was unreachable
)
def register(
    cfg: RegisterConfig,
    model: Artifact,
    evaluation: Artifact,
    reports: dict[str, Artifact | Path],
    run_id: str,
    root: Path,
) -> Artifact:
    """Log the run, register the model, maybe crown it; publish the outcome to the Prefect UI."""
    result = run_register(cfg, model, evaluation, reports, run_id, root)
    create_markdown_artifact(
        key="register", markdown=registration_markdown(cfg, result.stats), description="Model registration"
    )
    return result
