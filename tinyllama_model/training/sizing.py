"""How big a model a compute budget buys, and the named presets built on that rule.

The rule (`size_for_budget`): a budget of C training FLOPs trains a model of N matmul parameters on
D = C / flops_per_token tokens (flops_per_token ~ 6N plus attention). Chinchilla (Hoffmann et al., 2022)
puts the compute-optimal point near D = 20 N. A small corpus caps D: repeating data beyond a few epochs
buys little (Muennighoff et al., 2023, "Scaling Data-Constrained Language Models": up to ~4 epochs are
almost as good as fresh tokens), so D is also capped at `max_epochs` passes over the corpus (default 5:
on the 3.6 MB dev corpus, ~5 epochs of a small model beat ~1.5 of a larger one at equal FLOPs). We pick
the largest shape on a ladder of LLaMA-like shapes whose token count still reaches min(20 N, max_epochs
* corpus tokens): compute-optimal when data is plentiful, and when it is not, the rest of the budget
goes into parameters rather than into more repeats. On the dev corpus (1M tokens at vocabulary 2048)
and 10 quiet CPU minutes (~4.7e13 FLOPs) it picks the 10-minute preset's shape, dim 128 x 4 layers.

A budget in minutes becomes FLOPs through a FLOP/s figure: given, or measured (`hardware.cpu_matmul_rates`,
in the dtype the trainer's probe picks: bf16 on CPUs that run it >= 1.5x faster, else fp32) times the
share of it training reaches (`mfu`; the 10-minute preset reaches about 0.4-0.7 of a bare fp32 matmul on
a 2-core CPU).

Presets are small functions returning `(ModelConfig, TrainConfig, tokenizer vocab size)`:
`default()` is the original design (512/8/8, vocab 12,000), `debug()` the tiny shape tests use and
`cpu_10min()` the tuned 10-minute CPU recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tinyllama_model.hardware import BF16_MIN_SPEEDUP, cpu_matmul_rates, pick_cpu_dtype
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


# Held-out bits per byte of the tuning runs (dim 128 x 4 layers, vocabulary 2048 unless said):
# - vocabulary 2048 ~ 4096 (2.10 vs 2.12 at 8e12 FLOPs) > 1024 (2.15); 2048 runs ~30% more tokens/s;
# - more passes beat more parameters on this budget (up to ~5 epochs): at 2.5e13 FLOPs dim 128 on 3.1M
#   tokens 1.73 beats dim 192 on 1.6M tokens 1.83; in 3 minutes dim 192 1.93 and 6 layers 1.85 lose
#   to dim 128 x 4 layers 1.79;
# - shorter windows, more of them, at 2,048 tokens per step and 1.5M tokens: context 256 x batch 8 1.89,
#   128 x 16 1.87, 64 x 32 1.83, 32 x 64 1.80. The model is too small to use a long context (scoring
#   the context-256 model with 224 tokens of context instead of 128 changed nothing), while many short
#   windows give a less correlated batch and cheaper attention. At 10 minutes 32 is no better than
#   64 (1.618 vs 1.613), and 64 keeps a usable generation window;
# - Muon for the hidden matrices (tinyllama_model/training/optim.py): 1.83 against AdamW's 1.87 at context
#   128;
#   muon_lr 0.01 ~ 0.02 > 0.05. The AdamW rate of the embeddings and head, which also sets Muon's
#   decay per step, wants to be high: 2e-3 1.79, 4e-3 1.78, 8e-3 1.76, 1.6e-2 1.73, 3.2e-2 1.78 (3 min).
# - tied embeddings, dropout 0.1, a floor of 0, DDP over the 2 cores: no better (within ~0.01) or worse.
# - the speedrun levers (benchmarks/quality_10min.py at 400k tokens, 1 thread, held-out bpb on split
#   seeds 0 / 1; baseline 2.037 / 2.188): QK-norm 1.981 / 2.127; value embeddings 2.037 / 2.180, soft-cap 15
#   2.035, zero-init projections 2.035: within noise; ReLU^2 2.062 and a head at lr 4e-3 2.052: worse.
# - the same at equal minutes on a quiet machine, in pairs, one 1-thread run per core: at 3 minutes QK-norm
#   (1.785 vs 1.828 on split 0, 1.993 vs 2.044 on split 1) and value embeddings (1.788) win, torch.compile
#   less (1.811: +6% tokens, compile time included), QK-norm at muon_lr 0.03 ties (1.826), weight decay
#   0.3 loses (1.846). At 10 minutes the wins shrink to run-to-run noise (two baseline runs on split 1:
#   1.786 and 1.788): baseline 1.638 / 1.786, QK-norm 1.635 on split 0, value embeddings 1.625 / 1.790,
#   both together 1.634 / 1.781.
#   They speed up early training, not where ten minutes end, so none is in the recipe (and the recipe
#   stays exportable to transformers, which can express none of them).
# - at 10 minutes (baseline 1.638, 2.98M tokens): compile 1.631 (3.16M); compile + Muon stacked per shape
#   1.633 (3.35M), 1.782 on split 1 (baseline 1.786): kept. Not: batch 64 1.638, dim 160 1.650, weight decay
#   0.3 1.653 / 1.802 or 0 1.631 / 1.790, a cosine to 0 1.642. On 2 threads 18% more tokens bought nothing
#   (1.613 -> 1.615): the ~1M training tokens, not FLOPs, bound this shape.
# - on a 2-core AMX Xeon (bf16 matmul ~3x fp32 on 2 threads; compiled training 2.0x at dim 192, 2.4x at
#   256), 10 minutes, split 0 / 1: fp32 128 x 4 1.619 on 10.4M tokens (9.8 epochs: data-bound), bf16 192 x 5
#   1.599 / 1.775 on 10.2M, 256 x 6 (this rule) 1.575 / 1.752 on 5.6M, with dropout 0.1 1.603 (-40% tok/s).
#   Larger: 320 x 6 1.5575 / 1.7303 (4.7M tokens, 4.4 epochs), 384 x 6 1.5571 on split 0 (3.2M, 3.1 epochs).
#   The rule's 4x under-reads this machine (its fp32 alone is ~2x the tuning machine's), but only the ratio
#   is load-stable.
#   Context 128 at batch 16: 256 x 6 1.569 (-0.006), 320 x 6 1.558 (+0.0005), fp32 128 x 4 on one thread
#   1.612 against 1.606 at context 64: kept 64.
#   With the whole final preset (experts, adaptation, the average; 233c118): 256 x 6 1.3822 / 1.4478 held out,
#   320 x 6 1.4573 on split 1 (4.3M tokens against 5.9M): the larger shape no longer wins, the 4x stays.
# - two networks at once, one per core (1 thread each, seeds 1337 / 4242), their probabilities averaged
#   under the whole mixture (offline, split 1): each alone 1.5174 / 1.5191 on 2.7M tokens, together 1.4967,
#   the same as one 2-thread network (1.4977): what the pair gains, each member's half throughput loses.
def cpu_10min(rates: dict[str, float] | None = None) -> tuple[ModelConfig, TrainConfig, int]:
    """Ten minutes on a 2-core CPU, tuned on the 3.6 MB AI-Wikipedia dev corpus (benchmarks/quality_10min.py).

    The shape follows this machine's matmul probe (`rates`, measured when not given): where bf16 runs
    faster and the trainer will use it, the ten minutes buy `speedup` times the FLOPs the recipe was tuned
    at, and `size_for_budget` picks the shape for that budget; on an fp32 CPU the speedup is exactly 1
    and the shape is the tuned one. Only the speedup ratio is used, not the absolute rate; it is
    measured on one thread and rounded down to a power of two, so load does not move the shape (and the
    fingerprint) from one run to the next. On an AMX Xeon the 2-thread ratio read 2.9-3.9x quiet and
    past 8x with the other core busy (AMX gains nothing from a second thread at the probe's size, fp32
    does), which moved the shape from dim 192 to 256 to 320; on one thread it read 5.6-7.0x. The dtype
    itself is `auto`: the trainer probes again on the machine that trains. Why this recipe: the
    tuning runs listed above.
    """
    vocab, context = 2048, 64
    rates = rates or cpu_matmul_rates(threads=1)
    speedup = 2.0 ** math.floor(math.log2(rates[pick_cpu_dtype(rates)] / rates["float32"]))
    budget = CPU_10MIN_TUNED_FLOPS * speedup
    model = size_for_budget(budget, CPU_10MIN_TUNED_CORPUS_TOKENS, vocab_size=vocab, seq_len=context).model
    train = TrainConfig(
        batch_size=32,
        optimizer="muon",
        compile=True,  # fp32 +6% tokens in ten minutes, bf16 (AMX) +34%; eager where there is no C++ compiler
        muon_lr=0.02,
        lr=1.6e-2,
        # with the average below, a higher floor: at 0.05 the average's validation rose over the last
        # 400-600 steps (memorising); at 0.3 it falls to the end. Held out 1.4345 / 1.4966 on 4.10M /
        # 4.70M tokens against 1.4344 / 1.4982 on 4.91M / 5.37M at 0.05 (one run each, the host's speed
        # moving)
        min_lr_ratio=0.3,
        warmup_steps=60,
        # validate, keep and publish the weights' moving average (0.995: the last ~200 of ~2,000-3,000
        # steps): held out 1.4338 -> 1.4309 / 1.5014 -> 1.4988 on one run each, the network alone
        # 1.6157 -> 1.6075 / 1.7717 -> 1.7654 (0.997: 1.4298 on split 0; 0.998: 1.4998 on split 1)
        ema_decay=0.995,
        max_minutes=10.0,
        eval_every=500,
        eval_tokens=32_768,
        checkpoint_every=200,
        keep_last=1,
        # the network divides its logits by the temperature that scores the validation split best with the
        # document cache and corpus n-grams: alone it is overconfident on text it never saw. That fit wants
        # 1.1 / 1.15 (splits 1 / 0); the whole mixture, adapted, 1.05-1.1 on both, on the validation split
        # too: held out 1.4954 / 1.4322 at 1.1, 1.4962 / 1.4331 at 1.15, 1.4977 / 1.4334 at 1 (README)
        calibration_temperatures=(1.05, 1.1),
        doc_cache_orders=3,  # held-out bpb -0.10 / -0.17 on the two splits (fp32 preset, AVX2 EPYC)
        corpus_ngram_orders=4,  # and then about -0.04 / -0.02 more (the same models, fitted offline)
        # dynamic evaluation, each tensor's step scaled by 1 / its gradient's RMS: then -0.036 / -0.056
        # (offline, 2e-4 / 3e-4 best, -0.003 / -0.007 against plain SGD; 4e-4 and stride 16 no better)
        # (chosen with a share of the unadapted network mixed in, as refitted below, 4e-4 can win)
        adapt_lrs=(2e-4, 3e-4, 4e-4),
        # then the mixture refitted on the adapted network, with that share, and the neural cache last:
        # 1.4393 / 1.4997 held out end to end, from 1.4654 / 1.5253; every weight refitted jointly after
        # (doc_cache.refit_chain): 1.4334 / 1.4977 (README, "Benchmarks")
        neural_cache_theta=15.0,
    )
    return model, train, vocab


PRESETS = {"default": default, "debug": debug, "cpu_10min": cpu_10min}
