"""Fitting the mixture's weights, for every expert alike: a grid search per bucket, then the chain.

Why one module: each expert (registry.py) hands the fit the same triple, the bucket of each target (-1:
it has no prediction there), its probability of each target and the shape of its weight table; nothing
here knows which expert it is. Each step of the chain mixes one expert q into what came before, p:

    p'(x) = (1 - w[bucket]) * p(x) + w[bucket] * q(x)

so every part is a distribution and the mixture is one too (docs/mixture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

FIT_GRID = np.linspace(0.0, 0.95, 96)  # candidate weights; 1 would give unseen tokens probability 0
MIN_FIT_TARGETS = 20  # a bucket with fewer targets takes the weight fitted on its whole row


def mixed_logprobs(
    model_logprobs: np.ndarray, bucket: np.ndarray, cache_prob: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Log-probability of each target under the mixture; unchanged where the cache had no match."""
    return np.log(_mixed_probs(np.exp(model_logprobs), bucket, cache_prob, weights))


def _mixed_probs(p: np.ndarray, bucket: np.ndarray, cache_prob: np.ndarray, weights: Any) -> np.ndarray:
    w = np.where(bucket >= 0, np.asarray(weights, dtype=np.float64).ravel()[np.maximum(bucket, 0)], 0.0)
    return (1.0 - w) * p + w * cache_prob


def fit_weights(
    base_logprobs: np.ndarray,
    bucket: np.ndarray,
    cache_prob: np.ndarray,
    shape: tuple,
    *,
    scale: np.ndarray | float = 1.0,
    offset: np.ndarray | float = 0.0,
) -> list:
    """The weight of each bucket of a `shape` table that minimises the mixture's loss on these targets.

    The loss is convex in each weight and the buckets do not share targets, so each is fitted alone on a
    grid of 96 values. A bucket with under `MIN_FIT_TARGETS` targets takes the weight fitted on all the
    targets of its row (its order) rather than a noisy one. `base_logprobs` is what the cache is mixed
    into: the model's, or the model with an earlier cache (corpus_ngrams.py). Experts mixed in after this
    one make the final probability of each target `scale * mixture + offset` (`refit_chain`).
    """
    p_base = np.exp(base_logprobs)
    scale, offset = np.broadcast_to(scale, p_base.shape), np.broadcast_to(offset, p_base.shape)
    per_row = int(np.prod(shape[1:]))
    weights = np.zeros(int(np.prod(shape)))

    def best(mask: np.ndarray) -> float:
        if not mask.any():
            return 0.0
        pm, pc = p_base[mask][None, :], cache_prob[mask][None, :]
        w = FIT_GRID[:, None]
        final = scale[mask][None, :] * ((1 - w) * pm + w * pc) + offset[mask][None, :]
        return float(FIT_GRID[np.argmin(-np.log(final).sum(axis=1))])

    for row in range(shape[0]):
        pooled = best((bucket >= row * per_row) & (bucket < (row + 1) * per_row))
        for b in range(row * per_row, (row + 1) * per_row):
            mask = bucket == b
            weights[b] = best(mask) if mask.sum() >= MIN_FIT_TARGETS else pooled
    return np.round(weights.reshape(shape), 4).tolist()


Hits = tuple[np.ndarray, np.ndarray, tuple]  # (bucket, probability of each target, weight-table shape)


def chain_logprobs(base_logprobs: np.ndarray, experts: Sequence[Hits], weights: Sequence[Any]) -> np.ndarray:
    """The targets' log-probabilities with each expert mixed in turn into what came before it."""
    return np.log(_chain_probs(np.exp(base_logprobs), experts, weights))


def _chain_probs(p: np.ndarray, experts: Sequence[Hits], weights: Sequence[Any]) -> np.ndarray:
    for (bucket, prob, _), w in zip(experts, weights, strict=True):
        p = _mixed_probs(p, bucket, prob, w)
    return p


def fit_chain(base_logprobs: np.ndarray, experts: Sequence[Hits]) -> tuple[list, list[np.ndarray]]:
    """Each expert's weights fitted in turn on the mixture of the ones before it (the first fit, before
    `refit_chain`): the weights, and the log-probabilities before the first expert and after each."""
    weights, after = [], [base_logprobs]
    for bucket, prob, shape in experts:
        weights.append(fit_weights(after[-1], bucket, prob, shape))
        after.append(mixed_logprobs(after[-1], bucket, prob, weights[-1]))
    return weights, after


def refit_chain(base_logprobs: np.ndarray, experts: Sequence[Hits], weights: Sequence[Any]) -> list:
    """Each expert's weights fitted again, in order, with every other expert's fixed; one pass.

    Fitted one at a time, an early expert's weights are chosen before anyone knows what the later ones
    add, and they cover the same targets (the document cache and the neural cache both predict a repeated
    name), so refitted they change (measurements: docs/tuning-log.md).
    Later experts make the final probability affine in an earlier expert's mixture, `scale * mixture +
    offset`, so each refit is the same convex one-weight search as the first fit; a refit that would
    score these targets worse is not taken, so the chain never gets worse on them. One pass: a second
    gained next to nothing (measurements: docs/tuning-log.md).
    """
    weights = list(weights)
    for k, (bucket, prob, shape) in enumerate(experts):
        p_inner = _chain_probs(np.exp(base_logprobs), experts[:k], weights[:k])
        later, later_weights = experts[k + 1 :], weights[k + 1 :]
        offset = _chain_probs(np.zeros(len(bucket)), later, later_weights)
        scale = _chain_probs(np.ones(len(bucket)), later, later_weights) - offset
        refit = fit_weights(np.log(p_inner), bucket, prob, shape, scale=scale, offset=offset)
        [before, after] = [
            np.log(scale * _mixed_probs(p_inner, bucket, prob, w) + offset).sum() for w in (weights[k], refit)
        ]
        if after >= before:  # a small bucket takes its row's weight, which can lose on that bucket
            weights[k] = refit
    return weights


def mix_sparse(probs: torch.Tensor, weight: float, ids: torch.Tensor, q: torch.Tensor) -> None:
    """probs (V,) <- (1 - w) probs + w q, in place, for a q that is `q` at `ids` and 0 elsewhere."""
    probs.mul_(1.0 - weight)
    probs[ids] += weight * q.to(probs.dtype)
