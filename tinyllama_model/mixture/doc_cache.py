"""The document cache: what this document has said so far, mixed into the model's next-token prediction.

Why: a model trained for minutes on a CPU reads a 64-token window (~200 bytes), but a Wikipedia article
repeats its own names and terms over thousands of tokens ("Hopfield network", "backpropagation through
time"). Past its window the model must guess them afresh each time; a cache of the document's own n-gram
counts has seen them. This is the cache language model (Kuhn and De Mori, 1990), in the backoff form of
PPM: the context is the longest of the last 1..`orders` tokens that has occurred earlier in the document,
`n` times, `c(x)` of them followed by x, and

    p(x) = (1 - w) * p_model(x) + w * c(x) / n

Both parts are distributions, so the mixture is one too and bits per byte stay an honest measure; the cache
reads only earlier tokens of the same document (it empties at EOS), so it never sees what it predicts.

The weight w depends on how much the match can be trusted: its order, n (1, 2, 3, 4 or more) and whether
the context was always followed by the same token. `fit_weights` picks each weight from text the model
did not train on: the train phase uses the validation split. With no
match the model's prediction is used unchanged. Everything here is plain Python and numpy on token ids;
the network is never touched, so its weights, resume and DDP are as without the cache (`export-hf`
refuses it: transformers has no cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tinyllama_model.model_config import CACHE_COUNT_BUCKETS as COUNT_BUCKETS
from tinyllama_model.model_config import DOC_CACHE_MAX_ORDER as MAX_ORDER
from tinyllama_model.tokenizer import EOS_ID

FIT_GRID = np.linspace(0.0, 0.95, 96)  # candidate weights; 1 would give unseen tokens probability 0
MIN_FIT_TARGETS = 20  # a bucket with fewer targets takes the weight fitted on its whole order


def table_shape(orders: int) -> tuple[int, int, int]:
    """Weights are indexed [order - 1][1 if the context had one continuation][min(n, 4) - 1]."""
    return (orders, 2, COUNT_BUCKETS)


class DocCache:
    """The n-gram counts of one document so far, for one sequence; `observe` each token as it comes."""

    def __init__(self, orders: int):
        if not 1 <= orders <= MAX_ORDER:  # each token is counted after each of its contexts: orders^2 memory
            raise ValueError(f"a document cache has 1 to {MAX_ORDER} orders, not {orders:,}")
        self.orders = orders
        self.tables: list[dict[tuple[int, ...], dict[int, int]]] = [{} for _ in range(orders)]
        self.recent: tuple[int, ...] = ()  # the last `orders` tokens of this document

    def observe(self, token: int) -> None:
        """Count `token` after each of its contexts; an EOS ends the document and empties the cache."""
        if token == EOS_ID:
            self.tables = [{} for _ in range(self.orders)]
            self.recent = ()
            return
        for order in range(1, len(self.recent) + 1):
            follows = self.tables[order - 1].setdefault(self.recent[-order:], {})
            follows[token] = follows.get(token, 0) + 1
        self.recent = (*self.recent, token)[-self.orders :]

    def match(self) -> tuple[int, dict[int, int]] | None:
        """(bucket, counts of each continuation) of the longest context seen before, or None."""
        for order in range(len(self.recent), 0, -1):
            follows = self.tables[order - 1].get(self.recent[-order:])
            if follows:
                return bucket_index(order, follows), follows
        return None


def bucket_index(order: int, follows: dict[int, int]) -> int:
    """Flat index into the weight table (`table_shape`) for a context of this order and continuations."""
    n = min(sum(follows.values()), COUNT_BUCKETS)
    return ((order - 1) * 2 + (len(follows) == 1)) * COUNT_BUCKETS + n - 1


def stream_hits(tokens: np.ndarray | Sequence[int], orders: int) -> tuple[np.ndarray, np.ndarray]:
    """Per target position t (1 .. len-1): the cache's bucket (-1: no match) and its probability of tokens[t].

    Index t - 1 holds position t, as the targets of a packed stream are tokens[1:].
    """
    cache = DocCache(orders)
    ids = [int(t) for t in tokens]
    bucket = np.full(max(len(ids) - 1, 0), -1, dtype=np.int64)
    prob = np.zeros(len(bucket))
    for t in range(1, len(ids)):
        cache.observe(ids[t - 1])
        hit = cache.match()
        if hit is not None:
            bucket[t - 1], follows = hit
            prob[t - 1] = follows.get(ids[t], 0) / sum(follows.values())
    return bucket, prob


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


Expert = tuple[np.ndarray, np.ndarray, tuple]  # (bucket, probability of each target, weight-table shape)


def chain_logprobs(
    base_logprobs: np.ndarray, experts: Sequence[Expert], weights: Sequence[Any]
) -> np.ndarray:
    """The targets' log-probabilities with each expert mixed in turn into what came before it."""
    return np.log(_chain_probs(np.exp(base_logprobs), experts, weights))


def _chain_probs(p: np.ndarray, experts: Sequence[Expert], weights: Sequence[Any]) -> np.ndarray:
    for (bucket, prob, _), w in zip(experts, weights, strict=True):
        p = _mixed_probs(p, bucket, prob, w)
    return p


def fit_chain(base_logprobs: np.ndarray, experts: Sequence[Expert]) -> tuple[list, list[np.ndarray]]:
    """Each expert's weights fitted in turn on the mixture of the ones before it (the first fit, before
    `refit_chain`): the weights, and the log-probabilities before the first expert and after each."""
    weights, after = [], [base_logprobs]
    for bucket, prob, shape in experts:
        weights.append(fit_weights(after[-1], bucket, prob, shape))
        after.append(mixed_logprobs(after[-1], bucket, prob, weights[-1]))
    return weights, after


def refit_chain(base_logprobs: np.ndarray, experts: Sequence[Expert], weights: Sequence[Any]) -> list:
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


def mix_doc_caches(probs: torch.Tensor, caches: Sequence[DocCache], weights: list) -> None:
    """Mix each row's cache into its next-token probabilities (B, V), in place."""
    flat = np.asarray(weights, dtype=np.float64).ravel()
    for row, cache in enumerate(caches):
        hit = cache.match()
        if hit is not None:
            bucket, follows = hit
            ids = torch.tensor(list(follows), device=probs.device)
            counts = torch.tensor(list(follows.values()), device=probs.device, dtype=torch.float64)
            mix_sparse(probs[row], float(flat[bucket]), ids, counts / counts.sum())
