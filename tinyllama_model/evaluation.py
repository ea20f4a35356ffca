"""Loss, perplexity and bits per byte of a model on a packed token stream. Pure functions, no I/O.

Bits per byte divides the summed negative log-likelihood (in bits) by the UTF-8 size of the text that
produced the tokens, so it does not depend on the tokenizer: a model with a larger vocabulary predicts
fewer, harder tokens, and bpb charges it for exactly the information in the text either way.

Two ways to cover a stream:
- `windows_nll` scores fixed non-overlapping windows (cheap; what the trainer validates with).
- `sliding_nll` scores every target exactly once, each with as much left context as the model's window
  allows: windows of `context` tokens advance by `stride`, and only the targets not scored by an earlier
  window count, so after the first window every target sees at least `context - stride` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyllama_model.mixture import registry
from tinyllama_model.mixture.adaptation import document_pass
from tinyllama_model.mixture.expert import Reading
from tinyllama_model.mixture.fitting import mixed_logprobs

LN2 = math.log(2.0)


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / (LN2 * n_bytes)


def summarize(nll_nats: float, n_tokens: int, n_bytes: int | None) -> dict[str, float | int | None]:
    """The numbers users compare: mean loss (nats/token), perplexity, bits per byte, and the counts."""
    loss = nll_nats / max(n_tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bpb": bits_per_byte(nll_nats, n_bytes) if n_bytes else None,
        "tokens": n_tokens,
        "bytes": n_bytes,
    }


def _nll_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: AbstractContextManager) -> float:
    with autocast:
        logits, _ = model(x)  # (B, T, V), float32
    return float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum"))


@torch.no_grad()
def windows_nll(
    model: nn.Module,
    tokens: np.ndarray,
    starts: np.ndarray,
    seq_len: int,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    autocast: AbstractContextManager | None = None,
) -> tuple[float, int]:
    """Summed NLL (nats) and target count over windows `tokens[s : s + seq_len + 1]` for s in starts."""
    autocast = autocast or nullcontext()
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        rows = np.stack(
            [np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts[i : i + batch_size]]
        )
        xy = torch.from_numpy(rows).to(device)  # (B, seq_len + 1)
        total += _nll_sum(model, xy[:, :-1], xy[:, 1:], autocast)
        count += xy.shape[0] * seq_len
    return total, count


def sliding_windows(n_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored) per window: inputs tokens[begin:end], targets tokens[begin+1:end+1].

    Targets at stream positions >= first_scored are scored; together the windows score positions
    1 .. n_tokens-1 exactly once.
    """
    if not 0 < stride <= context:
        raise ValueError(f"stride={stride} must be in [1, context={context}]")
    scored_to = 1  # next stream position whose prediction is not yet scored
    begin = 0
    while scored_to < n_tokens:
        end = min(begin + context, n_tokens - 1)
        yield begin, end, scored_to
        scored_to = end + 1
        begin = max(0, min(begin + stride, n_tokens - 1 - context))


def sliding_logprobs(
    model: nn.Module,
    tokens: np.ndarray,
    context: int,
    *,
    stride: int | None = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    autocast: AbstractContextManager | None = None,
) -> np.ndarray:
    """log p(tokens[t] | what precedes it) for t = 1 .. len-1 (index t - 1), each scored once (module doc)."""
    kwargs = {"stride": stride, "batch_size": batch_size, "device": device, "autocast": autocast}
    return tempered_logprobs(model, tokens, context, (1.0,), **kwargs)[0]


