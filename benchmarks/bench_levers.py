"""What each model lever costs in training speed at a preset's shape, measured in interleaved pairs.

    .venv/bin/python benchmarks/bench_levers.py [--preset cpu_10min] [--rounds 5] [--steps 8] [--threads N]
        [--lever relu2=model.mlp=relu2 --lever compile=train.compile=true ...]

On a machine shared with other jobs, two runs timed minutes apart see different loads. So every lever
gets its own `Trainer` (the real loop: sampling, forward, backward, clipping, optimizer), all built up
front, and then each round times `steps` optimizer steps of every trainer in turn. Each lever's figure is
the median over rounds of its tokens/s divided by the baseline's in the same round: a ratio that load
moves far less than it moves either rate. With `train.max_minutes` a ratio r means the lever sees r
times the baseline's tokens in the same minutes, which is how quality screens at a token budget convert
to equal minutes. Prints the CPU flags, the matmul rates and the load average with the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinyllama_model import hardware
from tinyllama_model.data import PackedTokens
from tinyllama_model.training import sizing
from tinyllama_model.training.trainer import Trainer

DEFAULT_LEVERS = (
    "relu2=model.mlp=relu2",
    "qk_norm=model.qk_norm=true",
    "zero_init_proj=model.zero_init_proj=true",
    "softcap15=model.logit_softcap=15",
    "value_embeds=model.value_embeds=true",
    "head_lr=train.head_lr=0.004",
)


def configs(preset: str, levers: list[str], threads: int | None):
    """(name, model config, train config) for the baseline and each `name=section.field=value` lever."""
    model_cfg, train_cfg, vocab = sizing.PRESETS[preset]()
    model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab)
    train_cfg = dataclasses.replace(
        train_cfg,
        max_steps=10**9,
        max_minutes=None,
        eval_every=10**9,
        checkpoint_every=10**9,
        peak_flops=1.0,
        num_threads=threads,
    )
    out = [("baseline", model_cfg, train_cfg)]
    for lever in levers:
        name, _, assignment = lever.partition("=")
        key, _, raw = assignment.partition("=")
        section, _, field = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:  # a bare string: train.dtype=float32 (not JSON false + junk)
            value = raw
        m, t = model_cfg, train_cfg
        if section == "model":
            m = dataclasses.replace(m, **{field: value})
        elif section == "train":
            t = dataclasses.replace(t, **{field: value})
        else:
            raise SystemExit(f"--lever {lever}: section must be model or train")
        out.append((name, m, t))
    return out


def time_steps(trainer: Trainer, steps: int) -> float:
    """tokens/s over `steps` optimizer steps (the loop's own step, at a fixed learning rate)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._timed_step(trainer.cfg.lr)
    return steps * trainer.tokens_per_step / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu_10min", choices=sorted(sizing.PRESETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per lever per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    parser.add_argument("--lever", dest="levers", action="append", metavar="NAME=SECTION.FIELD=VALUE")
    args = parser.parse_args()
    machine = hardware.machine_line()
    load_before = os.getloadavg()
    specs = configs(args.preset, args.levers or list(DEFAULT_LEVERS), args.threads)
    vocab = specs[0][1].vocab_size
    rng = np.random.default_rng(0)
    train = PackedTokens(rng.integers(4, vocab, size=400_000).astype(np.uint16))
    val = PackedTokens(rng.integers(4, vocab, size=1_000).astype(np.uint16))
    rates: dict[str, list[float]] = {name: [] for name, _, _ in specs}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: Trainer(m, t, train, val, Path(tmp) / name, progress=False) for name, m, t in specs}
        for trainer in trainers.values():
            time_steps(trainer, 2)  # warm up (and compile, where asked)
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                rates[name].append(time_steps(trainer, args.steps))
    load_after = os.getloadavg()
    dtype = trainers["baseline"].compute_dtype
    print(f"\n{machine}; trained in {dtype}; load {load_before[0]:.2f} -> {load_after[0]:.2f}\n")
    print("| lever | params | median tokens/s | tokens/s vs baseline (median of paired ratios) |")
    print("|---|---|---|---|")
    base = rates["baseline"]
    for name, trainer in trainers.items():
        ratio = statistics.median(r / b for r, b in zip(rates[name], base, strict=True))
        tok_s = statistics.median(rates[name])
        print(f"| {name} | {trainer.model.num_params():,} | {tok_s:,.0f} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
