"""How big a model a compute budget buys, and the named presets built on that rule.

The rule (`size_for_budget`): a budget of C training FLOPs trains a model of N matmul parameters on
D = C / flops_per_token tokens (flops_per_token ~ 6N plus attention). Chinchilla (Hoffmann et al., 2022)
puts the compute-optimal point near D = 20 N. A small corpus caps D: repeating data beyond a few epochs
buys little (Muennighoff et al., 2023, "Scaling Data-Constrained Language Models": up to ~4 epochs are
almost as good as fresh tokens), so D is also capped at `max_epochs` passes over the corpus (default 5;
the runs behind it: docs/tuning-log.md). We pick
the largest shape on a ladder of LLaMA-like shapes whose token count still reaches min(20 N, max_epochs
* corpus tokens): compute-optimal when data is plentiful, and when it is not, the rest of the budget
goes into parameters rather than into more repeats. On the dev corpus (1M tokens at vocabulary 2048)
and 10 quiet CPU minutes (~4.7e13 FLOPs) it picks the 10-minute preset's shape, dim 128 x 4 layers.

A budget in minutes becomes FLOPs through a FLOP/s figure: given, or measured (`hardware.cpu_matmul_rates`,
in the dtype the trainer's probe picks: bf16 on CPUs that run it >= 1.5x faster, else fp32) times the
share of it training reaches (`mfu`; measured per preset in docs/benchmarks.md).

Presets are small functions returning `(ModelConfig, TrainConfig, tokenizer vocab size)`:
`default()` is the original design (512/8/8, vocab 12,000), `debug()` the tiny shape tests use and
`cpu_10min()` the tuned 10-minute CPU recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tinyllama_model.hardware import BF16_MIN_SPEEDUP, cpu_matmul_rates, pick_cpu_dtype
from tinyllama_model.mixture.config import MixtureConfig
from tinyllama_model.model import ModelConfig
from tinyllama_model.training.train_config import TrainConfig

CHINCHILLA_TOKENS_PER_PARAM = 20.0

# (dim, n_layers, n_heads): widths and depths of small LLaMA-like models, head_dim 32 up to dim 256
# and 64 above (small heads keep attention meaningful at small widths).
LADDER: tuple[tuple[int, int, int], ...] = (
    (64, 2, 2),
    (96, 3, 3),
    (128, 4, 4),
    (160, 4, 5),
    (192, 5, 6),
    (256, 6, 8),
    (320, 6, 5),
    (384, 8, 6),
    (512, 8, 8),
    (640, 10, 10),
    (768, 12, 12),
    (1024, 16, 16),
)


def shape_config(dim: int, n_layers: int, n_heads: int, vocab_size: int, seq_len: int) -> ModelConfig:
    """A ladder shape as a ModelConfig (FFN width rounded up to 32, not 256, which bloats small models)."""
    return ModelConfig(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_size=vocab_size,
        max_seq_len=seq_len,
        multiple_of=32,
    )


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that cost FLOPs per token: all but the embedding lookup (unless it is tied)."""
    return cfg.num_params() - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim)


@dataclass
class SizingChoice:
    model: ModelConfig
    tokens: int  # training tokens the budget buys at this size
    epochs: float  # tokens / corpus tokens
    tokens_per_param: float
    data_limited: bool  # True: the epoch cap, not 20 tokens/param, set the size


def size_for_budget(
    budget_flops: float,
    corpus_tokens: int,
    *,
    vocab_size: int,
    seq_len: int = 256,
    max_epochs: float = 5.0,
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
    ladder: tuple[tuple[int, int, int], ...] = LADDER,
) -> SizingChoice:
    """The largest ladder shape whose token budget reaches min(tokens_per_param * N, max_epochs * corpus)."""
    if budget_flops <= 0 or corpus_tokens <= 0:
        raise ValueError(
            f"need a positive budget and corpus (got {budget_flops:.3g} FLOPs, {corpus_tokens} tokens)"
        )
    data_cap = max_epochs * corpus_tokens
    best: SizingChoice | None = None
    for dim, n_layers, n_heads in ladder:
        cfg = shape_config(dim, n_layers, n_heads, vocab_size, seq_len)
        n = matmul_params(cfg)
        tokens = budget_flops / cfg.flops_per_token(seq_len)
        wanted = min(tokens_per_param * n, data_cap)
        if best is None or tokens >= wanted:
            best = SizingChoice(
                cfg,
                int(tokens),
                tokens / corpus_tokens,
                tokens / n,
                data_limited=tokens_per_param * n > data_cap,
            )
        if tokens < wanted:
            break
    assert best is not None
    return best