@torch.no_grad()
def tempered_logprobs(
    model: nn.Module,
    tokens: np.ndarray,
    context: int,
    temperatures: Sequence[float],
    *,
    stride: int | None = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    autocast: AbstractContextManager | None = None,
) -> np.ndarray:
    """`sliding_logprobs` with the logits divided by each temperature, (len(temperatures), len - 1), from
    one pass: what calibrating the network's confidence on a split costs (`TinyLlama.scale_logits`)."""
    autocast = autocast or nullcontext()
    stride = stride or max(1, context // 2)
    out = np.zeros((len(temperatures), max(len(tokens) - 1, 0)))
    batch: list[tuple[int, int, int]] = []

    def flush() -> None:
        x = torch.stack([torch.from_numpy(np.asarray(tokens[b:e], dtype=np.int64)) for b, e, _ in batch])
        y = torch.stack(
            [torch.from_numpy(np.asarray(tokens[b + 1 : e + 1], dtype=np.int64)) for b, e, _ in batch]
        )
        with autocast:
            logits, _ = model(x.to(device))  # (B, length, V), float32
        logits, y = logits.flatten(0, 1), y.to(device).flatten()
        for k, temperature in enumerate(temperatures):
            scaled = logits if temperature == 1.0 else logits / temperature
            nll = F.cross_entropy(scaled, y, reduction="none").view(len(batch), -1).cpu().numpy()
            for row, (begin, end, first) in zip(nll, batch, strict=True):  # earlier windows' targets stay
                out[k, first - 1 : end] = -row[first - begin - 1 :]
        batch.clear()

    for window in sliding_windows(len(tokens), context, stride):
        if batch and (window[1] - window[0] != batch[0][1] - batch[0][0] or len(batch) == batch_size):
            flush()
        batch.append(window)
    if batch:
        flush()
    return out


def sliding_nll(model: nn.Module, tokens: np.ndarray, context: int, **kwargs: Any) -> tuple[float, int]:
    """Summed NLL (nats) and count of every target of a packed stream (`sliding_logprobs`' options)."""
    logprobs = sliding_logprobs(model, tokens, context, **kwargs)
    return -float(logprobs.sum()), len(logprobs)


def evaluate_stream(
    model: nn.Module,
    tokens: np.ndarray,
    n_bytes: int | None,
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    autocast: AbstractContextManager | None = None,
    model_only: bool = False,
) -> dict[str, float | int | None]:
    """Loss, perplexity and bpb of every target of a packed stream (`n_bytes`: the text's UTF-8 size).

    A model with a document cache, corpus n-grams or a neural cache is scored as the mixture it predicts
    with (`mixture_logprobs`); one with `adapt_lr` learns from each document as it reads it, and one with
    a neural cache reads it document by document too (adaptation.py, then without the `stride` and
    `batch_size` options). The network alone, with none of them, is reported beside it as `model_loss` /
    `model_bpb`. `model_only` scores the network alone and nothing else: one sliding-window pass, where
    dynamic evaluation reads every document again (what `scored_with` names).
    """
    if len(tokens) < 2:
        raise ValueError("the token stream has fewer than 2 tokens: there is nothing to predict")
    context = context or model.config.max_seq_len
    was_training = model.training
    model.eval()
    try:
        logprobs = sliding_logprobs(
            model, tokens, context, stride=stride, batch_size=batch_size, device=device, autocast=autocast
        )
    finally:
        model.train(was_training)
    if model_only:
        return summarize(-float(logprobs.sum()), len(logprobs), n_bytes)
    cfg = model.config
    adapted, states = logprobs, None
    if registry.reads_documents(model):
        adapted, states = document_pass(model, tokens, cfg.adapt_lr, cfg.adapt_scales)
    mixed = mixture_logprobs(model, tokens, adapted, static=logprobs, states=states)
    result = summarize(-float(mixed.sum()), len(mixed), n_bytes)
    if mixed is not logprobs:
        alone = summarize(-float(logprobs.sum()), len(logprobs), n_bytes)
        result.update(model_loss=alone["loss"], model_bpb=alone["bpb"])
    return result


def scored_with(model: nn.Module, model_only: bool = False) -> str:
    """What `evaluate_stream` scores for this model: the network alone, or the mixture and its parts."""
    parts = [e.name for e, _ in registry.active(model)]
    if getattr(model.config, "adapt_lr", None) is not None:
        parts.insert(0, "dynamic evaluation")
    if model_only or not parts:
        return "the network alone"
    return "the mixture: the network with " + ", ".join(parts)


def mixture_logprobs(
    model: nn.Module,
    tokens: np.ndarray,
    logprobs: np.ndarray,
    *,
    static: np.ndarray | None = None,
    states: np.ndarray | None = None,
) -> np.ndarray:
    """The targets' log-probabilities under what the model predicts with: its own (`logprobs`, returned
    as is), with each expert it has mixed in, in the registry's order (`registry.EXPERTS`): the unadapted
    network's share (on `static`) when it adapts, then its document cache, its corpus n-grams and its
    neural cache (on `states`, `document_pass`')."""
    reading = Reading(model, tokens, unadapted=static, states=states)
    for expert, params in registry.active(model):
        hits = expert.hits(params, reading)
        if hits is not None:
            logprobs = mixed_logprobs(logprobs, *hits, expert.weights(model.config))
    return logprobs
