"""Phase outputs on disk: fingerprints, atomic publication and manifests.

Every phase writes `<root>/<phase>/<fingerprint>/`. A fingerprint hashes the phase name, its code
version, its config section and the fingerprints of its inputs, so an unchanged input and config map to
the same directory and a changed one to a new directory. The directory is built under a temporary name
beside its final place and renamed into place only when complete, with `manifest.json` (files, sizes,
hashes, stats) written last inside it: a directory without a manifest is never read as complete, and
an interrupted phase leaves only a temporary folder that the next attempt removes.

This module knows nothing about Prefect; `task_cache_key` merely has the signature Prefect expects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tinyllama_model.config_fields import result_fields

MANIFEST = "manifest.json"


class Artifact(BaseModel):
    """What a phase hands to the next one: where its output is and what it holds (never the data)."""

    phase: str
    fingerprint: str
    path: str
    files: dict[str, str] = {}  # file name (relative) -> sha256
    stats: dict[str, Any] = {}

    @property
    def dir(self) -> Path:
        return Path(self.path)

    def file(self, name: str) -> Path:
        return Path(self.path) / name


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


ROOT_ID = ".root-id"


def root_identity(root: str | Path) -> str:
    """A random id stored in the data root on first use; a deleted and re-created root gets a new one.

    Prefect keeps its cache records outside the data root, so without this a root deleted by hand (or a
    fresh clone at the same path) would get cache hits whose artifacts no longer exist.
    """
    path = Path(root) / ROOT_ID
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as f:  # exclusive create: concurrent first tasks agree on one id
            f.write(uuid.uuid4().hex)
    except FileExistsError:
        pass
    return path.read_text().strip()


def task_cache_key(phase: str, code_version: str, ignore: tuple[str, ...] = ()) -> Callable[..., str]:
    """A Prefect `cache_key_fn`: the phase fingerprint of the task's parameters and the root's identity.

    The data root path is part of the key (through the parameters), so a run against another root never
    reuses a result that points at files it cannot see; its `root_identity` is too, so neither does a
    run against a root that was deleted and re-created at the same path.
    """

    def key(_context: Any, parameters: dict[str, Any]) -> str:
        kept = {k: v for k, v in parameters.items() if k not in ignore}
        return f"{phase}-{phase_fingerprint(phase, code_version, **kept)}-{root_identity(parameters['root'])}"

    return key


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def artifact_dir(root: str | Path, phase: str, fingerprint: str) -> Path:
    return Path(root) / phase / fingerprint


def scratch_dir(root: str | Path, phase: str, fingerprint: str) -> Path:
    """A stable per-fingerprint work folder that survives retries, for phases that resume."""
    path = Path(root) / phase / f".work-{fingerprint}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_artifact(root: str | Path, phase: str, fingerprint: str) -> Artifact | None:
    """The completed artifact for this fingerprint, or None when there is none (or only a partial one)."""
    manifest = artifact_dir(root, phase, fingerprint) / MANIFEST
    if not manifest.is_file():
        return None
    return Artifact.model_validate_json(manifest.read_text())


def publish(
    root: str | Path,
    phase: str,
    fingerprint: str,
    build: Callable[[Path], dict[str, Any] | None],
    *,
    reuse: bool = True,
) -> Artifact:
    """Build a phase output in a temporary folder and rename it into place once complete.

    `build(staging_dir)` writes the files and returns stats for the manifest. If the output for this
    fingerprint already exists it is returned unchanged (unless `reuse=False`, which rebuilds it).
    """
    final = artifact_dir(root, phase, fingerprint)
    if reuse and (done := load_artifact(root, phase, fingerprint)) is not None:
        return done
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".tmp-{fingerprint}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        stats = build(staging) or {}
        files = {
            str(p.relative_to(staging)): sha256_file(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        artifact = Artifact(phase=phase, fingerprint=fingerprint, path=str(final), files=files, stats=stats)
        (staging / MANIFEST).write_text(artifact.model_dump_json(indent=2))
        if final.exists():
            # An older build of the same fingerprint (rebuild requested, or a concurrent writer won).
            trash = final.parent / f".old-{fingerprint}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    work = final.parent / f".work-{fingerprint}"
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
    return artifact


def verify(artifact: Artifact) -> None:
    """Raise if any file of a completed artifact is missing or no longer matches its recorded hash."""
    for name, digest in artifact.files.items():
        path = artifact.file(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in the {artifact.phase} manifest but missing")
        if sha256_file(path) != digest:
            raise ValueError(f"{path} changed since the {artifact.phase} phase wrote it; re-run the phase")
