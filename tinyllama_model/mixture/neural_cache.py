"""The neural cache: earlier positions of this document whose state resembles the current one vote for
the token that followed them.

Why: the document cache (doc_cache.py) copies a continuation only after the same 1-3 tokens. A network's
final state (what its head reads) also matches where the words differ but the situation is the same: a
name that recurs after a different verb, a term after a paraphrase. Grave et al. (2017, "Improving Neural
Language Models with a Continuous Cache") keep the states h_i of the document so far with the token
x_{i+1} that followed each, and predict

    p_cache(x) = sum over i with x_{i+1} = x of softmax_i(theta * cos(h_t, h_i))

mixed in last, after the document cache and the corpus n-grams, with a weight that grows with the best
match's similarity (`SIMILARITY_EDGES`; fitted on the validation split by `fitting.fit_weights`). The
states are the ones the predicting network computed at each position (the adapted one under dynamic
evaluation); they are unit-normalised, so theta is a temperature on cosines. The cache reads only earlier
positions of the same document and empties at EOS, so it never sees what it predicts, and the mixture
stays a distribution. It costs a (positions x dim) product per token; what it gains: docs/tuning-log.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tinyllama_model.mixture.adaptation import document_spans
from tinyllama_model.mixture.expert import Expert, FitInputs, Proposal, Reading, value
from tinyllama_model.model_config import NEURAL_CACHE_BUCKETS as N_BUCKETS
from tinyllama_model.tokenizer import EOS_ID

# the weight's buckets: cosine of the best earlier state < 0.6, 0.6-0.7, ... , >= 0.95
SIMILARITY_EDGES = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)  # N_BUCKETS - 1 edges
QUERY_BLOCK = 1024  # positions scored at once: a (1024 x document) similarity matrix, 128 MB at 32k tokens


def _unit(states: torch.Tensor) -> torch.Tensor:
    states = states.float()
    return states / states.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _bucket(best: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(best, torch.tensor(SIMILARITY_EDGES, dtype=best.dtype), right=True)


def stream_hits(tokens: np.ndarray, states: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per target position t (1 .. len-1, index t - 1): the cache's bucket (-1: no earlier state in the
    document) and its probability of tokens[t], from `states[t - 1]`, the state that predicted it."""
    tokens = np.asarray(tokens, dtype=np.int64)
    bucket = np.full(max(len(tokens) - 1, 0), -1, dtype=np.int64)
    prob = np.zeros(len(bucket))
    for first, last in document_spans(tokens):  # rows first .. last-1 predict first+1 .. last
        keys = _unit(torch.from_numpy(np.ascontiguousarray(states[first:last])))
        nexts = torch.from_numpy(tokens[first + 1 : last + 1])
        for lo in range(1, len(keys), QUERY_BLOCK):  # row 0 has no earlier state
            hi = min(lo + QUERY_BLOCK, len(keys))
            sim = keys[lo:hi] @ keys[:hi].T  # (rows, keys): a block bounds the memory of a long document
            earlier = torch.arange(hi)[None, :] < torch.arange(lo, hi)[:, None]
            sim = sim.masked_fill(~earlier, float("-inf"))
            weights = torch.softmax(theta * sim, dim=1)
            hit = nexts[None, :hi] == nexts[lo:hi, None]
            prob[first + lo : first + hi] = (weights * hit).sum(1).double().numpy()
            bucket[first + lo : first + hi] = _bucket(sim.max(1).values).numpy()
    return bucket, prob


