"""Training throughput: tokens/s and MFU of the real training loop, default size and 10-minute preset.

    .venv/bin/python benchmarks/bench_train.py [--steps 4] [--warmup 2] [--threads N]
        [--presets default,cpu_10min]

Each row runs `Trainer.fit` (data sampling, forward, backward, clipping, AdamW) on a synthetic packed
stream for `warmup + steps` optimizer steps and times the last `steps`. MFU = flops_per_token * tokens/s
divided by the fp32 matmul FLOP/s measured in the same run, just before and just after the row (their mean,
so a machine shared with other jobs is compared with itself). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from tinyllama_model import hardware
from tinyllama_model.data import PackedTokens
from tinyllama_model.training import sizing
from tinyllama_model.training.trainer import Trainer


def bench_preset(name: str, steps: int, warmup: int, threads: int | None) -> dict:
    model_cfg, train_cfg, vocab = sizing.PRESETS[name]()
    model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab)
    seq_len = train_cfg.seq_len or model_cfg.max_seq_len
    rng = np.random.default_rng(0)
    n_tokens = max(200_000, 4 * (steps + warmup) * train_cfg.batch_size * train_cfg.grad_accum * seq_len)
    train = PackedTokens(rng.integers(4, vocab, size=n_tokens).astype(np.uint16))
    val = PackedTokens(rng.integers(4, vocab, size=seq_len + 1).astype(np.uint16))
    cfg = dataclasses.replace(
        train_cfg,
        max_steps=warmup + steps,
        max_minutes=None,
        max_tokens=None,
        max_epochs=None,
        eval_every=10**9,
        eval_tokens=seq_len,
        checkpoint_every=10**9,
        num_threads=threads,
        peak_flops=1.0,  # measured around the row instead
    )
    peak_before = hardware.measure_matmul_flops(seconds=1.0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(model_cfg, cfg, train, val, Path(tmp), on_metrics=rows.append, progress=False).fit()
    peak = (peak_before + hardware.measure_matmul_flops(seconds=1.0)) / 2
    timed = [r["tokens_per_s"] for r in rows if "train_loss" in r][warmup:]
    tok_s = statistics.median(timed)
    flops_per_token = model_cfg.flops_per_token(seq_len)
    return {
        "preset": name,
        "params": model_cfg.num_params(),
        "tokens/step": cfg.batch_size * cfg.grad_accum * seq_len,
        "tokens/s": tok_s,
        "achieved GFLOP/s": flops_per_token * tok_s / 1e9,
        "fp32 matmul GFLOP/s": peak / 1e9,
        "MFU": flops_per_token * tok_s / peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="default,cpu_10min")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per preset")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [bench_preset(p, args.steps, args.warmup, args.threads) for p in args.presets.split(",")]
    print(f"\n{hardware.machine_line()}\n")
    print("| preset | params | tokens/step | tokens/s | achieved GFLOP/s | fp32 matmul GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['tokens/step']:,} | {r['tokens/s']:,.0f} | "
            f"{r['achieved GFLOP/s']:.1f} | {r['fp32 matmul GFLOP/s']:.1f} | {r['MFU']:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
