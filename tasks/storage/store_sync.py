"""Moving phase folders between this machine and an object-store data root.

Object stores cannot rename, so a folder cannot appear at once the way `os.replace` makes it appear
locally. An artifact is therefore uploaded under a prefix of its own, `<root>/<phase>/<fp>/<upload>/`,
and committed by one last PUT of its manifest, which names that upload: readers go through the manifest
only, so they never see a half-uploaded artifact, and two writers racing on one fingerprint each upload
whole and the later manifest wins. A download checks every file against the manifest's SHA-256 before the
folder is used.

`WorkMirror` keeps a copy of a phase's resumable work folder (training checkpoints) in the store, so a
retry on another machine resumes from the last checkpoint instead of step 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from tasks.storage.data_root import DataRoot
from tasks.storage.file_hashes import sha256_file
from tinyllama_model.files import atomic_path
from tinyllama_model.training.run_state import (
    BEST_DIR,
    CHECKPOINT_DIR,
    METRICS_FILE,
    list_checkpoints,
    step_of,
)

log = logging.getLogger(__name__)


class DownloadMismatch(ValueError):
    """A file fetched from the store is not the one its manifest names."""


def upload_files(root: DataRoot, folder: Path, names: Iterable[str], prefix: tuple[str, ...]) -> None:
    """PUT each file of `folder` under `<root>/<prefix>/` (the manifest is the caller's last PUT)."""
    fs = root.fs
    for name in names:
        fs.put_file(str(folder / name), root.key(*prefix, name))


def download_files(root: DataRoot, files: dict[str, str], prefix: tuple[str, ...], dest: Path) -> None:
    """GET each file of a manifest into `dest`, refusing any whose SHA-256 differs from the manifest's."""
    fs = root.fs
    for name, digest in files.items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = root.key(*prefix, name)
        try:
            fs.get_file(source, str(target))
        except FileNotFoundError as err:
            raise DownloadMismatch(
                f"{root.protocol}://{source} is listed in its manifest but missing"
            ) from err
        if sha256_file(target) != digest:
            raise DownloadMismatch(
                f"{root.protocol}://{source} does not match its manifest's SHA-256 (changed or damaged in "
                "the store); the phase that wrote it must run again"
            )


class WorkMirror:
    """A phase's work folder mirrored to `<root>/<phase>/.work-<fp>/` on an object-store root.

    What is mirrored is what a resume needs and cannot rebuild: the checkpoints, the best model so far
    and the metrics log. The packed data and run.json are rebuilt from the input artifacts on whichever
    machine resumes (run.json names local paths). On a local root every method does nothing: the work
    folder is already where any retry looks.
    """

    def __init__(self, root: str | Path | DataRoot, phase: str, fingerprint: str, work: Path) -> None:
        self.root = DataRoot.parse(root)
        self.prefix = (phase, f".work-{fingerprint}")
        self.work = work
        self.pushed: dict[str, tuple[int, int]] = {}  # relative name -> (size, mtime_ns) last uploaded
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
        fs = self.root.fs
        remote = self.root.key(*self.prefix)
        fs.invalidate_cache(remote)
        try:
            names = [p[len(remote) + 1 :] for p in fs.find(remote)]
        except FileNotFoundError:
            return None
        checkpoints = sorted((n for n in names if _is_checkpoint(n)), key=lambda n: step_of(Path(n)))
        local = list_checkpoints(self.work / CHECKPOINT_DIR)
        if not checkpoints or (local and step_of(local[-1]) >= step_of(Path(checkpoints[-1]))):
            return None
        wanted = [checkpoints[-1], *(n for n in names if n.startswith(f"{BEST_DIR}/") or n == METRICS_FILE)]
        for name in wanted:
            with atomic_path(self.work / name) as tmp:
                fs.get_file(f"{remote}/{name}", str(tmp))
        step = step_of(Path(checkpoints[-1]))
        log.info("resuming from step %d: checkpoint fetched from %s", step, self.root.url_of(*self.prefix))
        return step

    def push(self) -> None:
        """Upload what changed since the last push: best/ and the metrics first, the checkpoint last."""
        if not self.enabled:
            return
        checkpoints = list_checkpoints(self.work / CHECKPOINT_DIR)
        changed = [
            p for p in self._mirrored(checkpoints[-1:]) if self._stamp(p) != self.pushed.get(self._rel(p))
        ]
        fs = self.root.fs
        for path in changed:  # sorted so the checkpoint, which commits the state, goes last
            try:
                stamp = self._stamp(path)
                fs.put_file(str(path), self.root.key(*self.prefix, self._rel(path)))
            except FileNotFoundError:  # a torchrun trainer replaced it meanwhile: the next push takes it
                continue
            self.pushed[self._rel(path)] = stamp
        if checkpoints:
            self.pushed_step = step_of(checkpoints[-1])
            self._drop_remote_checkpoints(keep={p.name for p in checkpoints})

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

    def _mirrored(self, checkpoints: list[Path]) -> list[Path]:
        best = sorted(p for p in (self.work / BEST_DIR).glob("*") if p.is_file())
        metrics = [self.work / METRICS_FILE] if (self.work / METRICS_FILE).is_file() else []
        return [*best, *metrics, *checkpoints]

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

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.work).as_posix()

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns


def _is_checkpoint(name: str) -> bool:
    head, _, file = name.rpartition("/")
    return head == CHECKPOINT_DIR and file.startswith("step-") and file.endswith(".pt")
