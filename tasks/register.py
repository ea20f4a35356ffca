"""The register phase: record the pipeline run in MLflow and register the model as a new version.

One MLflow run per pipeline run. The flow opens it with `start_pipeline_run` (every config field as a
param, the data fingerprint, git commit and Prefect flow run as tags); `run_register`, the last phase,
fills it in and closes it: per-step training metrics, the data and tokenizer reports, the loss curve
as a PNG, sample generations, the evaluation metrics, and the model as an MLflow pyfunc registered as
a new version of `tinyllama`. The alias `champion` moves to the new version only when its validation
bits per byte are strictly lower than the current champion's; bits per byte do not depend on the
vocabulary, so models with different tokenizers compete fairly.

A model that is already registered (same train-artifact fingerprint, e.g. a nightly rebuild that found
nothing new) is not logged again: the run points at the existing version instead, so the registry does
not fill with copies of one model.

`resolve_model_dir` turns `models:/tinyllama@champion`, `models:/tinyllama/3`, `runs:/<id>/model` or a
local directory into the model directory the CLI loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks.artifacts import Artifact, phase_fingerprint, publish, task_cache_key
from tasks.mlflow_store import Store, ensure_experiment, resolve_store
from tasks.retries import retry_if

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CODE_VERSION = "1"

# MLflow's own limits (mlflow.utils.validation): entities per log_batch call, length of a param value.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE_CHARS = 6000

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.model")
MODEL_ARTIFACT_NAME = "model"  # the pyfunc's name inside the run: runs:/<run_id>/model
MODEL_FINGERPRINT_TAG = "train_fingerprint"
REGISTRATION_FILE = "registration.json"
TRAIN_METRICS_PREFIX = "train/"


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


# -- the pipeline run -----------------------------------------------------------------------------------


def flatten_params(params: Mapping[str, Any] | BaseModel, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.lr": "0.001", ...}; lists as JSON; values cut to MLflow's length limit."""
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
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_PARAM_VALUE_CHARS:
            text = text[: MAX_PARAM_VALUE_CHARS - 15] + "...[truncated]"
        flat[name] = text
    return flat


