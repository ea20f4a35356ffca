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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tinyllama_model.files import atomic_path, atomic_write
from tinyllama_model.model_config import ModelConfig, file_config, flat_config

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"  # same name as tinyllama_model.tokenizer.TOKENIZER_FILE
MAX_CONFIG_BYTES = 1 << 24  # a config.json larger than this is not one this project wrote


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
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write config.json + model.safetensors (+ tokenizer.model) to `directory`, replacing it atomically.

    `state` must hold each tensor once (safetensors refuses aliases: a tied output head is left out).
    `write_extra(staging)` adds files that go with the weights (the corpus n-grams' tokens).
    """
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def build(staging: Path) -> None:
        (staging / CONFIG_FILE).write_text(json.dumps(file_config(config), indent=2, sort_keys=True) + "\n")
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, staging / TOKENIZER_FILE)
        if write_extra is not None:
            write_extra(staging)

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
    if (size := config_path.stat().st_size) > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{config_path} is {size:,} bytes, above the bound of {MAX_CONFIG_BYTES:,} (a model's settings "
            "and fitted weights take a few kB, adapt_scales ~50 bytes a tensor); restore the config.json "
            "saved with these weights"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{config_path} holds a JSON {_json_kind(config)}, not an object of model settings such as "
            '{"dim": 512, "n_layers": 8, ...}; restore the config.json saved with these weights'
        )
    return config


def update_model_config(directory: str | Path, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Set `changes` in a model directory's config.json (the fits after training write their weights so),
    checked as a `ModelConfig` and written atomically: a failed update leaves the old file. The `mixture`
    object is merged key by key, so experts fitted one after another each keep their entries."""
    old, new = flat_config(read_model_config(directory)), flat_config(dict(changes))
    config = {**old, **new}
    if new.get("mixture") and old.get("mixture"):
        config["mixture"] = {**old["mixture"], **new["mixture"]}
    config = file_config(ModelConfig.from_dict(config).to_dict())  # as config.json holds it now
    atomic_write(Path(directory) / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def read_model_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors of a model directory, on the CPU."""
    weights_path = Path(directory) / WEIGHTS_FILE
    try:
        return load_file(weights_path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path} is truncated or not a safetensors file: {e}") from e


def read_weight_shapes(directory: str | Path) -> dict[str, torch.Size]:
    """Name and shape of every tensor in model.safetensors, from the file's header (no tensor is read)."""
    weights_path = Path(directory) / WEIGHTS_FILE
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            names = list(f.keys())
            return {name: torch.Size(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path} is truncated or not a safetensors file: {e}") from e


def check_loadable(directory: str | Path, expected: Mapping[str, tuple[int, ...]], model_bytes: int) -> None:
    """Refuse a model directory whose config.json cannot be loaded, before any tensor is allocated.

    `expected` are the shapes of the tensors that the model config.json describes stores, `model_bytes`
    the memory that model takes with what it loads beside its weights (the caller computes both from the
    config, without building anything). Two limits, each with its reason:
    - the weights file must hold exactly those tensors (its header says): a config.json that was edited,
      or copied from another model, is named before it asks for any memory;
    - the model plus the weights loaded beside it must fit in this machine's memory: a config.json that
      matches its weights yet sizes buffers in terabytes (RoPE tables, a corpus file's n-gram tables)
      fails here, not in the allocator or by swapping the machine to a halt.
    """
    directory = Path(directory)
    weights_path = directory / WEIGHTS_FILE
    sizes = _sizes(read_model_config(directory))  # for the messages
    if mismatch := _mismatch(read_weight_shapes(directory), expected):
        raise CheckpointError(
            f"the weights in {weights_path} do not match its {CONFIG_FILE} ({sizes}): {mismatch}. "
            "Was config.json edited, or copied from another model? Nothing was loaded"
        )
    needed, memory = model_bytes + weights_path.stat().st_size, memory_bytes()
    if memory is not None and needed > memory:
        raise CheckpointError(
            f"{directory / CONFIG_FILE} ({sizes}) needs {_gib(needed)} to load, more than this machine's "
            f"{_gib(memory)} of memory; nothing was allocated. Check its max_seq_len, or load the model "
            "on a machine with more memory"
        )


def memory_bytes() -> int | None:
    """This machine's physical memory, where the OS says (Linux, macOS); None where it does not."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _mismatch(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str:
    """Missing, unexpected and mis-shaped tensors, or "" when the file holds exactly what is expected."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: file {tuple(found[k])} vs config {tuple(expected[k])}"
        for k in sorted(set(found) & set(expected))
        if tuple(found[k]) != tuple(expected[k])
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", shapes)):
        if items:
            parts.append(f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}")
    return "; ".join(parts)


def _sizes(config: dict[str, Any]) -> str:
    """The integer settings of a model config, which decide its size: `dim=512, n_layers=8, ...`."""
    return ", ".join(f"{k}={v}" for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool))


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


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
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
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