def budget_flops(
    minutes: float,
    flops_per_s: float | None = None,
    mfu: float = 0.4,
    *,
    min_bf16_speedup: float = BF16_MIN_SPEEDUP,
) -> float:
    """Training FLOPs in `minutes` here: measured (or given) matmul FLOP/s times the MFU training reaches.

    Measured: the matmul rate of the dtype training will compute in on this CPU (bf16 where the
    trainer's probe picks it, the same rule with the same threshold, else fp32), so a CPU with native
    bf16 buys a larger model and the sizing never assumes the machine it was tuned on.
    """
    if not flops_per_s:
        rates = cpu_matmul_rates()
        flops_per_s = rates[pick_cpu_dtype(rates, min_bf16_speedup)]
    return minutes * 60.0 * flops_per_s * mfu


# -- presets ---------------------------------------------------------------------------------------


def default() -> tuple[ModelConfig, TrainConfig, int]:
    """The original design: dim 512, 8 layers, 8 heads, context 512, vocabulary 12,000."""
    return ModelConfig(), TrainConfig(), 12_000


def debug() -> tuple[ModelConfig, TrainConfig, int]:
    """A model of a few ten thousand parameters that trains in seconds: tests and the offline demo."""
    model = ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=512, max_seq_len=64, multiple_of=32)
    train = TrainConfig(
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        max_steps=50,
        max_minutes=None,
        eval_every=25,
        checkpoint_every=25,
    )
    return model, train, 512


# where the 10-minute recipe was tuned: ~4.7e13 FLOPs in 10 quiet minutes of fp32 on a 2-core Zen 3 (AVX2),
# ~1M training tokens of the dev corpus at vocabulary 2048
CPU_10MIN_TUNED_FLOPS = 4.7e13
CPU_10MIN_TUNED_CORPUS_TOKENS = 1_000_000


# Why this recipe: the tuning runs in docs/tuning-log.md (sections 1, 2 and 7).
def cpu_10min(rates: dict[str, float] | None = None) -> tuple[ModelConfig, TrainConfig, int]:
    """Ten minutes on a 2-core CPU, tuned on the 3.6 MB AI-Wikipedia dev corpus (benchmarks/quality_10min.py).

    The shape follows this machine's matmul probe (`rates`, measured when not given): where bf16 runs
    faster and the trainer will use it, the ten minutes buy `speedup` times the FLOPs the recipe was tuned
    at, and `size_for_budget` picks the shape for that budget; on an fp32 CPU the speedup is exactly 1
    and the shape is the tuned one. Only the speedup ratio is used, not the absolute rate; it is
    measured on one thread and rounded down to a power of two, so load does not move the shape (and the
    fingerprint) from one run to the next (the 2-thread ratio moves with load: docs/tuning-log.md). The
    dtype itself is `auto`: the trainer probes again on the machine that trains.
    """
    vocab, context = 2048, 64
    rates = rates or cpu_matmul_rates(threads=1)
    speedup = 2.0 ** math.floor(math.log2(rates[pick_cpu_dtype(rates)] / rates["float32"]))
    budget = CPU_10MIN_TUNED_FLOPS * speedup
    model = size_for_budget(budget, CPU_10MIN_TUNED_CORPUS_TOKENS, vocab_size=vocab, seq_len=context).model
    train = TrainConfig(
        batch_size=32,
        optimizer="muon",
        compile=True,  # eager where there is no C++ compiler; its gain: docs/tuning-log.md
        muon_lr=0.02,
        lr=1.6e-2,
        # a higher floor, so that the average below keeps improving to the end (docs/tuning-log.md)
        min_lr_ratio=0.3,
        warmup_steps=60,
        # validate, keep and publish the weights' moving average over about the last 200 steps
        ema_decay=0.995,
        max_minutes=10.0,
        eval_every=500,
        eval_tokens=32_768,
        checkpoint_every=200,
        keep_last=1,
        mixture=MixtureConfig(
            # logits divided by the temperature that scores the validation split best (docs/mixture.md)
            calibration_temperatures=(1.05, 1.1),
            # the test-time mixture (docs/mixture.md); what each part gained: docs/tuning-log.md
            doc_cache_orders=3,
            corpus_ngram_orders=4,
            adapt_lrs=(2e-4, 3e-4, 4e-4),  # dynamic evaluation's candidate rates, each tensor's step scaled
            neural_cache_theta=15.0,
        ),
    )
    return model, train, vocab


PRESETS = {"default": default, "debug": debug, "cpu_10min": cpu_10min}