def start_pipeline_run(
    cfg: RegisterConfig,
    root: str | Path,
    params: Mapping[str, Any] | BaseModel,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> str:
    """Open the pipeline's MLflow run (status RUNNING) and return its id; `run_register` closes it.

    Tags: the caller's (e.g. `data_fingerprint`), plus the git commit of this code and the Prefect flow
    run (id, name, UI link) when there is one; the caller's values win.
    """
    store = _store(cfg, root)
    client = store.client()
    experiment_id = ensure_experiment(client, cfg.experiment_name, store.artifact_location)
    all_tags = {**_source_tags(), **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    run_name = run_name or all_tags.get("prefect.flow_run_name")
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    items = [Param(k, v) for k, v in flatten_params(params).items()]
    for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=chunk)
    return run.info.run_id


def finish_pipeline_run(cfg: RegisterConfig, root: str | Path, run_id: str, failed: bool = False) -> None:
    """Close a run the pipeline could not finish (call it when a phase before `register` fails)."""
    _store(cfg, root).client().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def log_metrics_batched(
    run_id: str, rows: Iterable[Mapping[str, Any]], client: MlflowClient | None = None, prefix: str = ""
) -> int:
    """Log per-step metric rows ({"step": 10, "train_loss": 3.2, ...}) in `log_batch` calls of <= 1000.

    Non-numeric values are skipped and key characters MLflow refuses become "_"; `prefix` namespaces
    the keys ("train/" groups them in the MLflow UI). A row without "step" takes its position in `rows`.
    Returns the number of metric values logged.
    """
    client = client or MlflowClient()
    now = int(time.time() * 1000)
    metrics: list[Metric] = []
    for i, row in enumerate(rows):
        step = int(row.get("step", i))
        for key, value in row.items():
            if key != "step" and _is_number(value):
                metrics.append(Metric(_metric_key(prefix + key), float(value), now, step))
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    return len(metrics)


# -- the register phase ---------------------------------------------------------------------------------


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
    store = _store(cfg, root)
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

    with mlflow.start_run(run_id=run_id):  # closes the run: FINISHED, or FAILED on an exception
        log_run_contents(client, cfg, run_id, model, evaluation, metrics, reports)
        version_tags = {
            **{k: repr(v) for k, v in metrics.items()},
            **{f"train.{k}": repr(v) for k, v in _flat_numbers(model.stats).items()},
            MODEL_FINGERPRINT_TAG: model.fingerprint,
            "evaluation_fingerprint": evaluation.fingerprint,
        }
        mv = find_version(client, cfg.model_name, model.fingerprint)
        reused = mv is not None
        if mv is None:
            mv = _log_and_register(cfg, model_dir, version_tags)
        else:  # the same model again: refresh its figures (the evaluation may have changed), keep one copy
            for key, value in version_tags.items():
                client.set_model_version_tag(cfg.model_name, str(mv.version), key, value)
        version = int(mv.version)
        decision = promote_if_better(client, cfg, version, metrics.get(cfg.champion_metric))
        model_uri = f"models:/{cfg.model_name}/{version}"
        client.set_tag(run_id, "model_uri", model_uri)
        client.set_tag(run_id, "champion_moved", str(decision["champion_moved"]))

    stats = {
        "run_id": run_id,
        "tracking_uri": store.tracking_uri,
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


def log_run_contents(
    client: MlflowClient,
    cfg: RegisterConfig,
    run_id: str,
    model: Artifact,
    evaluation: Artifact,
    metrics: Mapping[str, float],
    reports: Mapping[str, Artifact | str | Path],
) -> None:
    """Everything but the model: step metrics, loss curve, evaluation metrics and samples, reports."""
    steps_file = model.file("metrics.jsonl")
    steps = read_jsonl(steps_file) if steps_file.is_file() else []
    if cfg.log_step_metrics and steps:
        # Under "train/": the trainer's periodic val_bpb is an estimate on a sample of windows; the plain
        # val_* names belong to the evaluate phase's full held-out figures logged below.
        log_metrics_batched(run_id, steps, client, prefix=TRAIN_METRICS_PREFIX)
    if steps:
        client.log_artifact(run_id, str(steps_file), "training")
        if (figure := loss_curve_figure(steps)) is not None:
            client.log_figure(run_id, figure, "training/loss_curve.png")

    final_step = max((int(r["step"]) for r in steps if _is_number(r.get("step"))), default=0)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, final_step) for k, v in metrics.items()])
    _log_files(
        client, run_id, [evaluation.file("metrics.json"), evaluation.file("samples.json")], "evaluation"
    )
    if samples := read_samples(evaluation):
        client.log_text(run_id, samples_markdown(samples), "evaluation/samples.md")

    for name, report in reports.items():
        _log_report(client, run_id, name, report)


def _log_and_register(cfg: RegisterConfig, model_dir: Path, tags: dict[str, str]) -> ModelVersion:
    """Log the pyfunc into the active run and register it; MLflow loads it once to check the example."""
    from tinyllama_model import pyfunc

    defaults = {
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        "repetition_penalty": cfg.repetition_penalty,
    }
    with tempfile.TemporaryDirectory(prefix="tinyllama-register-") as tmp:
        staged = _stage(model_dir, Path(tmp) / "model")
        code_paths = [str(_stage_package(Path(tmp) / "code"))] if cfg.bundle_code else None
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=str(pyfunc.write_model_code(tmp)),
            artifacts={pyfunc.MODEL_DIR_ARTIFACT: str(staged)},
            signature=pyfunc.signature(**defaults),
            input_example=([cfg.example_prompt], {"max_new_tokens": 8}),
            pip_requirements=cfg.pip_requirements or default_requirements(),
            code_paths=code_paths,
        )
    return mlflow.register_model(info.model_uri, cfg.model_name, tags=tags)


