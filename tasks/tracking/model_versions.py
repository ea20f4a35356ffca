"""Model versions in the MLflow registry: the model logged as a pyfunc and registered, and found again.

A version is the pyfunc of `tinyllama_model.pyfunc`: the three model files (weights in safetensors and
the SentencePiece model) with the model card beside them as README.md, the wrapper's code, optionally
the `tinyllama_model` package itself so the model loads where this project is not installed, and pinned
requirements. Each version carries the fingerprint of the train artifact it was built from, so a model
that is already registered is found instead of logged again.

Which version is the champion is `tasks.tracking.champion`'s business; the run it is logged into is
`tasks.tracking.mlflow_run`'s.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tasks.tracking.model_card import CARD_FILE
from tasks.tracking.model_refs import MODEL_FILES
from tinyllama_model.mixture.corpus_ngrams import CORPUS_FILE

MODEL_ARTIFACT_NAME = "model"  # the pyfunc's name inside the run: runs:/<run_id>/model
MODEL_FINGERPRINT_TAG = "train_fingerprint"


def log_and_register(
    model_dir: Path,
    name: str,
    tags: Mapping[str, str],
    *,
    serving_defaults: Mapping[str, Any],
    example_prompt: str,
    pip_requirements: list[str] | None = None,
    bundle_code: bool = True,
    readme: str | None = None,
) -> ModelVersion:
    """Log the pyfunc into the active run and register it; MLflow loads it once to check the example.

    `serving_defaults` are the generation parameters' defaults in the model's signature;
    `pip_requirements` default to `default_requirements()`; `readme` (the model card) is written as
    README.md beside the model files.
    """
    from tinyllama_model import pyfunc

    with tempfile.TemporaryDirectory(prefix="tinyllama-register-") as tmp:
        staged = _stage(model_dir, Path(tmp) / "model")
        if readme is not None:
            (staged / CARD_FILE).write_text(readme, encoding="utf-8")
        code_paths = [str(_stage_package(Path(tmp) / "code"))] if bundle_code else None
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=str(pyfunc.write_model_code(tmp)),
            artifacts={pyfunc.MODEL_DIR_ARTIFACT: str(staged)},
            signature=pyfunc.signature(**serving_defaults),
            input_example=([example_prompt], {"max_new_tokens": 8}),
            pip_requirements=pip_requirements or default_requirements(),
            code_paths=code_paths,
        )
    return mlflow.register_model(info.model_uri, name, tags=dict(tags))


def find_version(client: MlflowClient, name: str, train_fingerprint: str) -> ModelVersion | None:
    """The registered version built from this train artifact, if one exists and is ready."""
    try:
        query = f"name = '{name}' and tags.{MODEL_FINGERPRINT_TAG} = '{train_fingerprint}'"
        found = client.search_model_versions(query)
    except MlflowException:
        return None  # no such registered model yet
    ready = [mv for mv in found if mv.status == "READY"]
    return max(ready, key=lambda mv: int(mv.version)) if ready else None


def default_requirements() -> list[str]:
    """Pins for what the pyfunc imports, from the installed versions (local tags like +cpu dropped)."""
    reqs = []
    for package in ("torch", "numpy", "sentencepiece", "safetensors"):
        try:
            reqs.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(package)
    return reqs


def _stage(model_dir: Path, dst: Path) -> Path:
    """Only the model's files go into the pyfunc (hard links where possible: weights can be large): the
    three every model has, and the corpus n-grams' tokens where it has them."""
    dst.mkdir(parents=True)
    optional = [CORPUS_FILE] if (model_dir / CORPUS_FILE).is_file() else []
    for name in (*MODEL_FILES, *optional):
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
