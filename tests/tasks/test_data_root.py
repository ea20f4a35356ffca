"""`data_root` as a folder or an fsspec URL: what is accepted, and the errors that name the fix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from flows.config import load_config
from tasks.storage.data_root import DataRoot
from tinyllama_model.errors import ConfigError


def test_a_folder_is_an_absolute_local_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = DataRoot.parse("data/run")
    assert (
        root.is_local
        and root.url == str(tmp_path / "data" / "run")
        and root.local == tmp_path / "data" / "run"
    )
    assert DataRoot.parse(f"file://{tmp_path}/x") == DataRoot(str(tmp_path / "x"), "file")


def test_an_object_store_url_keeps_its_scheme_and_gets_a_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "cache"))
    root = DataRoot.parse("s3://bucket/some/prefix/")
    assert (root.url, root.protocol, root.is_local) == ("s3://bucket/some/prefix", "s3", False)
    assert root.local.parent == tmp_path / "cache" / "roots"
    assert root.local != DataRoot.parse("s3://bucket/other").local  # one cache per root
    assert root.key("train", "fp") == "bucket/some/prefix/train/fp"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("foo://bucket/x", "unknown storage scheme 'foo'"),
        ("s3:/bucket/x", "write s3://bucket/x"),  # what a URL becomes after Path(): never a folder 's3:'
        ("s3://", "names no bucket"),
        ("https://example.org/data", "read-only"),
        ("", "data_root is empty"),
    ],
)
def test_a_root_that_cannot_work_is_refused_with_the_fix(value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        DataRoot.parse(value)


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="needs gcsfs to be absent")
def test_a_missing_backend_names_the_extra_to_install() -> None:
    with pytest.raises(
        ConfigError, match=r"pip install 'tinyllama-pipeline\[gcs\]' \(or pip install gcsfs\)"
    ):
        DataRoot.parse("gs://bucket/prefix")


def test_the_config_refuses_a_root_at_load_time() -> None:
    assert load_config(None, ["data_root=s3://bucket/x"]).data_root == "s3://bucket/x"
    with pytest.raises(ConfigError, match="unknown storage scheme 'foo'"):
        load_config(None, ["data_root=foo://bucket/x"])


def test_an_object_store_root_says_where_mlflow_goes_without_a_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tasks.tracking.mlflow_store import default_tracking_uri

    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="tasks.tracking.mlflow_store"):
        uri = default_tracking_uri(f"s3://bucket-{tmp_path.name}/x")
    assert uri.startswith(f"sqlite:///{tmp_path / 'cache'}") and uri.endswith("/mlflow/mlflow.db")
    assert "MLFLOW_TRACKING_URI" in caplog.text and "on this machine only" in caplog.text
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"  # as before
