"""Model references: local folders to model directories, and an import light enough for the CLI.

Resolving `models:/` and `runs:/` URIs against a real registry is tested in test_register.py, and through
the CLI (which must leave no download behind) in tests/flows/test_cli.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pytest

from tasks.tracking.model_refs import (
    MODEL_FILES,
    ModelDirError,
    downloaded_model_dir,
    find_model_dir,
    resolve_model_dir,
)
from tests.factories import make_model_dir
from tests.test_layering import modules_loaded_by


def test_the_cli_resolves_models_without_prefect_or_the_register_task() -> None:
    assert modules_loaded_by("tasks.tracking.model_refs, flows.cli", ("prefect", "tasks.register")) == []


def test_a_train_artifact_or_a_model_dir_resolves_to_the_model_dir(tmp_path: Path) -> None:
    artifact = tmp_path / "train-artifact"
    (artifact / "model").mkdir(parents=True)
    for name in MODEL_FILES:
        (artifact / "model" / name).write_bytes(b"x")
    assert find_model_dir(artifact) == artifact / "model"
    assert resolve_model_dir(str(artifact / "model")) == artifact / "model"


def test_an_incomplete_or_missing_model_dir_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match=r"tokenizer\.model.*tokenizer_file"):
        find_model_dir(make_model_dir(tmp_path / "model", tokenizer_file=None))
    with pytest.raises(ModelDirError, match="no model directory"):
        find_model_dir(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="MLflow URI"):
        resolve_model_dir(tmp_path / "nowhere")


def test_a_local_model_dir_is_used_in_place(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "model", tokenizer_file=None)
    (model / "tokenizer.model").write_bytes(b"x")
    with downloaded_model_dir(str(model)) as directory:
        assert directory == model
    assert model.is_dir()  # only downloads are deleted


def test_a_failed_download_leaves_no_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # a store without that model, created through the tracking store first: its set-up holds MLflow's
    # file lock, while the registry store's own set-up of a fresh file can race it (seen under load)
    mlflow.MlflowClient(store).search_experiments()
    mlflow.MlflowClient(store).search_registered_models()
    with pytest.raises(
        ValueError, match=r"cannot resolve models:/nope@champion .*not found.*MLFLOW_TRACKING_URI"
    ):
        resolve_model_dir("models:/nope@champion", tracking_uri=store)
    with (
        pytest.raises(ValueError, match="cannot resolve"),
        downloaded_model_dir("models:/nope/1", tracking_uri=store),
    ):
        pass
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_lookup_in_a_store_that_does_not_exist_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without MLFLOW_TRACKING_URI, MLflow's default store is `mlflow.db` in the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    with pytest.raises(
        ValueError, match=r"no MLflow store at sqlite:///\S*/mlflow\.db .*set MLFLOW_TRACKING_URI"
    ):
        resolve_model_dir("models:/tinyllama@champion")
    missing = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with (
        pytest.raises(ValueError, match="no MLflow store"),
        downloaded_model_dir("models:/m/1", tracking_uri=missing),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_artifact_listing_climbs_out_downloads_nothing_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket others can write holds the run's artifacts: keys with `..` or `//` must stay out of dst.

    MLflow's own download refuses or skips such keys (this guards that it keeps doing so), on an S3 artifact
    store served by moto on loopback.
    """
    import boto3

    from tests.moto_s3 import s3_server, use_s3

    with s3_server() as endpoint:
        bucket = use_s3(monkeypatch, endpoint, tmp_path / "cache").split("/")[2]
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
        client = mlflow.MlflowClient(store)
        run = client.create_run(client.create_experiment("x", artifact_location=f"s3://{bucket}/mlruns"))
        s3 = boto3.client("s3", endpoint_url=endpoint)
        base = f"mlruns/{run.info.run_id}/artifacts/model"
        for name in [*MODEL_FILES, "../../../../../../../ESCAPED/evil.txt", "/ESCAPED/evil.txt"]:
            s3.put_object(Bucket=bucket, Key=f"{base}/{name}", Body=b"x")
        dst = tmp_path.joinpath("a", "b", "c", "d", "e", "f", "g", "dst")
        model = resolve_model_dir(f"runs:/{run.info.run_id}/model", tracking_uri=store, dst=dst)
    assert model == dst / "model" and sorted(p.name for p in model.iterdir()) == sorted(MODEL_FILES)
    assert [p for p in tmp_path.rglob("evil.txt")] == [] and not Path("/ESCAPED").exists()
