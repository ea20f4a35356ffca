"""The run directory's checkpoint files, their identity check, and the RNG state they carry."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tinyllama_model.checkpoint import load_torch_file
from tinyllama_model.training.run_layout import list_checkpoints, step_of
from tinyllama_model.training.run_state import (
    CHECKPOINT_FORMAT,
    CheckpointMismatchError,
    diff_identity,
    read_checkpoint,
    rng_state,
    set_rng_state,
    truncate_metrics,
    write_checkpoint,
)


def test_checkpoints_are_listed_by_step_and_temporary_files_are_not(tmp_path):
    assert list_checkpoints(tmp_path / "absent") == []
    for name in ("step-00000100.pt", "step-00000020.pt", ".step-00000300.pt.123.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [20, 100]


def test_writing_keeps_the_last_checkpoints_only(tmp_path):
    for step in (10, 20, 30):
        path = write_checkpoint({"step": step}, tmp_path, step, keep_last=2)
        assert load_torch_file(path) == {"step": step}
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020.pt", "step-00000030.pt"]


def test_reading_refuses_another_format_or_identity(tmp_path):
    identity = {"model": {"dim": 32}, "train": {"lr": 0.1}, "world_size": 1}
    path = write_checkpoint({"format": CHECKPOINT_FORMAT, "identity": identity}, tmp_path, 1, keep_last=1)
    assert read_checkpoint(path, identity, tmp_path)["identity"] == identity
    other = {**identity, "model": {"dim": 48}}
    with pytest.raises(CheckpointMismatchError, match=r"model\.dim: checkpoint 32 vs now 48"):
        read_checkpoint(path, other, tmp_path)
    old = write_checkpoint({"format": 1, "identity": identity}, tmp_path, 2, keep_last=1)
    with pytest.raises(CheckpointMismatchError, match="not a training checkpoint"):
        read_checkpoint(old, identity, tmp_path)


def test_identity_diff_names_nested_keys():
    theirs = {"model": {"dim": 32, "n_layers": 2}, "world_size": 1}
    ours = {"model": {"dim": 32, "n_layers": 4}, "world_size": 2}
    assert diff_identity(theirs, ours) == [
        "model.n_layers: checkpoint 2 vs now 4",
        "world_size: checkpoint 1 vs now 2",
    ]


def test_metrics_after_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    truncate_metrics(path, 5)  # no file yet: nothing to do
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 2, 3)))
    truncate_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 2]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    path = write_checkpoint({"rng": rng_state()}, tmp_path, 1, keep_last=1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_torch_file(path)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]
