"""Dynamic evaluation: the network keeps learning from the document it is reading.

Why: a network trained for minutes on a CPU knows the corpus only roughly, and an article it never saw
has its own subject, names and style. Krause et al. (2018, "Dynamic Evaluation of Neural Sequence
Models") let the model take a gradient step on each segment of text once it has predicted it; the next
segment is then predicted by weights that have read the document so far (what it gains:
docs/tuning-log.md).

The rule, the same for scoring and for generation:
- A document starts after an EOS (or at the start of the text) with the trained weights.
- Its targets are read in chunks of `stride = max_seq_len // 2` tokens. A chunk is predicted first, by a
  window of at most `max_seq_len` tokens of the document that ends at its last target; then the weights
  take one SGD step on the mean loss of that chunk's targets, at learning rate `adapt_lr` times the
  tensor's `adapt_scales` entry.
- The scales are Krause et al.'s RMS normalisation, one figure per tensor: 1 / the RMS of the tensor's
  gradient over the validation split's chunks at the trained weights (`gradient_scales`). Each tensor
  then moves by about the same amount for the same surprise, whatever its gradients' size (measurements
  against one rate for all, and per element: docs/tuning-log.md); per element can diverge: a weight with
  almost no gradient on the validation split gets a huge step on an article.
- Every token is predicted before the weights have seen it, so bits per byte stay honest; at EOS the
  weights go back to the trained ones. A chunk is learned only when it is complete, so generation
  predicts each token with the weights that scoring would.

The same reading, without learning (lr None), gives the neural cache (neural_cache.py) its states: each
chunk's final states, from the window that predicts it, are kept with it (`document_pass`).

The trained model is never changed: `Adapter` works on its own copy. The train phase measures the scales,
then picks `adapt_lr` from `train.mixture.adapt_lrs` on the validation split (`fit_learning_rate`); None turns
adaptation off. Without `adapt_scales` (null) every tensor steps at `adapt_lr` itself: plain SGD.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyllama_model.errors import ConfigError
from tinyllama_model.tokenizer import EOS_ID

FIT_MAX_TOKENS = 32_768  # rates are tried on the sample's first tokens, each a full adapting pass over them


def stride_for(config: Any) -> int:
    """Targets learned per step: half the window, the stride sliding-window scoring uses."""
    return max(1, config.max_seq_len // 2)


class Adapter:
    """A copy of a network that learns from one document at a time (module doc); `net` predicts."""

    def __init__(self, model: nn.Module, lr: float | None, scales: Mapping[str, float] | None = None):
        with torch.inference_mode(False):  # generation runs in inference mode; these weights need grads
            self.net = type(model)(model.config).to(model.rope_cos.device)
            self.net.load_state_dict(model.state_dict())
            self.trained = [p.detach().clone() for p in self.net.parameters()]
        self.net.eval()
        self.net.record_states = True
        self.net.compile_decode = getattr(model, "compile_decode", False)
        self.lr, self.context, self.stride = lr, model.config.max_seq_len, stride_for(model.config)
        named = dict(self.net.named_parameters())
        if scales is not None and set(scales) != set(named):
            unknown, missing = sorted(set(scales) - set(named)), sorted(set(named) - set(scales))
            raise ConfigError(
                f"adapt_scales does not fit the network: unknown {unknown[:3]}, missing {missing[:3]}; "
                "delete adapt_scales and adapt_lr from config.json, or retrain to refit them"
            )
        lr = lr or 0.0
        groups = [{"params": [p], "lr": lr * (scales[n] if scales else 1.0)} for n, p in named.items()]
        self.optimizer = torch.optim.SGD(groups, lr=lr)
        self.doc: list[int] = []  # the document so far, from its opening EOS
        self.learned = 0  # the targets doc[1 : learned + 1] have been learned from
        self.states: list[torch.Tensor] = []  # the final states that predicted them, a tensor per chunk

    @classmethod
    def for_model(cls, model: nn.Module, prompt: Sequence[int]) -> Adapter:
        """An adapter of the model (learning at its `adapt_lr`; never, without one) that has read `prompt`."""
        adapter = cls(model, model.config.adapt_lr, model.config.adapt_scales)
        for token in prompt:
            adapter.observe(int(token))
        return adapter

    def reset(self) -> None:
        """Back to the trained weights, for a new document."""
        with torch.no_grad():
            for p, trained in zip(self.net.parameters(), self.trained, strict=True):
                p.copy_(trained)
        self.optimizer.state.clear()
        self.doc, self.learned, self.states = [], 0, []

    def observe(self, token: int) -> bool:
        """Read one token; True when the weights changed (a chunk was learned, or a document ended)."""
        if token == EOS_ID and self.doc:
            self.reset()
            self.doc = [token]
            return self.lr is not None
        self.doc.append(token)
        if len(self.doc) - 1 - self.learned < self.stride:
            return False
        self.learn(self.doc, self.learned + self.stride, self.stride)
        self.learned += self.stride
        return self.lr is not None

    def learn(self, doc: Sequence[int] | np.ndarray, last: int, n_targets: int) -> np.ndarray:
        """Predict the targets doc[last - n_targets + 1 : last + 1], then take one step on their loss
        (none without a learning rate).

        Returns their log-probabilities, as predicted before the step; their states join `states`.
        """
        begin = max(0, last - self.context)
        with torch.inference_mode(False), torch.set_grad_enabled(self.lr is not None):
            ids = torch.as_tensor(np.asarray(doc[begin : last + 1], dtype=np.int64))
            ids = ids.to(self.net.rope_cos.device)
            logits, _ = self.net(ids[None, :-1])
            nll = F.cross_entropy(logits[0, -n_targets:].float(), ids[-n_targets:], reduction="none")
            self.states.append(self.net.states[0, -n_targets:])
            if self.lr is not None:
                self.optimizer.zero_grad(set_to_none=True)
                nll.mean().backward()
                self.optimizer.step()
        return -nll.detach().cpu().numpy()

    def document_states(self) -> torch.Tensor:
        """The states that predicted each token of the document so far, doc[1:], (len(doc) - 1, dim), as
        scoring computes them: the learned chunks' from their steps, the open chunk's from the window it
        will be learned in (the decode loop's window too)."""
        rest = len(self.doc) - 1 - self.learned
        states = list(self.states)
        if rest > 0:
            begin = max(0, self.learned + self.stride - self.context)
            with torch.no_grad():
                self.net(torch.tensor([self.doc[begin:-1]], device=self.net.rope_cos.device))
            states.append(self.net.states[0, -rest:])
        return torch.cat(states) if states else torch.empty(0, self.net.config.dim)


def document_spans(tokens: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) stream positions of each document: it opens at `first` (an EOS, or the stream's
    start) and its targets are first + 1 .. last (the EOS that closes it, or the stream's end)."""
    eos = np.flatnonzero(np.asarray(tokens) == EOS_ID).tolist()
    bounds = sorted({0, *eos, len(tokens) - 1})
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def adapted_logprobs(
    model: nn.Module, tokens: np.ndarray, lr: float | None, scales: Mapping[str, float] | None = None
) -> np.ndarray:
    """log p(tokens[t] | what precedes it in its document) for t = 1 .. len-1 under dynamic evaluation
    (`document_pass`)."""
    return document_pass(model, tokens, lr, scales)[0]


def document_pass(
    model: nn.Module, tokens: np.ndarray, lr: float | None, scales: Mapping[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each document read as the module doc says, from the trained weights (lr None: never learning):
    log p(tokens[t] | what precedes it in its document) and the final state that predicted it (t, dim),
    for t = 1 .. len-1 at index t - 1, as in `evaluation.sliding_logprobs`."""
    adapter = Adapter(model, lr, scales)
    logprobs = np.zeros(max(len(tokens) - 1, 0))
    states = np.zeros((len(logprobs), model.config.dim), dtype=np.float32)
    for doc, first, start, end in _chunks(tokens, adapter.stride):
        if start == 0:
            adapter.reset()
        logprobs[first + start : first + end] = adapter.learn(doc, end, end - start)
        states[first + start : first + end] = adapter.states[-1].float().cpu().numpy()
    return logprobs, states


def _chunks(tokens: np.ndarray, stride: int) -> Iterator[tuple[np.ndarray, int, int, int]]:
    """(document, its first stream position, chunk start, chunk end) in reading order: the chunk's
    targets are doc[start + 1 : end + 1]."""
    for first, last in document_spans(tokens):
        doc = tokens[first : last + 1]
        for start in range(0, len(doc) - 1, stride):
            yield doc, first, start, min(start + stride, len(doc) - 1)


def gradient_scales(model: nn.Module, tokens: np.ndarray) -> dict[str, float]:
    """1 / RMS of each parameter tensor's gradient over the chunks of `tokens`, at the trained weights
    (the module doc's `adapt_scales`). A tensor that never gets a gradient keeps scale 0: it never moves."""
    adapter = Adapter(model, 0.0)
    squares = {name: 0.0 for name, _ in adapter.net.named_parameters()}
    n_chunks = 0
    for doc, _, start, end in _chunks(tokens, adapter.stride):
        adapter.learn(doc, end, end - start)  # at lr 0: the weights stay the trained ones
        for name, p in adapter.net.named_parameters():
            if p.grad is not None:
                squares[name] += float(p.grad.square().mean())
        n_chunks += 1
    rms = {name: math.sqrt(total / max(n_chunks, 1)) for name, total in squares.items()}
    return {name: 1.0 / r if r > 0 else 0.0 for name, r in rms.items()}


def fit_learning_rate(
    model: nn.Module,
    tokens: np.ndarray,
    candidates: Sequence[float],
    loss_of: Callable[[np.ndarray, np.ndarray], float],
    scales: Mapping[str, float] | None = None,
) -> tuple[float | None, float, float]:
    """(lr, its loss, the loss without adaptation) on the first FIT_MAX_TOKENS tokens, each tensor's
    steps scaled by `scales`.

    `loss_of(tokens, logprobs)` scores a candidate (the train phase mixes the experts in first). lr is
    None when no candidate beats the network read the same way without learning (lr None).
    """
    tokens = tokens[:FIT_MAX_TOKENS]
    static = loss_of(tokens, adapted_logprobs(model, tokens, None))
    best: tuple[float | None, float] = (None, static)
    for lr in candidates:
        loss = loss_of(tokens, adapted_logprobs(model, tokens, lr, scales))
        if loss < best[1]:
            best = (lr, loss)
    return (*best, static)
