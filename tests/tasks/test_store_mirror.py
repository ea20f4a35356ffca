"""The work mirror's best/ under a push and a pull that overlap: a pull gets one step's best/, never a mix.

The overlap is made deterministic by running one side from inside the other: the store's own `put_file` or
`get_file` (fsspec's memory filesystem, or s3fs against moto's S3 server on loopback) does its real work,
then, once, runs the other side before returning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tasks.storage.data_root import DataRoot
from tasks.storage.store_sync import WorkMirror
from tests.moto_s3 import use_memory, use_s3
from tinyllama_model.training.run_layout import BEST_DIR, CHECKPOINT_DIR, METRICS_FILE

BEST_FILES = ("config.json", "model.safetensors", "tokenizer.model")


@pytest.fixture(params=["memory", "s3"])
def root(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    if request.param == "s3":
        yield use_s3(monkeypatch, request.getfixturevalue("endpoint"), tmp_path / "cache")
        return
    url = use_memory(monkeypatch, tmp_path / "cache")
    yield url
    DataRoot.parse(url).remove_tree()


def _train_to(work: Path, step: int) -> None:
    """What the trainer leaves at `step`: a new best/ (every file says its step), the checkpoint, metrics."""
    (work / BEST_DIR).mkdir(parents=True, exist_ok=True)
    for name in BEST_FILES:
        (work / BEST_DIR / name).write_text(f"{name} at step {step}")
    for old in (work / CHECKPOINT_DIR).glob("*.pt"):
        old.unlink()
    (work / CHECKPOINT_DIR).mkdir(exist_ok=True)
    torch.save({"step": step}, work / CHECKPOINT_DIR / f"step-{step:08d}.pt")
    with open(work / METRICS_FILE, "a") as f:
        f.write(f'{{"step": {step}}}\n')


def _best_steps(work: Path) -> set[str]:
    return {p.read_text().rsplit(" ", 1)[-1] for p in (work / BEST_DIR).iterdir()}


def _once_during(
    mp: pytest.MonkeyPatch, fs: Any, method: str, key_part: str, other_side: Callable[[], None]
) -> list[int]:
    """Make `fs.<method>` run `other_side` right after the first call whose store key holds `key_part`."""
    real = getattr(fs, method)
    fired: list[int] = []

    def method_then_other_side(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        key = args[1] if method == "put_file" else args[0]
        if not fired and key_part in str(key):
            fired.append(1)
            other_side()
        return out

    mp.setattr(fs, method, method_then_other_side)
    return fired


def test_a_pull_during_a_push_gets_the_old_step_whole(
    root: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    work, there = tmp_path / "trainer", tmp_path / "retry"
    trainer = WorkMirror(root, "train", "fp", work)
    _train_to(work, 10)
    trainer.push()
    _train_to(work, 20)
    pulled: list[int | None] = []
    fs = DataRoot.parse(root).fs
    with monkeypatch.context() as mp:
        fired = _once_during(
            mp,
            fs,
            "put_file",
            f"/{BEST_DIR}/",
            lambda: pulled.append(WorkMirror(root, "train", "fp", there).pull()),
        )
        trainer.push()  # its first best/ file is in the store when the pull runs
    assert fired and pulled == [10]
    assert _best_steps(there) == {"10"}
    later = tmp_path / "later"
    assert WorkMirror(root, "train", "fp", later).pull() == 20 and _best_steps(later) == {"20"}


def test_pushes_during_a_pull_leave_it_one_whole_step(
    root: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    work, there = tmp_path / "trainer", tmp_path / "retry"
    trainer = WorkMirror(root, "train", "fp", work)
    _train_to(work, 10)
    trainer.push()

    def two_more_steps() -> None:
        for step in (20, 30):  # the second push removes the copy of best/ the pull was reading
            _train_to(work, step)
            trainer.push()

    fs = DataRoot.parse(root).fs
    with monkeypatch.context() as mp:
        fired = _once_during(mp, fs, "get_file", f"/{BEST_DIR}/", two_more_steps)
        step = WorkMirror(root, "train", "fp", there).pull()  # fetched its first best/ file, then the pushes
    assert fired and step == 30
    assert _best_steps(there) == {"30"}
    assert torch.load(there / CHECKPOINT_DIR / "step-00000030.pt")["step"] == 30
    copies = {n.split("/")[0] for n in _listed(root, f"train/.work-fp/{BEST_DIR}")}
    assert len(copies) == 2  # the current copy of best/ and the one it replaced, no more


def test_a_best_file_replaced_while_it_uploads_is_not_committed(root: str, tmp_path: Path) -> None:
    work = tmp_path / "trainer"
    trainer = WorkMirror(root, "train", "fp", work)
    _train_to(work, 10)
    trainer.push()
    _train_to(work, 20)
    fs = DataRoot.parse(root).fs
    real = fs.put_file

    def trainer_saves_again(lpath: str, rpath: str, **kwargs: Any) -> Any:
        out = real(lpath, rpath, **kwargs)
        if f"/{BEST_DIR}/" in rpath and lpath.endswith(BEST_FILES[0]):
            _train_to(work, 30)  # a torchrun trainer rewrote best/ while this push copied it
        return out

    fs.put_file = trainer_saves_again
    try:
        trainer.push()
    finally:
        del fs.put_file
    # neither the mixed copy of best/ nor the checkpoint that vanished under the push is in the store
    assert WorkMirror(root, "train", "fp", tmp_path / "a").pull() == 10
    assert _best_steps(tmp_path / "a") == {"10"}
    trainer.push()
    assert WorkMirror(root, "train", "fp", tmp_path / "b").pull() == 30
    assert _best_steps(tmp_path / "b") == {"30"}


def _listed(root: str, folder: str) -> list[str]:
    data_root = DataRoot.parse(root)
    base = data_root.key(folder).strip("/") + "/"
    data_root.fs.invalidate_cache()
    return [p.lstrip("/")[len(base) :] for p in data_root.fs.find(data_root.key(folder))]
