"""Model references: from `models:/tinyllama@champion` (or a run, or a folder) to a local model directory.

A model directory holds the three files every consumer rebuilds the model from: `config.json`,
`model.safetensors` and `tokenizer.model`. `resolve_model_dir` accepts a model directory, a train
artifact (which holds one under `model/`) or an MLflow URI (`models:/name@alias`, `models:/name/3`,
`runs:/<run_id>/model`), and downloads what a URI names.

The `tinyllama` CLI imports this module to load a registered model, so it needs MLflow but never Prefect
or the register task (`tests/tasks/test_model_refs.py` checks that).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from tasks.mlflow_store import resolve_store

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.model")


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
