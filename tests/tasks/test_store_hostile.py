"""A store others can write: manifests and listings that name paths outside their folder are refused.

The attacker here writes the store directly (objects and a manifest with matching hashes), on fsspec's
memory filesystem and on moto's S3 server on loopback. Every local folder lives a few levels below
`tmp_path`, so a name that climbs out would still land inside `tmp_path`, where the test looks for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tasks.storage.artifacts import (
    MANIFEST,
    Artifact,
    ArtifactError,
    load_artifact,
    publish,
    read_manifest,
    verified_model_dir,
)
from tasks.storage.data_root import DataRoot
from tasks.storage.store_sync import WorkMirror
from tests.moto_s3 import use_memory, use_s3
from tinyllama_model.training.run_layout import CHECKPOINT_DIR

UPLOAD = "0123456789ab"
DEEP = ("a", "b", "c", "d", "e", "f", "g")  # deeper than any `..` chain below climbs


@pytest.fixture(params=["memory", "s3"])
def root(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    cache = tmp_path.joinpath(*DEEP, "cache")
    if request.param == "s3":
        yield use_s3(monkeypatch, request.getfixturevalue("endpoint"), cache)
        return
    url = use_memory(monkeypatch, cache)
    yield url
    DataRoot.parse(url).remove_tree()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _plant(root: str, phase: str, fp: str, files: dict[str, bytes], **manifest: object) -> None:
    """What an attacker with write access does: objects under an upload prefix, then their manifest."""
    data_root = DataRoot.parse(root)
    for name, data in files.items():
        data_root.fs.pipe_file(data_root.key(phase, fp, UPLOAD, name), data)
    doc = {"phase": phase, "fingerprint": fp, "path": "x", "upload": UPLOAD, "files": {}, **manifest}
    doc["files"] = doc["files"] or {name: _sha(data) for name, data in files.items()}
    data_root.fs.pipe_file(data_root.key(phase, fp, MANIFEST), json.dumps(doc).encode())


def _escaped(tmp_path: Path, name: str) -> list[Path]:
    return [p for p in tmp_path.rglob(name) if p.is_file()]


def test_a_manifest_naming_paths_outside_the_cache_writes_nothing_and_is_not_an_artifact(
    root: str, tmp_path: Path
) -> None:
    absolute = tmp_path / "OUTSIDE1" / "pwned.txt"
    _plant(
        root,
        "phase",
        "fp",
        {"a.txt": b"fine", str(absolute): b"abs", "../../../../../../OUTSIDE2/pwned.txt": b"up"},
    )
    assert load_artifact(root, "phase", "fp") is None
    refused = r"files: manifest file name '/.*/OUTSIDE1/pwned.txt' is not a relative POSIX name"
    with pytest.raises(ArtifactError, match=refused):
        read_manifest(root, "phase", "fp")
    assert not absolute.exists() and _escaped(tmp_path, "pwned.txt") == []


def test_a_manifest_for_another_place_or_upload_is_refused(root: str) -> None:
    _plant(root, "phase", "fp", {"a.txt": b"x"}, fingerprint="other")
    with pytest.raises(ArtifactError, match=r"describes phase/other .* not phase/fp"):
        read_manifest(root, "phase", "fp")
    _plant(root, "phase", "fp", {"a.txt": b"x"}, upload="")  # a local manifest in a store
    with pytest.raises(ArtifactError, match=r"not phase/fp with an upload"):
        read_manifest(root, "phase", "fp")
    _plant(root, "phase", "fp", {"a.txt": b"x"}, upload="../../phase/fq/0123456789ab")
    with pytest.raises(ArtifactError, match=r"upload: .* is not 12 hex digits"):
        read_manifest(root, "phase", "fp")
    assert load_artifact(root, "phase", "fp") is None


def test_shards_must_name_shard_files_of_the_manifest(root: str) -> None:
    shard = "documents-00000.parquet"
    _plant(root, "phase", "fp", {shard: b"x"}, shards={"documents": ["../documents-00000.parquet"]})
    with pytest.raises(ArtifactError, match=r"shards\['documents'\]"):
        read_manifest(root, "phase", "fp")
    _plant(root, "phase", "fp", {"a.txt": b"x"}, shards={"a": ["a.txt"]})
    with pytest.raises(ArtifactError, match=r"not the a shard files"):
        read_manifest(root, "phase", "fp")
    _plant(root, "phase", "fp", {shard: b"x"}, shards={"documents": [shard]})
    art = load_artifact(root, "phase", "fp")
    assert art is not None and art.shard_paths("documents") == [art.dir / shard]


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "", ".", "a\\..\\x", "..\\x", "a\x00b"],
)
def test_only_relative_posix_names_pass(name: str, tmp_path: Path) -> None:
    from tasks.storage.safe_names import UnsafeName, checked_name, inside  # here: the module is new

    with pytest.raises(UnsafeName):
        checked_name(name)
    assert checked_name("deep/b.bin") == "deep/b.bin"
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UnsafeName, match=r"outside"):
        inside(tmp_path, "link/x")
    assert inside(tmp_path, "deep/b.bin") == tmp_path.resolve() / "deep" / "b.bin"


def test_a_model_folder_whose_manifest_names_files_outside_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    holder = tmp_path / "art"
    (holder / "model").mkdir(parents=True)
    doc = {"phase": "train", "fingerprint": "fp", "path": "x", "files": {"model/../../secret.txt": ""}}
    doc["files"]["model/../../secret.txt"] = _sha(secret.read_bytes())
    (holder / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"is not a valid manifest .*not a relative POSIX name"):
        verified_model_dir(holder / "model")


def test_a_published_artifact_still_round_trips(
    root: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def build(out: Path) -> None:
        (out / "deep").mkdir()
        (out / "deep" / "b.bin").write_bytes(b"b")
        (out / "documents-00000.parquet").write_bytes(b"d")

    art = publish(root, "phase", "fp", build)
    assert art.shards == {"documents": ["documents-00000.parquet"]}
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path / "elsewhere"))
    fetched = load_artifact(root, "phase", "fp")
    assert fetched is not None and fetched.file("deep/b.bin").read_bytes() == b"b"
    assert Artifact.model_validate_json((fetched.dir / MANIFEST).read_text()).upload == art.upload


def test_a_mirror_listing_with_names_that_climb_out_fetches_only_the_mirrors_own_names(
    root: str, tmp_path: Path
) -> None:
    data_root = DataRoot.parse(root)
    mirror = (data_root, "train", "fp")
    good = tmp_path / "step.pt"
    torch.save({"step": 10}, good)
    data_root.fs.put_file(str(good), data_root.key("train", ".work-fp", CHECKPOINT_DIR, "step-00000010.pt"))
    for key in (
        "best/../../../../ESCAPED/evil.txt",
        "checkpoints/../../../../ESCAPED/step-00000099.pt",
        "checkpoints/step-00000077.pt/../../../../ESCAPED/evil.txt",
        "metrics.jsonl/../../../../ESCAPED/evil.txt",
    ):
        data_root.fs.pipe_file(data_root.key("train", ".work-fp", key), b"evil")
    work = tmp_path.joinpath(*DEEP, "work")
    assert WorkMirror(*mirror, work).pull() == 10
    assert torch.load(work / CHECKPOINT_DIR / "step-00000010.pt")["step"] == 10
    assert _escaped(tmp_path, "evil.txt") == [] and _escaped(tmp_path, "step-00000099.pt") == []
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == [
        CHECKPOINT_DIR,
        f"{CHECKPOINT_DIR}/step-00000010.pt",
    ]


def test_a_local_root_manifest_naming_a_file_outside_its_folder_is_not_an_artifact(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    folder = tmp_path / "root" / "phase" / "fp"
    folder.mkdir(parents=True)
    doc = {"phase": "phase", "fingerprint": "fp", "path": "x", "files": {"../../../secret.txt": ""}}
    doc["files"]["../../../secret.txt"] = _sha(secret.read_bytes())
    (folder / MANIFEST).write_text(json.dumps(doc))
    assert load_artifact(tmp_path / "root", "phase", "fp") is None
    (folder / "a.txt").symlink_to(secret)  # a name that passes, pointing outside
    doc["files"] = {"a.txt": _sha(secret.read_bytes())}
    (folder / MANIFEST).write_text(json.dumps(doc))
    assert load_artifact(tmp_path / "root", "phase", "fp") is None
    doc["upload"] = "0123456789ab"  # an object-store manifest in a local folder
    (folder / "a.txt").unlink()
    (folder / "a.txt").write_text("outside")
    (folder / MANIFEST).write_text(json.dumps(doc))
    assert load_artifact(tmp_path / "root", "phase", "fp") is None
    del doc["upload"]
    (folder / MANIFEST).write_text(json.dumps(doc))
    found = load_artifact(tmp_path / "root", "phase", "fp")
    assert found is not None and found.file("a.txt").read_text() == "outside"  # the honest one is fine
