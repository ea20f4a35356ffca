"""Moving phase folders between this machine and an object-store data root.

Object stores cannot rename, so a folder cannot appear at once the way `os.replace` makes it appear
locally. An artifact is therefore uploaded under a prefix of its own, `<root>/<phase>/<fp>/<upload>/`,
and committed by one last PUT of its manifest, which names that upload: readers go through the manifest
only, so they never see a half-uploaded artifact, and two writers racing on one fingerprint each upload
whole and the later manifest wins. A download checks every file against the manifest's SHA-256 before the
folder is used. Uploads the manifest no longer names are removed later (`tasks.storage.store_sweep`).

`WorkMirror` keeps a copy of a phase's resumable work folder (training checkpoints) in the store, so a
retry on another machine resumes from the last checkpoint instead of step 0.

Whoever can write the bucket can write a manifest or a key, so no name read from the store becomes a
local path unchecked: manifests' names must be relative and land inside the download folder, and the
mirror reads only the names it writes itself (`tasks.storage.safe_names`).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, field_validator

from tasks.storage.data_root import DataRoot
from tasks.storage.file_hashes import sha256_file
from tasks.storage.safe_names import UPLOAD_ID, UnsafeName, checked_name, inside, new_upload_id
from tinyllama_model.files import atomic_path
from tinyllama_model.training.run_layout import (
    BEST_DIR,
    CHECKPOINT_DIR,
    METRICS_FILE,
    list_checkpoints,
    step_of,
)

log = logging.getLogger(__name__)
BEST_MANIFEST = "best.json"  # the mirror's manifest of best/, PUT after the files it names
CHECKPOINT_NAME = re.compile(r"step-\d+\.pt")  # the only checkpoint names a pull accepts
PULL_ATTEMPTS = 3  # a pull that lost a race with pushes starts again from the listing, this often at most


class DownloadMismatch(ValueError):
    """A file fetched from the store is not the one its manifest names."""


def upload_files(root: DataRoot, folder: Path, names: Iterable[str], prefix: tuple[str, ...]) -> None:
    """PUT each file of `folder` under `<root>/<prefix>/` (the manifest is the caller's last PUT)."""
    fs = root.fs
    for name in names:
        fs.put_file(str(folder / name), root.key(*prefix, name))


def download_files(root: DataRoot, files: dict[str, str], prefix: tuple[str, ...], dest: Path) -> None:
    """GET each file of a manifest into `dest`, refusing any whose SHA-256 differs from the manifest's.

    Every name is checked and its target resolved inside `dest` before a byte is written (`safe_names`).
    """
    fs = root.fs
    for name, digest in files.items():
        source = root.key(*prefix, checked_name(name, "manifest file name"))
        try:
            target = inside(dest, name, "manifest file name")
            target.parent.mkdir(parents=True, exist_ok=True)
            get_object(fs, source, target)
        except FileNotFoundError as err:
            raise DownloadMismatch(
                f"{root.protocol}://{source} is listed in its manifest but missing"
            ) from err
        except (UnsafeName, OSError) as err:
            raise DownloadMismatch(f"{root.protocol}://{source} cannot be fetched: {err}") from err
        if sha256_file(target) != digest:
            raise DownloadMismatch(
                f"{root.protocol}://{source} does not match its manifest's SHA-256 (changed or damaged in "
                "the store); the phase that wrote it must run again"
            )


def get_object(fs: Any, source: str, target: Path) -> None:
    """GET one object into `target`; FileNotFoundError unless the store holds a file there.

    Some backends (fsspec's memory filesystem) make a local folder when `source` is a "folder" implied by
    longer keys: that folder is removed, never used as the file.
    """
    fs.get_file(source, str(target))
    if not target.is_file():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        raise FileNotFoundError(f"{source} is not a file in the store")


def listed_names(fs: Any, folder: str) -> list[str]:
    """The names of the objects under `folder`, relative to it, as fsspec lists them.

    Backends differ on a leading '/' (s3fs lists `bucket/key`, the memory filesystem `/bucket/key`), so
    both sides are compared without it; an entry that is not under `folder` is left out.
    """
    base = folder.strip("/") + "/"
    fs.invalidate_cache(folder)
    try:
        found = fs.find(folder)
    except FileNotFoundError:
        return []
    return [p.lstrip("/")[len(base) :] for p in found if p.lstrip("/").startswith(base)]


class BestManifest(BaseModel):
    """The mirror's `best.json`: which copy of best/ is current, and its files' SHA-256 (flat names)."""

    version: str
    step: int
    files: dict[str, str]

    @field_validator("version")
    @classmethod
    def _our_prefix(cls, value: str) -> str:
        if not UPLOAD_ID.fullmatch(value):
            raise ValueError(f"version {value!r} is not {UPLOAD_ID.pattern}")
        return value

    @field_validator("files")
    @classmethod
    def _flat_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if "/" in checked_name(name, f"{BEST_DIR}/ file name"):
                raise ValueError(f"{BEST_DIR}/ holds files only, not {name!r}")
        return value


class WorkMirror:
    """A phase's work folder mirrored to `<root>/<phase>/.work-<fp>/` on an object-store root.

    What is mirrored is what a resume needs and cannot rebuild: the checkpoints, the best model so far
    and the metrics log. The packed data and run.json are rebuilt from the input artifacts on whichever
    machine resumes (run.json names local paths). On a local root every method does nothing: the work
    folder is already where any retry looks.

    In the store: `checkpoints/step-N.pt` (the latest only), `metrics.jsonl`, `best/<version>/<file>`
    (one copy of best/ per push that changed it) and `best.json`, a `BestManifest` PUT after that copy's
    files: the commit of best/. A push keeps the copy it replaces, so a pull that read the previous
    `best.json` can still finish; a pull reads `best.json` first and fetches exactly the files it names,
    checked by hash, so it gets one whole best/, never files of two steps. Only these names are ever
    read from the store, and each lands inside the work folder (`safe_names`).
    """

    def __init__(self, root: str | Path | DataRoot, phase: str, fingerprint: str, work: Path) -> None:
        self.root = DataRoot.parse(root)
        self.prefix = (phase, f".work-{fingerprint}")
        self.work = work
        self.pushed: dict[str, tuple[int, int]] = {}  # relative name -> (size, mtime_ns) last uploaded
        self.pushed_best: dict[str, tuple[int, int]] = {}  # best/ file name -> stamp of the last copy
        self.pushed_step = -1

    @property
    def enabled(self) -> bool:
        return not self.root.is_local

    def pull(self) -> int | None:
        """Fetch the store's latest checkpoint (with best/ and the metrics log) when it is ahead of ours.

        Returns the step fetched, or None when there was nothing newer.
        """
        if not self.enabled:
            return None
        for attempt in range(1, PULL_ATTEMPTS + 1):
            latest = self._latest_remote_checkpoint()
            local = list_checkpoints(self.work / CHECKPOINT_DIR)
            if latest is None or (local and step_of(local[-1]) >= _step(latest)):
                return None
            try:
                self._fetch_best(self._best_manifest())
                self._get(METRICS_FILE, missing_ok=True)
                self._get(f"{CHECKPOINT_DIR}/{latest}")  # last: the local checkpoint says how far we are
            except (DownloadMismatch, FileNotFoundError) as err:
                if attempt == PULL_ATTEMPTS:
                    raise
                log.info(
                    "the mirror changed while it was fetched (a push meanwhile), reading it again: %s", err
                )
                continue
            log.info(
                "resuming from step %d: checkpoint fetched from %s",
                _step(latest),
                self.root.url_of(*self.prefix),
            )
            return _step(latest)
        return None

    def _latest_remote_checkpoint(self) -> str | None:
        listed = listed_names(self.root.fs, self.root.key(*self.prefix, CHECKPOINT_DIR))
        checkpoints = sorted((n for n in listed if CHECKPOINT_NAME.fullmatch(n)), key=_step)
        return checkpoints[-1] if checkpoints else None

    def push(self) -> None:
        """Upload what changed since the last push: best/ (then its manifest), the metrics, the checkpoint."""
        if not self.enabled:
            return
        checkpoints = list_checkpoints(self.work / CHECKPOINT_DIR)
        self._push_best(step_of(checkpoints[-1]) if checkpoints else -1)
        metrics = [self.work / METRICS_FILE] if (self.work / METRICS_FILE).is_file() else []
        fs = self.root.fs
        for path in [*metrics, *checkpoints[-1:]]:  # the checkpoint, which commits the state, goes last
            rel = path.relative_to(self.work).as_posix()
            try:
                stamp = _stamp(path)
                if stamp != self.pushed.get(rel):
                    fs.put_file(str(path), self.root.key(*self.prefix, rel))
                    self.pushed[rel] = stamp
            except FileNotFoundError:  # a torchrun trainer replaced it meanwhile: the next push takes it
                continue
        pushed = [Path(rel).name for rel in self.pushed if rel.startswith(f"{CHECKPOINT_DIR}/")]
        if pushed:  # the newest checkpoint in the store, which may be older than ours if ours was replaced
            newest = max(pushed, key=_step)
            self.pushed_step = _step(newest)
            self._drop_remote_checkpoints(keep={newest})

    def watch(self, on_metrics: Callable[[dict], None] | None) -> Callable[[dict], None]:
        """`on_metrics` that also pushes whenever the trainer has written a new checkpoint."""

        def callback(row: dict) -> None:
            if self.enabled:
                latest = list_checkpoints(self.work / CHECKPOINT_DIR)
                if latest and step_of(latest[-1]) != self.pushed_step:
                    self.push()
            if on_metrics is not None:
                on_metrics(row)

        return callback

    # -- best/: a copy per change, committed by best.json ----------------------------------------------

    def _push_best(self, step: int) -> None:
        files = sorted(p for p in (self.work / BEST_DIR).glob("*") if p.is_file())
        try:
            stamps = {p.name: _stamp(p) for p in files}
        except FileNotFoundError:  # replaced while we looked: the next push takes it
            return
        if not files or stamps == self.pushed_best:
            return
        version = new_upload_id()
        digests = self._upload_best(files, stamps, version)
        if digests is None:
            self.root.remove_tree(*self.prefix, BEST_DIR, version)
            return
        try:
            previous = self._best_manifest()
        except DownloadMismatch:  # unreadable: ours replaces it
            previous = None
        manifest = BestManifest(version=version, step=step, files=digests)
        self.root.write_bytes(*self.prefix, BEST_MANIFEST, data=manifest.model_dump_json().encode())
        self.pushed_best = stamps
        self._drop_best_copies(keep={version, previous.version if previous else version})

    def _upload_best(
        self, files: list[Path], stamps: dict[str, tuple[int, int]], version: str
    ) -> dict[str, str] | None:
        """Upload one copy of best/; None when a file changed meanwhile (the copy would not be one step)."""
        digests: dict[str, str] = {}
        for path in files:
            try:
                digests[path.name] = sha256_file(path)
                self.root.fs.put_file(str(path), self.root.key(*self.prefix, BEST_DIR, version, path.name))
                if _stamp(path) != stamps[path.name]:
                    return None
            except FileNotFoundError:
                return None
        return digests

    def _drop_best_copies(self, keep: set[str]) -> None:
        listed = listed_names(self.root.fs, self.root.key(*self.prefix, BEST_DIR))
        for version in {n.split("/", 1)[0] for n in listed} - keep:
            if UPLOAD_ID.fullmatch(version):  # only prefixes of our own making are removed
                self.root.remove_tree(*self.prefix, BEST_DIR, version)

    def _best_manifest(self) -> BestManifest | None:
        raw = self.root.read_bytes(*self.prefix, BEST_MANIFEST)
        if raw is None:
            return None
        try:
            return BestManifest.model_validate_json(raw)
        except ValidationError as err:
            raise DownloadMismatch(
                f"{self.root.url_of(*self.prefix, BEST_MANIFEST)} is not a valid {BEST_DIR}/ manifest "
                f"({err.errors()[0]['msg']}); delete {self.root.url_of(*self.prefix)} to train from step 0"
            ) from err

    def _fetch_best(self, manifest: BestManifest | None) -> None:
        """All of one copy of best/ into the work folder, or (on any mismatch) none of it."""
        if manifest is None:  # no best model saved yet
            return
        folder = self.work / BEST_DIR
        with ExitStack() as stack:  # every file renamed into place only once all are fetched and checked
            for name, digest in manifest.files.items():
                tmp = stack.enter_context(atomic_path(inside(folder, name, f"{BEST_DIR}/ file name")))
                source = self.root.key(*self.prefix, BEST_DIR, manifest.version, name)
                try:
                    get_object(self.root.fs, source, tmp)
                except FileNotFoundError as err:
                    raise DownloadMismatch(f"{self.root.protocol}://{source} is gone") from err
                if sha256_file(tmp) != digest:
                    raise DownloadMismatch(f"{self.root.protocol}://{source} does not match best.json")
        for stale in folder.glob("*"):
            if stale.is_file() and stale.name not in manifest.files:
                stale.unlink()

    # -- single files ----------------------------------------------------------------------------------

    def _get(self, name: str, *, missing_ok: bool = False) -> None:
        try:
            with atomic_path(inside(self.work, name, "work file name")) as tmp:
                get_object(self.root.fs, self.root.key(*self.prefix, name), tmp)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def _drop_remote_checkpoints(self, keep: set[str]) -> None:
        fs = self.root.fs
        folder = self.root.key(*self.prefix, CHECKPOINT_DIR)
        fs.invalidate_cache(folder)
        try:
            stale = [p for p in fs.ls(folder, detail=False) if p.rsplit("/", 1)[-1] not in keep]
        except FileNotFoundError:
            return
        if stale:
            fs.rm(stale)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _step(name: str) -> int:
    return step_of(Path(name))
