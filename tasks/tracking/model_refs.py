"""Model references: from `models:/tinyllama@champion` (or a run, or a folder) to a local model directory.

A model directory holds the three files every consumer rebuilds the model from: `config.json`,
`model.safetensors` and `tokenizer.model`. `resolve_model_dir` accepts a model directory, a train
artifact (which holds one under `model/`) or an MLflow URI (`models:/name@alias`, `models:/name/3`,
`runs:/<run_id>/model`), and downloads what a URI names. `downloaded_model_dir` is the same for a caller
that needs the files only while it loads them (the CLI): the download is deleted when its block ends,
so no `tinyllama-model-*` folder piles up in the temporary directory, whether loading worked or not.

The `tinyllama` CLI imports this module to load a registered model, so it needs MLflow but never Prefect
or the register task (`tests/tasks/test_model_refs.py` checks that).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from tasks.redact import redact_url
from tasks.tracking.mlflow_store import resolve_store, sqlite_path

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.model")
DOWNLOAD_PREFIX = "tinyllama-model-"  # temporary folders that hold a downloaded model


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


def is_uri(ref: str | Path) -> bool:
    """Whether `ref` names a model in MLflow (or any URI) rather than a local folder."""
    text = str(ref)
    return "://" in text or text.startswith(("models:/", "runs:/"))


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
    downloaded into `dst` (a new temporary folder when omitted: the caller owns it once this returns,
    and it is removed here when the download fails).
    """
    if not is_uri(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist; give a model directory or an MLflow URI such as "
                "models:/tinyllama@champion"
            )
        return find_model_dir(path)
    if tracking_uri or root is not None:
        resolve_store(tracking_uri, root).activate()
    _require_existing_store()
    if dst is not None:
        return _download(str(ref), Path(dst))
    folder = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX))
    try:
        return _download(str(ref), folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@contextmanager
def downloaded_model_dir(
    ref: str | Path, *, tracking_uri: str | None = None, root: str | Path | None = None
) -> Iterator[Path]:
    """`resolve_model_dir(ref)` for the length of a `with` block; a download is deleted when it ends.

    For loading: a loaded model and tokenizer no longer need their files. A local directory is used
    where it is and left alone.
    """
    if not is_uri(ref):
        yield resolve_model_dir(ref)
        return
    with tempfile.TemporaryDirectory(prefix=DOWNLOAD_PREFIX) as folder:
        yield resolve_model_dir(ref, tracking_uri=tracking_uri, root=root, dst=folder)


def _require_existing_store() -> None:
    """Looking a model up never creates a store: MLflow would leave an empty SQLite file behind (by
    default `mlflow.db` in the working directory) and then report the model as not found in it."""
    uri = mlflow.get_tracking_uri()
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ValueError(
            f"there is no MLflow store at {uri} ({path} does not exist): set MLFLOW_TRACKING_URI to the "
            "store that holds the model, e.g. sqlite:///.tinyllama/demo/mlflow/mlflow.db after `make demo`"
        )


def _download(uri: str, dst: Path) -> Path:
    """The model directory inside what `uri` downloads to; errors show URIs without credentials."""
    dst.mkdir(parents=True, exist_ok=True)
    shown = redact_url(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as e:
        store = redact_url(mlflow.get_tracking_uri())
        registry = redact_url(mlflow.get_registry_uri())
        where = store if registry == store else f"{store} (registry {registry})"
        raise ValueError(
            f"cannot resolve {shown} in the MLflow store at {where}: {redact_url(e.message)}. Check the "
            "model name, version or alias, and that MLFLOW_TRACKING_URI names the store that holds it"
        ) from e
    for config in sorted(local.rglob(MODEL_FILES[0])):
        if all((config.parent / f).is_file() for f in MODEL_FILES):
            return config.parent
    raise ModelDirError(f"{shown} was downloaded to {local} but holds no directory with {list(MODEL_FILES)}")
