"""Sweeping an object-store root: superseded and interrupted uploads go once old, the current one never.

Ages come from the store's own object times (moto's S3 server on loopback) measured against a clock the
test passes in, so "a day later" needs no sleeping. The rule that a young manifest protects the upload it
replaced needs objects of different ages, made on fsspec's memory filesystem by setting their times.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.storage.artifacts import MANIFEST, load_artifact, publish
from tasks.storage.data_root import DataRoot
from tasks.storage.store_sweep import sweep_uploads
from tests.moto_s3 import use_memory, use_s3

GRACE = timedelta(hours=24)
LATER = GRACE + timedelta(hours=1)


@pytest.fixture
def root(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    return use_s3(monkeypatch, endpoint, tmp_path / "cache")


def _build(text: str):
    def build(out: Path) -> None:
        (out / "a.txt").write_text(text)
        (out / "deep").mkdir()
        (out / "deep" / "b.txt").write_text(text)

    return build


def _uploads(root: str, phase: str, fp: str) -> set[str]:
    data_root = DataRoot.parse(root)
    data_root.fs.invalidate_cache()
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in data_root.fs.ls(data_root.key(phase, fp), detail=False)}


def test_superseded_and_interrupted_uploads_go_once_older_than_the_grace_period(root: str) -> None:
    first = publish(root, "phase", "fp", _build("one"))
    current = publish(root, "phase", "fp", _build("two"), reuse=False)  # supersedes the first upload
    data_root = DataRoot.parse(root)
    data_root.fs.pipe_file(data_root.key("phase", "fq", "feedfacecafe", "a.txt"), b"killed mid-upload")
    data_root.fs.pipe_file(data_root.key("phase", "fp", "not-ours", "x"), b"some other tool's")
    work = data_root.key("train", ".work-fp", "checkpoints", "step-00000010.pt")
    data_root.fs.pipe_file(work, b"a retry resumes from this")
    now = datetime.now(UTC)

    assert sweep_uploads(root, GRACE, now=now) == []  # everything is younger than a day
    assert sweep_uploads(root, GRACE, now=now + LATER, dry_run=True) == [
        data_root.url_of("phase", "fp", first.upload),
        data_root.url_of("phase", "fq", "feedfacecafe"),
    ]
    assert _uploads(root, "phase", "fp") == {first.upload, current.upload, "not-ours", MANIFEST}
    removed = sweep_uploads(root, GRACE, now=now + LATER)
    assert len(removed) == 2
    assert _uploads(root, "phase", "fp") == {current.upload, "not-ours", MANIFEST}
    assert not data_root.fs.exists(data_root.key("phase", "fq"))
    assert data_root.fs.exists(work)
    assert sweep_uploads(root, GRACE, now=now + 100 * LATER) == []  # the current upload, at any age
    fetched = load_artifact(root, "phase", "fp")
    assert fetched is not None and fetched.upload == current.upload


def test_a_fingerprint_with_an_unreadable_manifest_is_left_alone(root: str) -> None:
    publish(root, "phase", "fp", _build("one"))
    publish(root, "phase", "fp", _build("two"), reuse=False)
    data_root = DataRoot.parse(root)
    data_root.write_bytes("phase", "fp", MANIFEST, data=b'{"phase": "phase", "fingerprint": "../x"}')
    assert sweep_uploads(root, GRACE, now=datetime.now(UTC) + LATER) == []
    assert len(_uploads(root, "phase", "fp")) == 3


def test_a_young_manifest_keeps_the_upload_it_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = use_memory(monkeypatch, tmp_path / "cache")
    first = publish(root, "phase", "fp", _build("one"))
    current = publish(root, "phase", "fp", _build("two"), reuse=False)
    data_root = DataRoot.parse(root)
    now = datetime.now(UTC)
    store = data_root.fs.store  # the memory filesystem's objects: give the first upload its age
    for path, obj in store.items():
        if f"/{first.upload}/" in path:
            obj.created = now - LATER
    assert sweep_uploads(root, GRACE, now=now) == []  # a reader of the old manifest may still be at it
    assert sweep_uploads(root, GRACE, now=now + LATER) == [data_root.url_of("phase", "fp", first.upload)]
    assert _uploads(root, "phase", "fp") == {current.upload, MANIFEST}
    data_root.remove_tree()


def test_the_cli_sweeps_with_the_configured_grace_period(root: str) -> None:
    first = publish(root, "phase", "fp", _build("one"))
    publish(root, "phase", "fp", _build("two"), reuse=False)
    args = ["sweep", "--set", f"data_root={root}", "--dry-run"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"data_root": root, "dry_run": True, "uploads": []}  # not a day old
    out = CliRunner().invoke(
        app, ["sweep", "--set", f"data_root={root}", "--set", "upload_grace_hours=0.00001"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["uploads"] == [DataRoot.parse(root).url_of("phase", "fp", first.upload)]
    out = CliRunner().invoke(app, ["sweep", "--set", "upload_grace_hours=0"])
    assert out.exit_code == 2 and "upload_grace_hours" in out.output
