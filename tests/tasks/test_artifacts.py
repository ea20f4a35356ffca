"""Publishing and reusing artifacts on a local root: checked reuse, one writer at a time, no lost folder."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tasks.collect import CollectConfig, config_fingerprint, run_collect
from tasks.sources.progress import STARTED, ProgressLog
from tasks.storage.artifacts import (
    ArtifactError,
    load_artifact,
    materialize,
    publish,
    verified_model_dir,
    verify,
    work_lock,
)
from tests.factories import make_model_dir, train_tiny_tokenizer
from tests.processes import wait_until


def _write(text: str):
    calls: list[str] = []

    def build(out: Path) -> dict:
        calls.append(text)
        (out / "data.txt").write_text(text)
        (out / "sub").mkdir()
        (out / "sub" / "more.bin").write_bytes(b"\x00\x01" * 100)
        return {"n": len(text)}

    return build, calls


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _lock_waiters(lock_file: Path) -> int:
    """How many lock requests wait on `lock_file` (Linux lists them in /proc/locks with `->`)."""
    inode = f":{lock_file.stat().st_ino} "
    return sum("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


needs_proc_locks = pytest.mark.skipif(not Path("/proc/locks").exists(), reason="watches /proc/locks")


def test_publish_reuses_an_intact_folder_and_rebuilds_a_damaged_one(tmp_path: Path) -> None:
    build, calls = _write("hello")
    first = publish(tmp_path, "phase", "fp", build)
    assert publish(tmp_path, "phase", "fp", build) == first and calls == ["hello"]

    _flip_a_byte(first.file("sub/more.bin"))
    again = publish(tmp_path, "phase", "fp", build)
    assert calls == ["hello", "hello"]  # rebuilt, not handed out damaged
    verify(again)

    first.file("data.txt").unlink()  # partly deleted
    publish(tmp_path, "phase", "fp", build)
    assert len(calls) == 3 and first.file("data.txt").read_text() == "hello"


def test_what_a_killed_attempt_left_is_cleared_by_the_next_one(tmp_path: Path) -> None:
    leftover = tmp_path / "phase" / ".tmp-fp-1a2b3c4d"
    leftover.mkdir(parents=True)
    (leftover / "data.txt").write_text("half")  # a SIGKILL mid-build leaves this; no except clause runs
    build, _ = _write("hello")
    publish(tmp_path, "phase", "fp", build)
    assert sorted(p.name for p in (tmp_path / "phase").iterdir()) == [".lock-fp", "fp"]


def test_load_artifact_never_returns_a_damaged_artifact(tmp_path: Path) -> None:
    build, _ = _write("hello")
    art = publish(tmp_path, "phase", "fp", build)
    assert load_artifact(tmp_path, "phase", "fp") == art
    _flip_a_byte(art.file("data.txt"))
    assert load_artifact(tmp_path, "phase", "fp") is None
    with pytest.raises(ArtifactError, match=r"data.txt changed since the phase phase wrote it"):
        materialize(art)


@needs_proc_locks
def test_a_second_writer_waits_then_reuses_and_never_removes_the_published_folder(tmp_path: Path) -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow_build(out: Path) -> dict:
        calls.append("first")
        release.wait(timeout=300)
        (out / "data.txt").write_text("first")
        return {}

    def second_build(out: Path) -> dict:
        calls.append("second")
        (out / "data.txt").write_text("second")
        return {}

    results: dict[str, object] = {}
    first = threading.Thread(
        target=lambda: results.setdefault("first", publish(tmp_path, "p", "fp", slow_build))
    )
    first.start()
    wait_until(lambda: calls == ["first"], "the first writer building")
    second = threading.Thread(
        target=lambda: results.setdefault("second", publish(tmp_path, "p", "fp", second_build))
    )
    second.start()
    wait_until(
        lambda: _lock_waiters(tmp_path / "p" / ".lock-fp") == 1, "the second writer waiting for the lock"
    )
    release.set()
    first.join(timeout=300)
    second.join(timeout=300)

    assert calls == ["first"]  # the second writer found the first one's artifact and reused it
    assert results["first"] == results["second"]
    assert (tmp_path / "p" / "fp" / "data.txt").read_text() == "first"


def _hold_lock(root: str, held: str, release: str) -> None:
    with work_lock(root, "phase", "key"):
        Path(held).touch()
        wait_until(lambda: Path(release).exists(), "the release file", deadline_s=300)


@pytest.mark.slow  # the spawned child imports torch and the tasks: seconds on 2 busy cores
def test_work_lock_excludes_another_process(tmp_path: Path) -> None:
    held, release = tmp_path / "held", tmp_path / "release"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path), str(held), str(release)))
    child.start()
    try:
        wait_until(held.exists, "the child holding the lock", alive=child.is_alive)
        with open(tmp_path / "phase" / ".lock-key", "a") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        release.touch()
        child.join(timeout=120)
    assert child.exitcode == 0
    with work_lock(tmp_path, "phase", "key"):  # free again once the child let go
        pass


def test_an_empty_started_stamp_no_longer_breaks_every_later_collection(tmp_path: Path) -> None:
    cfg = CollectConfig(builtin=True, wikipedia={"enabled": False})
    work = tmp_path / "collect" / f".work-{config_fingerprint(cfg)}"
    work.mkdir(parents=True)
    (work / STARTED).write_text("")  # what a crash between create and write used to leave
    artifact = run_collect(cfg, tmp_path)
    assert artifact.stats["documents"] > 0
    stamp_dir = tmp_path / "stamp"
    stamp_dir.mkdir()
    (stamp_dir / STARTED).write_text('{"started": ')  # torn
    ProgressLog(stamp_dir, max_age_s=3600)
    assert isinstance(json.loads((stamp_dir / STARTED).read_text())["started"], float)


@needs_proc_locks
def test_two_collections_of_one_config_take_turns_on_their_work_folder(tmp_path: Path) -> None:
    cfg = CollectConfig(builtin=True, wikipedia={"enabled": False})
    key = f"work-{config_fingerprint(cfg)}"
    done: list[object] = []
    with work_lock(tmp_path, "collect", key):  # another collection of this config is running
        runner = threading.Thread(target=lambda: done.append(run_collect(cfg, tmp_path)))
        runner.start()
        wait_until(
            lambda: _lock_waiters(tmp_path / "collect" / f".lock-{key}") == 1, "the collection waiting"
        )
        assert not done
    runner.join(timeout=300)
    assert len(done) == 1


def _train_artifact(tmp_path: Path):
    """A published train artifact holding a real (tiny, untrained) model under model/."""
    tok = train_tiny_tokenizer(tmp_path)

    def build(out: Path) -> None:
        make_model_dir(out / "model", tok)

    return publish(tmp_path / "root", "train", "fp", build), tok


def test_a_model_folder_is_checked_against_the_manifest_beside_it(tmp_path: Path) -> None:
    art, tok = _train_artifact(tmp_path)
    model = art.dir / "model"
    assert verified_model_dir(model) == model
    assert verified_model_dir(art.dir) == art.dir
    plain = make_model_dir(tmp_path / "plain", tok)  # saved by hand: nothing to check against
    assert verified_model_dir(plain) == plain
    _flip_a_byte(model / "model.safetensors")
    with pytest.raises(ArtifactError, match=r"model.safetensors changed"):
        verified_model_dir(model)


@pytest.mark.slow
def test_the_cli_refuses_a_model_with_a_flipped_byte(tmp_path: Path) -> None:
    art, _ = _train_artifact(tmp_path)
    weights = art.dir / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 0x01  # the lowest mantissa byte of the last weight: still a valid, finite model
    weights.write_bytes(bytes(data))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "generate",
            "-m",
            str(art.dir / "model"),
            "--prompt",
            "The",
            "-n",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "model.safetensors changed since the train phase wrote it" in out.stderr
