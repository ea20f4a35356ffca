"""Phase outputs: fingerprints, atomic publication, manifests, and the checks that make reuse safe.

Every phase writes `<root>/<phase>/<fingerprint>/`. A fingerprint hashes the phase name, its code
version, its config section and the fingerprints of its inputs, so an unchanged input and config map to
the same directory and a changed one to a new directory. The directory is built under a temporary name
beside its final place and renamed into place only when complete, with `manifest.json` (files, their
SHA-256, stats) written last inside it: a directory without a manifest is never read as complete, and
an interrupted phase leaves only a temporary folder that the next attempt removes.

On an object-store root (`tasks.storage.data_root`) the folder is built the same way in the root's local
cache, then uploaded under an upload prefix of its own and committed by writing the manifest last
(`tasks.storage.store_sync`); readers download it into their local cache and check every hash.

A manifest is input as much as a file is (others may write the store): `Artifact` accepts only relative
file names, SHA-256 hex digests, an upload id of our own form and shards that are its own shard files, and
`read_manifest` only a manifest that describes the phase and fingerprint asked for.

Nothing is handed out unchecked: a reused folder, a cache hit and a phase's input are verified against
the manifest's SHA-256 (`verify`; hashed once per process per unchanged file, see
`tasks.storage.file_hashes`). A damaged folder is rebuilt by `publish` and reported by `load_artifact`.
One writer per fingerprint at a time: `publish` holds a file lock per work folder, and a writer that
finds the artifact already published (another writer won) reuses it: a published folder that is intact
is never removed.

This module knows nothing about Prefect; `task_cache_key` merely has the signature Prefect expects.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, field_validator, model_validator

from tasks.storage.data_root import DataRoot
from tasks.storage.file_hashes import sha256_file
from tasks.storage.safe_names import UPLOAD_ID, UnsafeName, checked_name, inside, new_upload_id
from tasks.storage.shards import shard_tables
from tasks.storage.store_sync import DownloadMismatch, download_files, upload_files
from tinyllama_model.config_fields import result_fields

MANIFEST = "manifest.json"
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a phase or fingerprint: one folder name
_SHA256 = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger(__name__)

__all__ = ["sha256_file"]  # re-exported: the hash every manifest records


class ArtifactError(ValueError):
    """A published artifact that is missing, incomplete or no longer matches its manifest."""


class Artifact(BaseModel):
    """What a phase hands to the next one: where its output is and what it holds (never the data)."""

    phase: str
    fingerprint: str
    path: str  # the folder holding the files on the machine that built or fetched them
    files: dict[str, str] = {}  # file name (relative) -> sha256
    stats: dict[str, Any] = {}
    root: str | None = None  # the data root it was published to (None: made by hand, `path` is all)
    upload: str = ""  # object-store roots: the prefix under <root>/<phase>/<fp>/ that holds the files
    shards: dict[str, list[str]] = {}  # table -> its shard files in order (`tasks.storage.shards`)

    # A manifest comes from a store others can write: its names must not reach outside its folder.
    @field_validator("phase", "fingerprint")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        if not _COMPONENT.fullmatch(value):
            raise ValueError(f"{value!r} is not a single folder name ([A-Za-z0-9][A-Za-z0-9._-]*)")
        return value

    @field_validator("upload")
    @classmethod
    def _upload_id(cls, value: str) -> str:
        if value and not UPLOAD_ID.fullmatch(value):
            raise ValueError(f"upload {value!r} is not 12 hex digits (or empty, for a local root)")
        return value

    @field_validator("files")
    @classmethod
    def _safe_files(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            checked_name(name, "manifest file name")
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"the SHA-256 of {name!r} is {digest!r}, not 64 hex digits")
        return value

    @model_validator(mode="after")
    def _shards_are_files(self) -> Artifact:
        derived = shard_tables(self.files)
        for table, names in self.shards.items():
            if names != derived.get(table):
                raise ValueError(
                    f"shards[{table!r}] = {names} is not the {table} shard files of `files` in order "
                    f"({derived.get(table, [])})"
                )
        return self

    @property
    def dir(self) -> Path:
        return Path(self.path)

    def file(self, name: str) -> Path:
        return Path(self.path) / name

    def shard_paths(self, table: str) -> list[Path]:
        """The files of one sharded table, in order; a clear error if the artifact has no such table."""
        if table not in self.shards:
            raise ArtifactError(
                f"the {self.phase} artifact {self.fingerprint} has no sharded table {table!r} (it has "
                f"{sorted(self.shards) or 'none'}); run the {self.phase} phase again with this code"
            )
        return [self.file(name) for name in self.shards[table]]


def _canonical(value: Any) -> Any:
    """Turn configs, artifacts and paths into plain JSON values with a stable form."""
    if isinstance(value, Artifact):
        return {"artifact": value.phase, "fingerprint": value.fingerprint}
    if isinstance(value, BaseModel) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return _canonical(result_fields(value))  # operational fields never change a fingerprint
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def phase_fingerprint(phase: str, code_version: str, **inputs: Any) -> str:
    """Content fingerprint of a phase run: same phase code, config and inputs -> same fingerprint."""
    payload = json.dumps(
        {"phase": phase, "code_version": code_version, "inputs": _canonical(inputs)},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def root_identity(root: str | Path) -> str:
    """The data root's random id (`DataRoot.identity`): a re-created root is a new root."""
    return DataRoot.parse(root).identity()