def promote_if_better(
    client: MlflowClient, cfg: RegisterConfig, version: int, value: float | None
) -> dict[str, Any]:
    """Point the champion alias at `version` when its metric is strictly lower than the champion's.

    A version without the metric never becomes champion; a champion without it (set by hand) loses to
    any measured version. Ties keep the current champion.
    """
    champion = _version_by_alias(client, cfg.model_name, cfg.champion_alias)
    previous = int(champion.version) if champion is not None else None
    previous_value = _version_metric(client, champion, cfg.champion_metric) if champion is not None else None
    measured = value is not None and math.isfinite(value)
    moved = measured and previous != version and (previous_value is None or value < previous_value)
    if moved:
        client.set_registered_model_alias(cfg.model_name, cfg.champion_alias, str(version))
    return {
        "champion_moved": moved,
        "champion_version": version if moved else previous,
        "previous_champion": previous,
        "previous_champion_value": previous_value,
    }


def find_version(client: MlflowClient, name: str, train_fingerprint: str) -> ModelVersion | None:
    """The registered version built from this train artifact, if one exists and is ready."""
    try:
        query = f"name = '{name}' and tags.{MODEL_FINGERPRINT_TAG} = '{train_fingerprint}'"
        found = client.search_model_versions(query)
    except MlflowException:
        return None  # no such registered model yet
    ready = [mv for mv in found if mv.status == "READY"]
    return max(ready, key=lambda mv: int(mv.version)) if ready else None


def _version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _version_metric(client: MlflowClient, mv: ModelVersion, key: str) -> float | None:
    """The metric from the version's tags, else from the run that logged it."""
    raw = mv.tags.get(key)
    if raw is None and mv.run_id:
        raw = client.get_run(mv.run_id).data.metrics.get(key)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


# -- reading the upstream artifacts ---------------------------------------------------------------------


class ModelDirError(ValueError):
    """A train artifact without a complete model directory."""


def find_model_dir(path: Path) -> Path:
    """The model directory of a train artifact (`<artifact>/model/`) or the directory itself."""
    for candidate in (path / "model", path):
        if (candidate / MODEL_FILES[0]).is_file():
            missing = [f for f in MODEL_FILES if not (candidate / f).is_file()]
            if missing:
                raise ModelDirError(
                    f"{candidate} lacks {missing}; a registrable model directory holds {list(MODEL_FILES)} "
                    "(save with save_pretrained(dir, tokenizer_file=...))"
                )
            return candidate
    raise ModelDirError(f"no model directory in {path}: expected {path / 'model'} with {list(MODEL_FILES)}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


# Evaluation may name its figures plainly ("bpb"); in the run and on versions they are "val_bpb" etc.
_VAL_NAMES = {"loss": "val_loss", "perplexity": "val_perplexity", "ppl": "val_perplexity", "bpb": "val_bpb"}


def evaluation_metrics(evaluation: Artifact) -> dict[str, float]:
    """The numeric figures of the evaluation's metrics.json, named val_* (quality) or eval_* (counts)."""
    path = evaluation.file("metrics.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the evaluate phase before register")
    raw = _flat_numbers(json.loads(path.read_text()))
    out = {}
    for key, value in raw.items():
        name = key if key.startswith(("val_", "eval_")) else _VAL_NAMES.get(key, f"eval_{key}")
        out[_metric_key(name)] = float(value)
    return out


def read_samples(evaluation: Artifact) -> list[tuple[str, str]] | None:
    """samples.json as (prompt, generation) pairs; accepts {prompt: text} or [{prompt, generation}]."""
    path = evaluation.file("samples.json")
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, Mapping):
        return [(str(k), str(v)) for k, v in data.items()]
    pairs = []
    for item in data if isinstance(data, list) else []:
        if isinstance(item, Mapping):
            text = item.get("generation", item.get("text", item.get("output", "")))
            pairs.append((str(item.get("prompt", "")), str(text)))
    return pairs


