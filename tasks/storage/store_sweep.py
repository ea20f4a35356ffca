"""Removing the uploads an object-store root no longer needs, once they are old enough to be safe.

Each publish on an object store uploads under a fresh prefix `<phase>/<fp>/<upload>/` and commits by
writing the manifest (`tasks.storage.store_sync`). A rebuilt fingerprint leaves the upload it replaced
behind, and a killed publish leaves one that no manifest ever named; nothing reads either again, so a
nightly build's bucket would grow without bound. The writer cannot remove the replaced upload at once: a
reader that read the previous manifest may still be downloading it.

`sweep_uploads` removes an upload when the fingerprint's manifest names another one (or there is no
manifest) and both the upload's newest object and the manifest are older than the grace period: a reader
has had that long to finish, and a writer still uploading is never touched. The upload the manifest names
is never removed, and a fingerprint whose manifest cannot be read is left alone (what it should keep is
unknown). Work folders (`.work-<fp>`) are not uploads: a retry resumes from them, and `publish` removes
them itself.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasks.storage.artifacts import MANIFEST, ArtifactError, read_manifest
from tasks.storage.data_root import DataRoot
from tasks.storage.safe_names import UPLOAD_ID

log = logging.getLogger(__name__)


def sweep_uploads(
    root: str | Path | DataRoot, grace: timedelta, *, now: datetime | None = None, dry_run: bool = False
) -> list[str]:
    """Remove the unreferenced uploads older than `grace` (module docstring); returns their URLs.

    `now` is the clock the ages are measured against (the current time when omitted); `dry_run` only
    reports. A local root has no uploads: its folders are renamed into place.
    """
    data_root = DataRoot.parse(root)
    if data_root.is_local:
        return []
    now = now or datetime.now(UTC)
    uploads, manifests = _uploads_and_manifests(data_root)
    removed: list[str] = []
    for (phase, fp), found in sorted(uploads.items()):
        try:
            current = read_manifest(data_root, phase, fp)
        except ArtifactError as err:
            log.warning(
                "sweep: leaving %s alone, its manifest is unreadable: %s", data_root.url_of(phase, fp), err
            )
            continue
        manifest_time = manifests.get((phase, fp))
        if current is not None and manifest_time is not None and now - manifest_time < grace:
            continue  # a reader of the manifest it replaced may still be downloading
        for upload, newest in sorted(found.items()):
            if (current is not None and upload == current.upload) or now - newest < grace:
                continue
            removed.append(data_root.url_of(phase, fp, upload))
            if not dry_run:
                data_root.remove_tree(phase, fp, upload)
    log.info(
        "sweep of %s: %d unreferenced uploads %s",
        data_root.url,
        len(removed),
        "found" if dry_run else "removed",
    )
    return removed


def _uploads_and_manifests(
    data_root: DataRoot,
) -> tuple[dict[tuple[str, str], dict[str, datetime]], dict[tuple[str, str], datetime]]:
    """One listing of the root: per fingerprint, its uploads (newest object of each) and manifest time."""
    fs = data_root.fs
    base = data_root.key()
    fs.invalidate_cache(base)
    uploads: dict[tuple[str, str], dict[str, datetime]] = defaultdict(dict)
    manifests: dict[tuple[str, str], datetime] = {}
    prefix = base.strip("/") + "/"
    for name, info in fs.find(base, detail=True).items():
        rel = name.lstrip("/")
        if not rel.startswith(prefix):
            continue
        parts = rel[len(prefix) :].split("/")
        if len(parts) < 3 or parts[0].startswith(".") or parts[1].startswith("."):
            continue  # the root's own small files, work folders
        key, modified = (parts[0], parts[1]), _modified(fs, name, info)
        if len(parts) == 3 and parts[2] == MANIFEST:
            manifests[key] = modified
        elif len(parts) > 3 and UPLOAD_ID.fullmatch(parts[2]):  # only prefixes of our own making
            uploads[key][parts[2]] = max(modified, uploads[key].get(parts[2], modified))
    return uploads, manifests


def _modified(fs: Any, name: str, info: dict[str, Any]) -> datetime:
    """An object's last-modified time from its listing entry (each backend names it its own way)."""
    for field in ("LastModified", "last_modified", "updated", "mtime", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
    found = fs.modified(name)
    return found if found.tzinfo else found.replace(tzinfo=UTC)
