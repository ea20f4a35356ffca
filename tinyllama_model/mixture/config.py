"""`MixtureConfig`: what the train phase fits after training, on the validation split, the section
`train.mixture` of the pipeline's config.

Calibration, the experts of the test-time mixture (registry.py) and dynamic evaluation change nothing in
how the network trains, so they have their own section rather than more fields of `TrainConfig`
(docs/mixture.md). A config that still sets one of them as `train.<key>`, where they lived before, is
refused with the key it moved to (`check_moved`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinyllama_model.errors import ConfigError
from tinyllama_model.model_config import CORPUS_MAX_ORDER, DOC_CACHE_MAX_ORDER


def _doc(text: str) -> dict[str, Any]:
    """Field metadata pydantic reads as the description (so the Prefect form explains each knob)."""
    return {"description": text}


@dataclass
class MixtureConfig:
    doc_cache_orders: int = field(
        default=0,
        metadata=_doc(
            "After training, fit a document cache of n-grams up to this order on the validation split "
            "and predict with it (tinyllama_model/mixture/doc_cache.py); 0: the model alone."
        ),
    )
    corpus_ngram_orders: int = field(
        default=0,
        metadata=_doc(
            "After training (and the document cache), fit the training corpus's n-grams up to this order "
            "(1-4) on the validation split and predict with them "
            "(tinyllama_model/mixture/corpus_ngrams.py); 0: none."
        ),
    )
    fit_max_tokens: int = field(
        default=2_000_000,
        metadata=_doc(
            "What follows training (calibration, the experts' fits, adaptation's) reads at most this many "
            "validation tokens: whole documents spread evenly over the split "
            "(tinyllama_model/doc_sample.py); a smaller split is read whole."
        ),
    )
    corpus_ngram_max_tokens: int = field(
        default=2_000_000,
        metadata=_doc(
            "The corpus n-grams count at most this many training tokens, whole documents spread evenly over "
            "the split, and ship them with the model (2 bytes each), so the model does not grow with the "
            "corpus; a smaller split is taken whole."
        ),
    )
    calibration_temperatures: tuple[float, ...] = field(
        default=(),
        metadata=_doc(
            "After training, divide the network's logits by the one of these temperatures (and 1) that "
            "scores the validation split best with the document cache and corpus n-grams fitted on it; "
            "folded into the final norm's weight (TinyLlama.scale_logits); (): none."
        ),
    )
    adapt_lrs: tuple[float, ...] = field(
        default=(),
        metadata=_doc(
            "After training, pick from these SGD learning rates the one with which the network best "
            "learns from each document as it reads it (dynamic evaluation, "
            "tinyllama_model/mixture/adaptation.py), "
            "on the validation split; each tensor's step is the rate times 1 / its gradient's RMS there, so "
            "rates are ~1e-4, not SGD's ~0.03; (): no adaptation."
        ),
    )
    neural_cache_theta: float | None = field(
        default=None,
        metadata=_doc(
            "After training, fit a neural cache with this temperature on cosines (15 is tuned): earlier "
            "states of the document vote for the token that followed them "
            "(tinyllama_model/mixture/neural_cache.py); "
            "null: none."
        ),
    )

    def __post_init__(self) -> None:
        for name in ("fit_max_tokens", "corpus_ngram_max_tokens"):
            v = getattr(self, name)
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "a positive integer")
        orders = self.doc_cache_orders
        is_int = isinstance(orders, int) and not isinstance(orders, bool)
        ok = is_int and 0 <= orders <= DOC_CACHE_MAX_ORDER
        _require(ok, "doc_cache_orders", f"an integer in 0..{DOC_CACHE_MAX_ORDER} (3 is tuned)")
        orders = self.corpus_ngram_orders
        is_int = isinstance(orders, int) and not isinstance(orders, bool)
        _require(
            is_int and 0 <= orders <= CORPUS_MAX_ORDER,
            "corpus_ngram_orders",
            "an integer in 0..4 (4 is tuned)",
        )
        temps = self.calibration_temperatures
        _require(_positives(temps), "calibration_temperatures", "positive numbers, e.g. [1.1], or []")
        self.calibration_temperatures = tuple(temps)
        lrs = self.adapt_lrs
        _require(_positives(lrs), "adapt_lrs", "a list of positive learning rates, e.g. [2e-4, 3e-4], or []")
        self.adapt_lrs = tuple(lrs)
        theta = self.neural_cache_theta
        ok = theta is None or _positive(theta)
        _require(ok, "neural_cache_theta", "a positive temperature (15 is tuned) or null")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MixtureConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"unknown train.mixture key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


def check_moved(train: Mapping[str, Any]) -> None:
    """Refuse a train section that sets a mixture key where it lived before this section, naming its new
    place."""
    moved = sorted(k for k in train if k in MOVED)
    if moved:
        fix = ", ".join(f"train.{k} -> train.mixture.{k}" for k in moved)
        raise ConfigError(f"these settings moved to the train.mixture section: {fix}; move them there")


MOVED = {f.name for f in dataclasses.fields(MixtureConfig)}  # all of them were fields of TrainConfig


def _positive(x: Any) -> bool:
    """A positive number, not a bool (which Python counts as an int)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def _positives(values: Any) -> bool:
    """A list or tuple of positive numbers, as JSON or a preset gives it."""
    return isinstance(values, (tuple, list)) and all(_positive(x) for x in values)


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"train.mixture.{name} must be {what}")