def samples_markdown(samples: Sequence[tuple[str, str]]) -> str:
    lines = ["# Sample generations", ""]
    for prompt, text in samples:
        lines += [f"**{prompt}**", "", "```text", prompt + text, "```", ""]
    return "\n".join(lines)


def loss_curve_figure(rows: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Train/validation loss against step (val bits per byte on a second axis), and the learning rate.

    Built on `matplotlib.figure.Figure` directly (the Agg canvas), so no pyplot global state or GUI.
    """
    from matplotlib.figure import Figure

    def series(*keys: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in rows:
            value = next((r[k] for k in keys if _is_number(r.get(k))), None)
            if value is not None and _is_number(r.get("step")):
                xs.append(float(r["step"]))
                ys.append(float(value))
        return xs, ys

    train, val, bpb, lr = series("train_loss", "loss"), series("val_loss"), series("val_bpb"), series("lr")
    if not (train[0] or val[0] or bpb[0]):
        return None
    fig = Figure(figsize=(8, 6.5 if lr[0] else 4.5), layout="constrained")
    if lr[0]:
        ax, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[2.5, 1])
    else:
        ax, ax_lr = fig.subplots(1, 1), None
    if train[0]:
        ax.plot(*train, label="train loss", linewidth=1, alpha=0.8)
    if val[0]:
        ax.plot(*val, "o-", label="val loss", markersize=3)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if bpb[0]:
        ax_bpb = ax.twinx()
        ax_bpb.plot(*bpb, "s--", color="tab:red", label="val bits/byte", markersize=3)
        ax_bpb.set_ylabel("bits per byte")
        ax_bpb.legend(loc="upper center")
    if ax_lr is not None:
        ax_lr.plot(*lr, color="tab:green")
        ax_lr.set_ylabel("learning rate")
        ax_lr.grid(alpha=0.3)
    (ax_lr or ax).set_xlabel("step")
    return fig


# Reports are small: JSON/Markdown/text files only (never Parquet tables or weights).
_REPORT_SUFFIXES = {".json", ".md", ".txt", ".csv"}
_REPORT_MAX_BYTES = 5 << 20


def _log_report(client: MlflowClient, run_id: str, name: str, report: Artifact | str | Path) -> None:
    """Log a report's small files under reports/<name>/ and its numeric stats as `<name>.<key>` metrics."""
    prefix = f"reports/{_metric_key(name)}"
    if isinstance(report, Artifact):
        client.log_dict(run_id, report.stats, f"{prefix}/stats.json")
        numbers = _flat_numbers(report.stats)
        now = int(time.time() * 1000)
        metrics = [Metric(_metric_key(f"{name}.{k}"), float(v), now, 0) for k, v in numbers.items()]
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=chunk)
        path = report.dir
    else:
        path = Path(report)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name != "manifest.json")
    else:
        raise FileNotFoundError(f"report {name!r}: {path} does not exist")
    _log_files(client, run_id, files, prefix)


def _log_files(client: MlflowClient, run_id: str, files: Iterable[Path], artifact_path: str) -> None:
    for f in files:
        if f.is_file() and f.suffix in _REPORT_SUFFIXES and f.stat().st_size <= _REPORT_MAX_BYTES:
            client.log_artifact(run_id, str(f), artifact_path)


# -- getting a model back -------------------------------------------------------------------------------


