"""The one ordered list of the mixture's experts, which every reader of the mixture follows.

The order is the chain's (docs/mixture.md): each expert is mixed into what the ones before it predict,
in fitting (tasks/train.py), scoring (evaluation.py) and generation (generate.py) alike; `export-hf`
refuses a model that has any of them (export.py) and the model card gives each a line
(tasks/tracking/model_card.py). An expert from outside the package joins with `register_expert`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tinyllama_model.mixture.corpus_ngrams import CorpusNgramsExpert
from tinyllama_model.mixture.doc_cache import DocCacheExpert
from tinyllama_model.mixture.expert import Expert
from tinyllama_model.mixture.neural_cache import NeuralCacheExpert
from tinyllama_model.mixture.unadapted import UnadaptedExpert

EXPERTS: list[Expert] = [UnadaptedExpert(), DocCacheExpert(), CorpusNgramsExpert(), NeuralCacheExpert()]


def register_expert(expert: Expert, *, before: str | None = None) -> Expert:
    """Add an expert to the chain: last, or before the one named `before`; a second expert of the same
    name is refused (its summary figures and config keys would collide)."""
    if any(e.name == expert.name for e in EXPERTS):
        raise ValueError(f"an expert named {expert.name!r} is already registered; give yours another name")
    names = [e.name for e in EXPERTS]
    if before is not None and before not in names:
        raise ValueError(f"before={before!r} names no registered expert; choose one of {names}")
    EXPERTS.insert(names.index(before) if before is not None else len(EXPERTS), expert)
    return expert


def unregister_expert(name: str) -> None:
    """Take an expert out of the chain (a test's registration, undone)."""
    EXPERTS[:] = [e for e in EXPERTS if e.name != name]


def expert(name: str) -> Expert:
    """The registered expert of that name."""
    for e in EXPERTS:
        if e.name == name:
            return e
    raise KeyError(f"no expert named {name!r}; registered: {[e.name for e in EXPERTS]}")


def active(model: Any) -> Iterator[tuple[Expert, Any]]:
    """(expert, its parameters) for each expert a loaded model predicts with, in chain order."""
    for e in EXPERTS:
        params = e.params(model)
        if params is not None:
            yield e, params


def reads_documents(model: Any) -> bool:
    """Whether the model reads each document through an adapter (adaptation.py): it adapts, or has an
    expert that reads the states of the document so far (`Expert.reads_states`), which then reads with
    an adapter that never learns."""
    return getattr(model.config, "adapt_lr", None) is not None or any(
        e.reads_states for e, _ in active(model)
    )