def task_cache_key(phase: str, code_version: str, ignore: tuple[str, ...] = ()) -> Callable[..., str]:
    """A Prefect `cache_key_fn`: the phase fingerprint of the task's parameters and the root's identity.

    The data root is part of the key (through the parameters), so a run against another root never
    reuses a result that points at files it cannot see; its `root_identity` is too, so neither does a
    run against a root that was deleted and re-created at the same path.
    """

    def key(_context: Any, parameters: dict[str, Any]) -> str:
        kept = {k: v for k, v in parameters.items() if k not in ignore}
        return f"{phase}-{phase_fingerprint(phase, code_version, **kept)}-{root_identity(parameters['root'])}"

    return key


# -- places on this machine -------------------------------------------------------------------------


def artifact_dir(root: str | Path, phase: str, fingerprint: str) -> Path:
    """The artifact's folder on this machine (for an object-store root: its copy in the local cache)."""
    return DataRoot.parse(root).local / phase / fingerprint


def scratch_dir(root: str | Path, phase: str, fingerprint: str) -> Path:
    """A stable per-fingerprint work folder that survives retries, for phases that resume."""
    path = DataRoot.parse(root).local / phase / f".work-{fingerprint}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def work_lock(root: str | Path, phase: str, key: str) -> Iterator[None]:
    """Hold the exclusive lock of one work folder (`<local root>/<phase>/.lock-<key>`), waiting for it.

    Threads and processes each open the lock file anew, so `flock` excludes both. The lock file stays:
    removing it would let a waiter and a newcomer lock two different files.
    """
    path = DataRoot.parse(root).local / phase / f".lock-{key}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another run working on %s/%s (lock %s)", phase, key, path)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- checks -----------------------------------------------------------------------------------------


def verify(artifact: Artifact) -> None:
    """Raise ArtifactError if any file of the artifact is missing or no longer matches its hash."""
    for name, digest in artifact.files.items():
        try:
            path = inside(artifact.dir, name, f"{artifact.phase} manifest entry")
        except UnsafeName as err:
            raise ArtifactError(str(err)) from err
        if not path.is_file():
            raise ArtifactError(
                f"{path} is listed in the {artifact.phase} manifest but missing; run the {artifact.phase} "
                f"phase again (delete {artifact.dir} if it keeps failing)"
            )
        if sha256_file(path) != digest:
            raise ArtifactError(
                f"{path} changed since the {artifact.phase} phase wrote it (SHA-256 differs from its "
                f"manifest); run the {artifact.phase} phase again"
            )


def read_manifest(root: str | Path, phase: str, fingerprint: str) -> Artifact | None:
    """The published manifest of this fingerprint as an Artifact (not checked), or None if unpublished."""
    data_root = DataRoot.parse(root)
    raw = data_root.read_bytes(phase, fingerprint, MANIFEST)
    if raw is None:
        return None
    where = data_root.url_of(phase, fingerprint, MANIFEST)
    found = parse_manifest(raw, where)
    upload_ok = found.upload == "" if data_root.is_local else bool(found.upload)
    if (found.phase, found.fingerprint) != (phase, fingerprint) or not upload_ok:
        raise ArtifactError(
            f"{where} describes {found.phase}/{found.fingerprint} (upload {found.upload!r}), not "
            f"{phase}/{fingerprint} with {'no upload' if data_root.is_local else 'an upload'}: a manifest "
            f"copied or forged into this place is never used; delete it and run the {phase} phase again"
        )
    local = artifact_dir(data_root, phase, fingerprint)
    return found.model_copy(update={"path": str(local), "root": data_root.url})


