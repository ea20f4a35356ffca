"""What Prefect keeps of a cached phase: the Artifact as JSON, read back only after it has been checked.

A cached phase's Prefect result is its `Artifact` (paths, hashes, stats), written as JSON by
`ArtifactSerializer`, never as a pickle. That alone is not enough: a Prefect result record carries the
name of its own serializer, and Prefect trusts that name on read, so a record swapped on disk that says
`pickle` would run code on the next cache hit whatever the task's `result_serializer` says. So the phases
keep the record's metadata (the part that names the serializer) in `CheckedRecordMetadata`, a storage
whose read hands Prefect a record only when:

- its metadata names `ArtifactSerializer` (whose `loads` is `Artifact.model_validate_json`: data only);
- the result it points at parses as an Artifact;
- that Artifact is still published and intact (`tasks.storage.artifacts.still_published`).

Anything else is refused before Prefect deserializes a byte, which Prefect treats as "no cached result":
the phase runs again, finds its folder (reused if intact, rebuilt if not) and writes a fresh record. The
metadata Prefect then deserializes is the very bytes checked here; the result bytes it reads next can only
ever be parsed as JSON into an Artifact.

Use `artifact_cache(phase, CODE_VERSION)` as the `@task` arguments of every cached phase.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.cache_policies import CachePolicy
from prefect.filesystems import LocalFileSystem
from prefect.results import get_default_result_storage
from prefect.serializers import Serializer
from prefect.settings import get_current_settings
from pydantic import Field, ValidationError

from tasks.storage.artifacts import Artifact, ArtifactError, still_published, task_cache_key

RECORDS_DIR = "tinyllama-records"  # under Prefect's local result storage folder
log = logging.getLogger(__name__)


class RecordRefused(ValueError):
    """A cache record that is not a checked JSON Artifact record: Prefect reads it as a cache miss."""


class ArtifactSerializer(Serializer):
    """JSON of an Artifact, read back by pydantic validation: no import, no code, whatever the bytes hold."""

    type: Literal["tinyllama-artifact"] = Field(default="tinyllama-artifact", frozen=True)

    def dumps(self, obj: Artifact) -> bytes:
        if not isinstance(obj, Artifact):
            raise TypeError(f"ArtifactSerializer writes Artifact results only, got {type(obj).__name__}")
        return obj.model_dump_json().encode()

    def loads(self, blob: bytes) -> Artifact:
        return Artifact.model_validate_json(blob)


def check_record(metadata: bytes, read_result: Any) -> None:
    """Raise RecordRefused unless `metadata` is a trusted record of an intact artifact (module docstring).

    `read_result(storage_key)` returns the bytes of the result the metadata points at.
    """
    try:
        meta = json.loads(metadata)
    except (UnicodeDecodeError, ValueError) as err:
        raise RecordRefused(f"its metadata is not JSON ({err})") from err
    serializer = meta.get("serializer") if isinstance(meta, dict) else None
    if serializer != ArtifactSerializer().model_dump():
        named = serializer.get("type") if isinstance(serializer, dict) else serializer
        raise RecordRefused(f"it names serializer {named!r}, not {ArtifactSerializer().type!r}")
    key = meta.get("storage_key")
    if not isinstance(key, str) or not key:
        raise RecordRefused("its metadata names no result")
    try:
        artifact = ArtifactSerializer().loads(read_result(key))
    except (OSError, ValueError, ValidationError) as err:
        raise RecordRefused(f"its result is not an Artifact in JSON ({type(err).__name__})") from err
    try:
        still_published(artifact)
    except ArtifactError as err:
        raise RecordRefused(f"the artifact it names is not intact: {err}") from err


class CheckedRecordMetadata(LocalFileSystem):
    """Storage of the cached phases' record metadata; its reads refuse what `check_record` refuses.

    With no `basepath` it keeps the metadata under `<Prefect's local result storage>/tinyllama-records`,
    resolved when used, so PREFECT_LOCAL_STORAGE_PATH set after import is respected.
    """

    _block_type_name = "Tinyllama Checked Record Metadata"

    def _resolve_path(self, path: str) -> Path:
        if self.basepath:
            return super()._resolve_path(path)
        base = Path(get_current_settings().results.local_storage_path).expanduser() / RECORDS_DIR
        return LocalFileSystem(basepath=str(base))._resolve_path(path)

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path, _sync=True)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        resolved = self._resolve_path(path)
        content = resolved.read_bytes()  # a missing record raises, which Prefect reads as a cache miss
        try:
            check_record(content, _read_result)
        except RecordRefused as err:
            log.warning("cache record %s refused, so the phase runs again: %s", resolved, err)
            raise
        return content


def _read_result(storage_key: str) -> bytes:
    storage = get_default_result_storage(_sync=True)
    return storage.read_path(storage_key, _sync=True)


def artifact_cache(phase: str, code_version: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The `@task` arguments of a cached phase: its cache key, and records kept as checked JSON."""
    policy = CachePolicy.from_cache_key_fn(task_cache_key(phase, code_version, ignore))
    return {
        "cache_policy": policy.configure(key_storage=CheckedRecordMetadata()),
        "persist_result": True,
        "result_serializer": ArtifactSerializer(),
    }
