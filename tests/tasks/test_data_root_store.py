"""Artifacts on an S3 data root, against moto's S3 server on loopback (one server for the module).

Each test gets its own bucket and its own local cache, so "another machine" is a second cache folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.storage.artifacts import (
    MANIFEST,
    ArtifactError,
    load_artifact,
    materialize,
    publish,
    read_manifest,
)
from tasks.storage.data_root import DataRoot
from tasks.storage.store_sync import WorkMirror
from tests.moto_s3 import use_s3
from tinyllama_model.training.run_layout import BEST_DIR, CHECKPOINT_DIR, METRICS_FILE


@pytest.fixture
def root(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    return use_s3(monkeypatch, endpoint, tmp_path / "cache")


def _other_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "other-cache"))


def _build(out: Path) -> dict:
    (out / "a.txt").write_text("alpha")
    (out / "deep").mkdir()
    (out / "deep" / "b.bin").write_bytes(bytes(range(256)) * 40)
    return {"rows": 2}


def _objects(root: str) -> list[str]:
    data_root = DataRoot.parse(root)
    data_root.fs.invalidate_cache()
    prefix = data_root.key()
    return sorted(p[len(prefix) + 1 :] for p in data_root.fs.find(prefix))


def test_publish_uploads_under_its_own_prefix_and_commits_with_the_manifest(
    root: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    art = publish(root, "phase", "fp", _build)
    assert art.root == root and art.upload and art.file("a.txt").read_text() == "alpha"  # local copy
    assert _objects(root) == [
        f"phase/fp/{art.upload}/a.txt",
        f"phase/fp/{art.upload}/deep/b.bin",
        f"phase/fp/{MANIFEST}",
    ]
    assert not (Path.cwd() / "s3:").exists()

    _other_machine(monkeypatch, tmp_path)
    fetched = load_artifact(root, "phase", "fp")
    assert fetched is not None and fetched.dir != art.dir
    assert (fetched.files, fetched.stats, fetched.upload) == (art.files, art.stats, art.upload)
    assert fetched.file("deep/b.bin").read_bytes() == art.file("deep/b.bin").read_bytes()
    calls: list[int] = []
    again = publish(root, "phase", "fp", lambda out: calls.append(1) or _build(out))
    assert not calls and again.upload == art.upload  # published: reused, never uploaded twice


def test_an_upload_without_its_manifest_is_invisible(root: str) -> None:
    data_root = DataRoot.parse(root)
    data_root.fs.pipe_file(data_root.key("phase", "fp", "deadbeef", "a.txt"), b"half an upload")
    assert read_manifest(root, "phase", "fp") is None
    assert load_artifact(root, "phase", "fp") is None
    art = publish(root, "phase", "fp", _build)
    assert art.file("a.txt").read_text() == "alpha"


def test_an_object_changed_in_the_store_is_refused_on_download_and_rebuilt_by_publish(
    root: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    art = publish(root, "phase", "fp", _build)
    data_root = DataRoot.parse(root)
    data_root.fs.pipe_file(data_root.key("phase", "fp", art.upload, "a.txt"), b"alphA")
    _other_machine(monkeypatch, tmp_path)
    assert load_artifact(root, "phase", "fp") is None
    with pytest.raises(ValueError, match=r"does not match its manifest's SHA-256"):
        materialize(art)
    rebuilt = publish(root, "phase", "fp", _build)
    assert rebuilt.upload != art.upload and rebuilt.file("a.txt").read_text() == "alpha"
    assert materialize(art).upload == rebuilt.upload  # an old handle gets what the store now holds


def test_a_damaged_local_copy_is_fetched_again(root: str) -> None:
    art = publish(root, "phase", "fp", _build)
    art.file("a.txt").write_text("local damage")
    assert materialize(art).file("a.txt").read_text() == "alpha"
    shutil.rmtree(art.dir)
    assert materialize(art).file("a.txt").read_text() == "alpha"


def test_an_unpublished_artifact_handed_over_is_a_clear_error(
    root: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    art = publish(root, "phase", "fp", _build)
    DataRoot.parse(root).remove_tree("phase", "fp")
    _other_machine(monkeypatch, tmp_path)
    with pytest.raises(
        ArtifactError, match=r"has no manifest.json: the phase artifact is not \(or no longer\)"
    ):
        materialize(art)


def test_root_identity_and_small_files_live_in_the_store(root: str) -> None:
    data_root = DataRoot.parse(root)
    first = data_root.identity()
    assert first == data_root.identity() and data_root.read_bytes(".root-id") == first.encode()
    data_root.write_bytes("collect", "latest-x.json", data=json.dumps({"fingerprint": "f"}).encode())
    assert json.loads(data_root.read_bytes("collect", "latest-x.json") or b"") == {"fingerprint": "f"}
    assert data_root.read_bytes("collect", "absent.json") is None


def _save(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": value}, path)


def test_the_work_mirror_carries_the_last_checkpoint_to_another_machine(
    root: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    work = tmp_path / "here"
    mirror = WorkMirror(root, "train", "fp", work)
    seen: list[dict] = []
    callback = mirror.watch(seen.append)
    _save(work / CHECKPOINT_DIR / "step-00000010.pt", 10)
    (work / BEST_DIR).mkdir()
    (work / BEST_DIR / "config.json").write_text("{}")
    (work / METRICS_FILE).write_text('{"step": 10}\n')
    callback({"step": 11})
    _save(work / CHECKPOINT_DIR / "step-00000020.pt", 20)
    (work / CHECKPOINT_DIR / "step-00000010.pt").unlink()  # keep_last=1
    callback({"step": 21})
    assert seen == [{"step": 11}, {"step": 21}]
    remote = [n for n in _objects(root) if n.startswith("train/.work-fp/")]
    best = json.loads(DataRoot.parse(root).read_bytes("train", ".work-fp", "best.json") or b"")
    assert best["step"] == 10 and list(best["files"]) == ["config.json"]  # best/ was pushed at step 10 only
    assert remote == [
        "train/.work-fp/best.json",
        f"train/.work-fp/best/{best['version']}/config.json",
        "train/.work-fp/checkpoints/step-00000020.pt",
        "train/.work-fp/metrics.jsonl",
    ]

    elsewhere = tmp_path / "there"
    assert WorkMirror(root, "train", "fp", elsewhere).pull() == 20
    assert torch.load(elsewhere / CHECKPOINT_DIR / "step-00000020.pt")["step"] == 20
    assert (elsewhere / BEST_DIR / "config.json").is_file() and (elsewhere / METRICS_FILE).is_file()
    assert WorkMirror(root, "train", "fp", elsewhere).pull() is None  # already as far as the store


def test_a_local_root_mirrors_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _save(work / CHECKPOINT_DIR / "step-00000010.pt", 10)
    mirror = WorkMirror(tmp_path, "train", "fp", work)
    mirror.watch(None)({"step": 11})
    mirror.push()
    assert mirror.pull() is None and sorted(p.name for p in tmp_path.iterdir()) == ["work"]