def parse_manifest(raw: bytes | str, where: str) -> Artifact:
    """A manifest's text as an Artifact, its names checked (`Artifact`'s validators); ArtifactError if not."""
    try:
        return Artifact.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field, why = ".".join(map(str, first["loc"])), first["msg"].removeprefix("Value error, ")
        raise ArtifactError(
            f"{where} is not a valid manifest ({err.error_count()} errors; {field}: {why}); "
            "delete it and run that phase again"
        ) from err


def still_published(artifact: Artifact) -> None:
    """Raise ArtifactError unless the artifact's published folder is still there and intact.

    The check behind a Prefect cache hit: locally every hash; on an object store, that the store's
    manifest still names the same files and upload (the download, whenever one happens, checks hashes).
    """
    if artifact.root is None or DataRoot.parse(artifact.root).is_local:
        if not (artifact.dir / MANIFEST).is_file():
            raise ArtifactError(
                f"{artifact.dir} is gone (no {MANIFEST}); the {artifact.phase} phase must run"
            )
        verify(artifact)
        return
    found = read_manifest(artifact.root, artifact.phase, artifact.fingerprint)
    if found is None or (found.files, found.upload) != (artifact.files, artifact.upload):
        where = DataRoot.parse(artifact.root).url_of(artifact.phase, artifact.fingerprint)
        raise ArtifactError(f"{where} no longer holds this {artifact.phase} artifact")


# -- reading ----------------------------------------------------------------------------------------


def materialize(artifact: Artifact) -> Artifact:
    """The artifact with its files on this machine, checked against its manifest: what a phase reads.

    A local artifact is verified where it is. An object-store artifact is fetched into the local cache
    (unless an intact copy of the store's current manifest is there already), so an Artifact handed to
    another machine (the GPU pool) is re-made there from the store.
    """
    if artifact.root is None or DataRoot.parse(artifact.root).is_local:
        verify(artifact)
        return artifact
    with work_lock(artifact.root, artifact.phase, artifact.fingerprint):
        found = read_manifest(artifact.root, artifact.phase, artifact.fingerprint)
        if found is None:
            raise ArtifactError(
                f"{DataRoot.parse(artifact.root).url_of(artifact.phase, artifact.fingerprint)} has no "
                f"{MANIFEST}: the {artifact.phase} artifact is not (or no longer) published; run that phase"
            )
        return _fetch(found)


def load_artifact(root: str | Path, phase: str, fingerprint: str) -> Artifact | None:
    """The published artifact for this fingerprint, checked and on this machine; None when there is none.

    A damaged one (a file missing or changed) counts as none, with a warning saying what is wrong.
    """
    data_root = DataRoot.parse(root)
    if data_root.is_local:
        return _intact_or_none(lambda: _checked(read_manifest(data_root, phase, fingerprint)))
    with work_lock(data_root, phase, fingerprint):
        return _intact_or_none(lambda: _fetch_if_published(data_root, phase, fingerprint))


def verified_model_dir(model_dir: Path) -> Path:
    """`model_dir`, after checking its files against the manifest of the artifact holding it.

    A train artifact keeps its model under `model/`, with the manifest one level up; a folder with a
    manifest of its own is checked whole. A model folder with no manifest (saved by hand, downloaded from
    MLflow) is returned as it is: there is nothing to check it against.
    """
    model_dir = Path(model_dir)
    for holder in (model_dir, model_dir.parent):
        manifest = holder / MANIFEST
        if manifest.is_file():
            artifact = parse_manifest(manifest.read_bytes(), str(manifest)).model_copy(
                update={"path": str(holder)}
            )
            inside = model_dir.relative_to(holder).as_posix()
            prefix = "" if inside == "." else f"{inside}/"
            files = {k: v for k, v in artifact.files.items() if k.startswith(prefix)}
            verify(artifact.model_copy(update={"files": files}))
            return model_dir
    return model_dir


def _checked(found: Artifact | None) -> Artifact | None:
    if found is not None:
        verify(found)
    return found


