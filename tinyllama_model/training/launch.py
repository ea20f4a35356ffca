"""Start a training run from its run directory: one process, or several under `torchrun` for DDP.

`write_run_spec` describes a run in `run.json` (model and train config, the packed data files, the
tokenizer) so that a fresh process can rebuild its `Trainer` from the run directory alone:
`python -m tinyllama_model.training.launch RUN_DIR`, or the same module under `torchrun --nproc_per_node N`.
This is the only module that creates a process group; the trainer finds one set up, or none.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tinyllama_model.data import PackedTokens
from tinyllama_model.files import atomic_write
from tinyllama_model.model import ModelConfig
from tinyllama_model.training.run_layout import RUN_SPEC
from tinyllama_model.training.train_config import TrainConfig
from tinyllama_model.training.trainer import Trainer


def write_run_spec(
    run_dir: str | Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    token_dtype: str,
    val_bytes_per_token: float | None,
    tokenizer_file: str | Path | None,
    train_file: str = "train.bin",
    val_file: str = "val.bin",
) -> Path:
    """Describe a run so that `python -m tinyllama_model.training.launch RUN_DIR` (or torchrun) can
    start it."""
    spec = {
        "model": model_cfg.to_dict(),
        "train": cfg.to_dict(),
        "token_dtype": token_dtype,
        "train_file": train_file,
        "val_file": val_file,
        "val_bytes_per_token": val_bytes_per_token,
        "tokenizer_file": None if tokenizer_file is None else str(tokenizer_file),
    }
    path = Path(run_dir) / RUN_SPEC
    atomic_write(path, json.dumps(spec, indent=2))
    return path


def trainer_from_run_dir(run_dir: str | Path, **kwargs: Any) -> Trainer:
    """The `Trainer` that run.json describes; `kwargs` go to it (on_metrics, progress)."""
    run_dir = Path(run_dir)
    spec_path = run_dir / RUN_SPEC
    if not spec_path.is_file():
        raise FileNotFoundError(f"no {RUN_SPEC} in {run_dir}; write one with write_run_spec")
    spec = json.loads(spec_path.read_text())
    dtype = np.dtype(spec["token_dtype"])
    return Trainer(
        ModelConfig.from_dict(spec["model"]),
        TrainConfig.from_dict(spec["train"]),
        PackedTokens.from_file(run_dir / spec["train_file"], dtype),
        PackedTokens.from_file(run_dir / spec["val_file"], dtype),
        run_dir,
        val_bytes_per_token=spec["val_bytes_per_token"],
        tokenizer_file=spec["tokenizer_file"],
        **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m tinyllama_model.training.launch RUN_DIR`, alone or under `torchrun --nproc_per_node N`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a directory holding run.json (see write_run_spec)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)  # rank, world and rendezvous from torchrun's env vars
    try:
        trainer_from_run_dir(args.run_dir, progress=not args.quiet).fit()
        if world > 1:
            # DDP holds the process group inside reference cycles. Left to interpreter exit, gloo's
            # threads can abort the process ("terminate called without an active exception", seen once
            # on rank 1 after its last step), so collect them now, and let every rank finish first
            gc.collect()
            dist.barrier()
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