class NeuralCache:
    """One sequence's document so far: its unit states and the token that followed each, in buffers that
    double when full (a decode step appends one row; it does not copy the document)."""

    def __init__(self, dim: int, vocab_size: int):
        self.keys, self.nexts, self.n = torch.empty(64, dim), torch.empty(64, dtype=torch.long), 0
        self.vocab_size = vocab_size

    def observe(self, state: torch.Tensor | None, token: int) -> None:
        """`state` predicted `token` (None: it predicted nothing, a prompt's first position); EOS empties."""
        if token == EOS_ID:
            self.n = 0
        elif state is not None:
            if self.n == len(self.keys):
                self.keys = torch.cat([self.keys, torch.empty_like(self.keys)])
                self.nexts = torch.cat([self.nexts, torch.empty_like(self.nexts)])
            self.keys[self.n], self.nexts[self.n] = _unit(state.detach().cpu()), token
            self.n += 1

    def predict(self, state: torch.Tensor, theta: float) -> tuple[int, torch.Tensor] | None:
        """(bucket, probabilities over the vocabulary (V,), float64) for the position `state` predicts, or
        None with no earlier state."""
        if self.n == 0:
            return None
        sim = self.keys[: self.n] @ _unit(state.detach().cpu())
        weights = torch.softmax(theta * sim, 0).double()
        probs = torch.zeros(self.vocab_size, dtype=torch.float64).index_add_(0, self.nexts[: self.n], weights)
        return int(_bucket(sim.max())), probs


class NeuralCacheExpert(Expert):
    """The neural cache in the registry: `train.mixture.neural_cache_theta`, fitted last, on the states of the
    network the model predicts with (adapted or not)."""

    name, keys, stage = "neural_cache", ("neural_cache_theta", "neural_cache_weights"), "adapted"
    refusal, reads_states = "transformers has no neural cache", True

    def wanted(self, settings: Any) -> bool:
        return settings.neural_cache_theta is not None

    def fit_params(self, fit: FitInputs) -> float | None:
        return fit.settings.neural_cache_theta

    def params(self, model: Any) -> float | None:
        return getattr(model.config, "neural_cache_theta", None)

    def table_shape(self, theta: float) -> tuple[int, int]:
        """Weights are indexed [0][bucket of the best similarity] (one row)."""
        return (1, N_BUCKETS)

    def hits(self, theta: float, reading: Reading) -> tuple[np.ndarray, np.ndarray]:
        if reading.states is None:
            raise ValueError("a model with a neural cache is scored on the states of `document_pass`")
        return stream_hits(reading.tokens, reading.states, theta)

    def to_config(self, theta: float, weights: list) -> dict[str, Any]:
        return {"neural_cache_theta": theta, "neural_cache_weights": np.ravel(weights).tolist()}

    def weights(self, cfg: Any) -> np.ndarray:
        return np.asarray(value(cfg, "neural_cache_weights"), dtype=np.float64).ravel()

    def follower(
        self, theta: float, model: Any, prompts: Sequence[Sequence[int]], adapter: Any, use_cache: bool
    ) -> _States | None:
        return None if adapter is None else _States(theta, model.config, adapter)

    def card_line(self, cfg: Mapping[str, Any]) -> str | None:
        if not cfg.get("neural_cache_theta"):
            return None
        return (
            "- neural cache: earlier states of the document vote for the token that followed them "
            f"(softmax of {cfg['neural_cache_theta']} x cosine), mixed in last "
            "(`tinyllama_model/mixture/neural_cache.py`)"
        )


class _States:
    """The one row's `NeuralCache` (it reads through the row's adapter), fed the prompt's states as
    scoring computes them (`Adapter.document_states`), then the decode loop's."""

    def __init__(self, theta: float, cfg: Any, adapter: Any):
        self.theta, self.cache = theta, NeuralCache(cfg.dim, cfg.vocab_size)
        for token, state in zip(adapter.doc, [None, *adapter.document_states()], strict=True):
            self.cache.observe(state, token)

    def observe(self, tokens: list[int], states: torch.Tensor | None) -> None:
        self.cache.observe(states[0], tokens[0])

    def propose(self, row: int, states: torch.Tensor | None) -> Proposal | None:
        hit = self.cache.predict(states[row], self.theta)
        return None if hit is None else Proposal(*hit)