def _intact_or_none(read: Callable[[], Artifact | None]) -> Artifact | None:
    try:
        return read()
    except (ArtifactError, DownloadMismatch) as err:
        log.warning("not reusing a damaged artifact: %s", err)
        return None


def _fetch_if_published(data_root: DataRoot, phase: str, fingerprint: str) -> Artifact | None:
    found = read_manifest(data_root, phase, fingerprint)
    return None if found is None else _fetch(found)


def _fetch(found: Artifact) -> Artifact:
    """An object-store artifact in the local cache (caller holds its lock): reused if intact, else fetched."""
    data_root = DataRoot.parse(found.root or "")
    local = found.dir
    if _cached_copy_intact(found):
        return found
    local.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(local)
    staging = local.parent / f".tmp-{found.fingerprint}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        download_files(data_root, found.files, (found.phase, found.fingerprint, found.upload), staging)
        (staging / MANIFEST).write_text(found.model_dump_json(indent=2))
        _move_into_place(staging, local)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return found


def _cached_copy_intact(found: Artifact) -> bool:
    """Whether the local cache already holds an intact copy of exactly this published manifest."""
    try:
        cached = parse_manifest((found.dir / MANIFEST).read_bytes(), str(found.dir / MANIFEST))
        if (cached.files, cached.upload) != (found.files, found.upload):
            return False
        verify(found)
    except FileNotFoundError:
        return False
    except ArtifactError as err:
        log.warning("local copy damaged, fetching it again: %s", err)
        return False
    return True


# -- writing ----------------------------------------------------------------------------------------


def publish(
    root: str | Path,
    phase: str,
    fingerprint: str,
    build: Callable[[Path], dict[str, Any] | None],
    *,
    reuse: bool = True,
) -> Artifact:
    """Build a phase output in a temporary folder and publish it atomically once complete.

    `build(staging_dir)` writes the files and returns stats for the manifest. If an intact output for this
    fingerprint is already published it is returned unchanged (unless `reuse=False`, which rebuilds it);
    a damaged one is rebuilt and replaced. The work folder's lock is held throughout, so a second writer
    of the same fingerprint waits, then finds the first one's artifact and reuses it.
    """
    data_root = DataRoot.parse(root)
    with work_lock(data_root, phase, fingerprint):
        if reuse and (done := _reusable(data_root, phase, fingerprint)) is not None:
            return done
        artifact = _build(data_root, phase, fingerprint, build)
        shutil.rmtree(data_root.local / phase / f".work-{fingerprint}", ignore_errors=True)
        if not data_root.is_local:
            data_root.remove_tree(phase, f".work-{fingerprint}")
    return artifact


def _reusable(data_root: DataRoot, phase: str, fingerprint: str) -> Artifact | None:
    if data_root.is_local:
        return _intact_or_none(lambda: _checked(read_manifest(data_root, phase, fingerprint)))
    return _intact_or_none(lambda: _fetch_if_published(data_root, phase, fingerprint))


def _build(
    data_root: DataRoot, phase: str, fingerprint: str, build: Callable[[Path], dict[str, Any] | None]
) -> Artifact:
    final = artifact_dir(data_root, phase, fingerprint)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(final)
    staging = final.parent / f".tmp-{fingerprint}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        stats = build(staging) or {}
        files = {
            p.relative_to(staging).as_posix(): sha256_file(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        artifact = Artifact(
            phase=phase,
            fingerprint=fingerprint,
            path=str(final),
            files=files,
            shards=shard_tables(files),
            stats=stats,
            root=data_root.url,
            upload="" if data_root.is_local else new_upload_id(),
        )
        manifest = artifact.model_dump_json(indent=2)
        (staging / MANIFEST).write_text(manifest)
        if not data_root.is_local:
            upload_files(data_root, staging, files, (phase, fingerprint, artifact.upload))
            data_root.write_bytes(phase, fingerprint, MANIFEST, data=manifest.encode())  # the commit
        _move_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return artifact


def _clear_leftovers(final: Path) -> None:
    """Remove what a killed attempt at this folder left beside it (caller holds its lock: none is live)."""
    for pattern in (f".tmp-{final.name}-*", f".old-{final.name}-*"):
        for leftover in final.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename `staging` to `final`; a folder already there (damaged, or a rebuild was asked) goes aside."""
    if final.exists():
        aside = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, aside)
        os.replace(staging, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, final)
