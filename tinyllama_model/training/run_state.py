"""The run directory, and the training state a checkpoint carries across a restart.

Run directory (rank 0 writes it):
    run.json             model + train config and the data files (written by `launch.write_run_spec`)
    checkpoints/         step-0000100.pt ...: the last `keep_last` full training states
    best/                the model directory with the lowest validation loss so far
    metrics.jsonl        one JSON row per step (train) and per evaluation (val), keyed by "step"
    result.json          final summary, written when training ends

Exact resume: a checkpoint holds the model, optimizer state, step/token/elapsed counters, the sampler's
`(epoch, index)` position, the best validation loss so far and every RNG state (torch, CUDA, numpy,
python). The learning rate is a pure function of those counters (`train_config.lr_at`), so there is no
scheduler object to save. Restarting from a checkpoint on CPU with a step/token/epoch budget gives
weights bit-identical to the uninterrupted run (a wall-clock budget is inherently timing-dependent).

This module knows file names, checkpoint files, the checkpoint's identity check and the process RNGs;
the trainer decides what goes into a checkpoint and applies what comes out.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyllama_model.checkpoint import load_torch_file, save_torch_file
from tinyllama_model.files import atomic_write
from tinyllama_model.training.run_layout import list_checkpoints

CHECKPOINT_FORMAT = 2  # 2: optimizer state keyed by optimizer name (adamw, muon)


class CheckpointMismatchError(ValueError):
    """A checkpoint written by another model or train config than the one resuming from it."""


# -- checkpoint files --------------------------------------------------------------------------------


def write_checkpoint(state: dict[str, Any], directory: Path, step: int, keep_last: int) -> Path:
    """Save `state` atomically as the checkpoint of `step` and delete all but the last `keep_last`."""
    path = save_torch_file(state, directory / f"step-{step:08d}.pt")
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path, identity: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The training state in `path`, refused unless this trainer wrote it with the same `identity`."""
    state = load_torch_file(path, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{path} is not a training checkpoint of this trainer (format {CHECKPOINT_FORMAT}); "
            "train in a fresh run directory"
        )
    if identity != state["identity"]:
        diffs = diff_identity(state["identity"], identity)
        raise CheckpointMismatchError(
            f"{path} was written by a different configuration ({'; '.join(diffs[:6])}). Resume with the "
            f"configuration it was written with, or train in a fresh run directory, not {run_dir} "
            "(the existing checkpoints were left untouched)"
        )
    return state


def diff_identity(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    """Every leaf that differs, as "model.dim: checkpoint 32 vs now 48" (nested keys joined by dots)."""
    out = []
    for k in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(k), ours.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_identity(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r} vs now {b!r}")
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows logged after `step` (a killed run's, to be logged again by the resumed one)."""
    if not path.is_file():
        return
    rows = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    atomic_write(path, "".join(r + "\n" for r in rows))


# -- random number generators ------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG as plain tensors/numbers (weights_only loading accepts nothing else)."""
    _kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
