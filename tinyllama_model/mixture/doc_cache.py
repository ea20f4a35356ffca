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
the context was always followed by the same token. `fitting.fit_weights` picks each weight from text the model
did not train on: the train phase uses the validation split. With no
match the model's prediction is used unchanged. Everything here is plain Python and numpy on token ids;
the network is never touched, so its weights, resume and DDP are as without the cache (`export-hf`
refuses it: transformers has no cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tinyllama_model.mixture.expert import Expert, FitInputs, Proposal, Reading
from tinyllama_model.model_config import CACHE_COUNT_BUCKETS as COUNT_BUCKETS
from tinyllama_model.model_config import DOC_CACHE_MAX_ORDER as MAX_ORDER
from tinyllama_model.tokenizer import EOS_ID


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
    """Flat index into the weight table (`DocCacheExpert.table_shape`) for a context and its continuations."""
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


class DocCacheExpert(Expert):
    """The document cache in the registry: `train.mixture.doc_cache_orders` orders, fitted with
    calibration."""

    name, keys, stage = "doc_cache", ("doc_cache_weights",), "network"
    refusal = "transformers has no document cache"

    def wanted(self, settings: Any) -> bool:
        return bool(settings.doc_cache_orders)

    def fit_params(self, fit: FitInputs) -> int | None:
        return fit.settings.doc_cache_orders or None

    def params(self, model: Any) -> int | None:
        weights = getattr(model.config, "doc_cache_weights", None)
        return None if weights is None else len(weights)

    def table_shape(self, orders: int) -> tuple[int, int, int]:
        """Weights are indexed [order - 1][1 if the context had one continuation][min(n, 4) - 1]."""
        return (orders, 2, COUNT_BUCKETS)

    def hits(self, orders: int, reading: Reading) -> tuple[np.ndarray, np.ndarray]:
        return stream_hits(reading.tokens, orders)

    def follower(
        self, orders: int, model: Any, prompts: Sequence[Sequence[int]], adapter: Any, use_cache: bool
    ) -> _Caches:
        return _Caches(orders, prompts)

    def card_line(self, cfg: Mapping[str, Any]) -> str | None:
        if not cfg.get("doc_cache_weights"):
            return None
        return (
            f"- document cache: the n-grams of each document so far, up to order "
            f"{len(cfg['doc_cache_weights'])}, mixed into every prediction; weights fitted on the "
            "validation split (`tinyllama_model/mixture/doc_cache.py`)"
        )


class _Caches:
    """A `DocCache` per row of a generating batch, fed its prompt, then each token sampled."""

    def __init__(self, orders: int, prompts: Sequence[Sequence[int]]):
        self.caches = [DocCache(orders) for _ in prompts]
        for cache, prompt in zip(self.caches, prompts, strict=True):
            for t in prompt:
                cache.observe(int(t))

    def observe(self, tokens: list[int], states: torch.Tensor | None) -> None:
        for cache, t in zip(self.caches, tokens, strict=True):
            cache.observe(t)

    def propose(self, row: int, states: torch.Tensor | None) -> Proposal | None:
        hit = self.caches[row].match()
        if hit is None:
            return None
        bucket, follows = hit
        counts = torch.tensor(list(follows.values()), dtype=torch.float64)
        return Proposal(bucket, counts / counts.sum(), torch.tensor(list(follows)))