def resolve_model_dir(
    ref: str | Path,
    *,
    tracking_uri: str | None = None,
    root: str | Path | None = None,
    dst: str | Path | None = None,
) -> Path:
    """A local model directory (config.json, model.safetensors, tokenizer.model) for `ref`.

    `ref` is a local directory (a model dir or a train artifact) or an MLflow URI: `models:/name@alias`,
    `models:/name/3`, `runs:/<run_id>/model`, `models:/<model_id>`. URIs are resolved against
    `tracking_uri`, else MLFLOW_TRACKING_URI, else the SQLite store under `root` (when given), and
    downloaded into `dst` (a new temporary folder when omitted; the caller owns it).
    """
    text = str(ref)
    if "://" not in text and not text.startswith(("models:/", "runs:/")):
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist; give a model directory or an MLflow URI such as "
                "models:/tinyllama@champion"
            )
        return find_model_dir(path)
    if tracking_uri or root is not None:
        resolve_store(tracking_uri, root).activate()
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="tinyllama-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(dst)))
    except MlflowException as e:
        store = mlflow.get_tracking_uri()
        raise ValueError(f"cannot resolve {text} in the MLflow store at {store}: {e.message}") from e
    for config in sorted(local.rglob(MODEL_FILES[0])):
        if all((config.parent / f).is_file() for f in MODEL_FILES):
            return config.parent
    raise ModelDirError(f"{text} was downloaded to {local} but holds no directory with {list(MODEL_FILES)}")


# -- small helpers --------------------------------------------------------------------------------------


def default_requirements() -> list[str]:
    """Pins for what the pyfunc imports, from the installed versions (local tags like +cpu dropped)."""
    reqs = []
    for package in ("torch", "numpy", "sentencepiece", "safetensors"):
        try:
            reqs.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(package)
    return reqs


def _store(cfg: RegisterConfig, root: str | Path) -> Store:
    store = resolve_store(cfg.tracking_uri, root, cfg.artifact_location)
    store.activate()
    return store


def _stage(model_dir: Path, dst: Path) -> Path:
    """Only the three model files go into the pyfunc (hard links where possible: weights can be large)."""
    dst.mkdir(parents=True)
    for name in MODEL_FILES:
        try:
            (dst / name).hardlink_to(model_dir / name)
        except OSError:
            shutil.copy2(model_dir / name, dst / name)
    return dst


def _stage_package(dst: Path) -> Path:
    import tinyllama_model

    package = Path(tinyllama_model.__file__).parent
    shutil.copytree(package, dst / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst / package.name


def _source_tags() -> dict[str, str]:
    tags = {"mlflow.source.name": "tinyllama-pipeline", "mlflow.source.type": "JOB"}
    repo = Path(__file__).resolve().parents[1]
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
        tags["mlflow.source.git.commit"] = commit
        tags["git_dirty"] = str(bool(dirty))
    except (OSError, subprocess.SubprocessError):
        # No checkout (an installed wheel, a Docker image): the images record the commit at build time.
        if (commit := os.environ.get("TINYLLAMA_GIT_COMMIT", "unknown")) != "unknown":
            tags["mlflow.source.git.commit"] = commit
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flat_numbers(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flat_numbers(value, f"{prefix}{key}."))
        elif _is_number(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def _metric_key(key: str) -> str:
    """MLflow accepts letters, digits, and _ - . space / in metric names."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(key))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the Prefect task -----------------------------------------------------------------------------------


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


@task(
    name="register",
    cache_key_fn=task_cache_key("register", CODE_VERSION),
    persist_result=True,
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
    s = result.stats
    metric, previous = s.get(cfg.champion_metric), s.get("previous_champion_value")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    create_markdown_artifact(
        key="register",
        markdown="\n".join(
            [
                f"# Registered `{s['model_uri']}`" + (" (existing version)" if s["reused_version"] else ""),
                "",
                "| | |",
                "|---|---|",
                f"| MLflow run | {mlflow_run_link(s['tracking_uri'], s['run_id'])} |",
                f"| tracking URI | `{s['tracking_uri']}` |",
                f"| {cfg.champion_metric} | {fmt(metric)} |",
                f"| champion before | {s['previous_champion']} ({fmt(previous)}) |",
                f"| `@{cfg.champion_alias}` now | version {s['champion_version']} "
                f"({'moved' if s['champion_moved'] else 'unchanged'}) |",
                "",
                f"Load it: `mlflow.pyfunc.load_model('models:/{cfg.model_name}@{cfg.champion_alias}')`",
            ]
        ),
        description="Model registration",
    )
    return result
