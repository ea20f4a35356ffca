"""A training process killed mid-run: Prefect retries the train task and it resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from flows.build import build
from tests.flows.helpers import task_states, tiny_config

pytestmark = pytest.mark.slow


def _trainer_pids(run_dir_marker: str) -> list[int]:
    """PIDs of the DDP worker processes (`python -m tinyllama_model.training.launch <run dir>`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tinyllama_model.training.launch" in argv and any(run_dir_marker.encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


def _kill_once_after_first_checkpoint(root: Path, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        checkpoints = list(root.glob("train/.work-*/checkpoints/step-*.pt"))
        pids = _trainer_pids(str(root / "train"))
        if checkpoints and pids:
            os.kill(pids[-1], signal.SIGKILL)  # one rank dies, as when a node loses a process
            killed.append(pids[-1])
            return
        time.sleep(0.01)


@pytest.mark.skipif(
    not Path("/proc/self/cmdline").exists(), reason="finds the trainer processes through /proc"
)
def test_killed_training_is_retried_and_resumes(prefect_harness, tmp_path: Path) -> None:
    root = tmp_path / "data"
    cfg = tiny_config(
        root,
        "train.nproc_per_node=2",
        "train.max_steps=300",  # ample steps after the first checkpoint for the kill to land mid-run
        "train.checkpoint_every=10",
        "train.eval_every=1000",
    )
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_once_after_first_checkpoint, args=(root, killed, stop), daemon=True
    )
    killer.start()
    try:
        state = build(config=cfg, return_state=True)
    finally:
        stop.set()
        killer.join(timeout=5)

    assert killed, "the trainer was never seen running with a checkpoint"
    assert state.is_completed(), state
    assert task_states(state.state_details.flow_run_id)["train"] == "Completed"
    summary = state.result()
    trained = summary["fingerprints"]["train"]
    stats = (root / "train" / trained / "manifest.json").read_text()
    import json

    result = json.loads(stats)["stats"]
    assert result["steps"] == 300
    assert result["resumed_from_step"] is not None and result["resumed_from_step"] >= 10
