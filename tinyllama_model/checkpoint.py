"""Model files on disk: the self-describing model directory, and safe loading of torch files.

A model directory holds `config.json` (the `ModelConfig`), `model.safetensors` (the weights; no code
can hide in it) and, when the caller has one, `tokenizer.model`. Everything downstream (generate,
evaluate, export, register) rebuilds the model from this directory alone.

This module moves config dicts and state dicts to and from disk and never builds a model: that is
`TinyLlama.save_pretrained` / `from_pretrained` in model.py, which call down into this module.

Writes are atomic: a directory is built under a temporary name beside the target and renamed into
place only when complete, so a crash never leaves a half-written model where a complete one was.
Torch pickles (training checkpoints) are only ever read with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"  # same name as tinyllama_model.tokenizer.TOKENIZER_FILE


class CheckpointError(ValueError):
    """A model file or directory that cannot be loaded; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointError):
    """A torch pickle that would run code or build arbitrary objects when loaded."""


# -- the model directory ----------------------------------------------------------------------------


def save_model_dir(
    directory: str | Path,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    tokenizer_file: str | Path | None = None,
) -> Path:
    """Write config.json + model.safetensors (+ tokenizer.model) to `directory`, replacing it atomically.

    `state` must hold each tensor once (safetensors refuses aliases: a tied output head is left out).
    """
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def build(staging: Path) -> None:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, staging / TOKENIZER_FILE)

    return write_dir_atomic(directory, build)


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a model directory as a dict, once both of its files are known to be there."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing; a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e


def read_model_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors of a model directory, on the CPU."""
    weights_path = Path(directory) / WEIGHTS_FILE
    try:
        return load_file(weights_path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path} is truncated or not a safetensors file: {e}") from e


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], where: str) -> None:
    """Raise a CheckpointError listing missing, unexpected and mis-shaped tensors (the config is wrong)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k]
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"wrong shapes {shapes[:5]}{' ...' if len(shapes) > 5 else ''}")
        raise CheckpointError(
            f"the weights in {where} do not match its {CONFIG_FILE}: {'; '.join(parts)}. "
            "Was config.json edited, or copied from another model?"
        )


def write_dir_atomic(directory: str | Path, build) -> Path:
    """Fill a fresh temporary directory with `build(staging)` and rename it to `directory`.

    An existing `directory` is moved aside only after the new one is complete, then deleted; if
    anything fails, the old directory stays as it was and the temporary one is removed.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        build(staging)
        _fsync_dir_files(staging)
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "dir")
        os.replace(staging, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


# -- torch pickles ----------------------------------------------------------------------------------


def save_torch_file(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file, then rename: a crash mid-save never clobbers the previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with `weights_only=True`: tensors, numbers, strings and containers, never code.

    A pickle that asks for anything else (a `__reduce__` calling os.system, a custom class) raises
    `UnsafeCheckpointError`; a truncated or corrupt file raises `CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it contains objects outside the safe set (tensors, numbers, "
                f"strings, containers), which could run code when unpickled. Only load checkpoints you "
                f"wrote yourself. Details: {_first_line(e)}"
            ) from e
        raise CheckpointError(f"{path} is not a valid torch checkpoint (corrupt pickle): {e}") from e
    except (EOFError, zipfile.BadZipFile, RuntimeError, OSError) as e:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {_first_line(e)}); "
            "the writer may have crashed mid-save: use an earlier checkpoint"
        ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
