"""The one shape every test-time expert has, so fitting, scoring, generation, export and the model card
read the registry (registry.py) instead of naming experts one by one.

An expert predicts each next token from what came before in the document, beside the network. It is
switched on by the train config (`fit_params`), fitted on the validation split (its `hits` and
`table_shape` go to fitting.py), stored in config.json (`to_config`, `keys`), and read back by a loaded
model (`params`): scoring mixes its `hits` in, generation asks a `Follower` per batch for a `Proposal`.
Its weights live in config.json's `"mixture"` object under its `keys`; a loaded `ModelConfig` has a
built-in expert's as fields and keeps the others in its `mixture` dict (`value` reads either).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from tinyllama_model.mixture.fitting import mix_sparse

# how a model is fitted: "network" experts are fitted on the unadapted network too (with calibration),
# "adapted" ones only on the network the model predicts with (after dynamic evaluation is chosen)
STAGES = ("network", "adapted")


@dataclass
class Reading:
    """What a scoring pass has read of a packed stream: the experts predict its targets from it."""

    model: Any
    tokens: np.ndarray
    unadapted: np.ndarray | None = None  # the unadapted network's sliding-window log-probabilities
    states: np.ndarray | None = None  # the final state that predicted each target (`document_pass`)


@dataclass
class FitInputs:
    """What the train phase's fit offers an expert to decide whether and how it is fitted."""

    model: Any
    settings: Any  # the train config's `mixture` section (config.py)
    sample: Callable[[str, int], np.ndarray]  # (split, max tokens) -> whole documents of that split


class Proposal(NamedTuple):
    """An expert's next-token distribution for one row: `q` at `ids`, or over the vocabulary (ids None)."""

    bucket: int
    q: torch.Tensor
    ids: torch.Tensor | None = None


class Follower(Protocol):
    """An expert following a batch's rows while it generates (the whole prompt, then each new token)."""

    def observe(self, tokens: list[int], states: torch.Tensor | None) -> None: ...

    def propose(self, row: int, states: torch.Tensor | None) -> Proposal | None: ...


class Expert:
    """The protocol, with defaults: an expert that only scores overrides `name`, `keys`, `refusal`,
    `fit_params`, `params`, `table_shape`, `hits` (and `follower` to generate, `card_line` for the card).
    Every `EOS_ID` token starts a new document: an expert forgets what it read (its reset)."""

    name: str = ""  # in the train summary (`val_loss_refit_<name>`) and in errors
    keys: tuple[str, ...] = ()  # its config.json keys, the weights' first
    refusal: str = ""  # why `export-hf` cannot express it
    stage: str = "adapted"
    reads_states: bool = False  # it reads the network's final states: the model reads through an adapter

    def wanted(self, settings: Any) -> bool:
        """Whether `train.mixture` (config.py) asks for it (cheap: decides which fits run at all)."""
        raise NotImplementedError

    def check(self, settings: Any, model_cfg: Any) -> None:
        """Refuse, before training, a model it could not be fitted for (`ConfigError` naming the fix)."""

    def fit_params(self, fit: FitInputs) -> Any | None:
        """Its parameters for the fit, once `wanted` (None: the model as fitted so far cannot have it)."""
        raise NotImplementedError

    def params(self, model: Any) -> Any | None:
        """Its parameters as a loaded model has them (None: the model predicts without it)."""
        raise NotImplementedError

    def table_shape(self, params: Any) -> tuple[int, ...]:
        """The shape of its weight table as the fit sees it: rows, then buckets per row."""
        raise NotImplementedError

    def hits(self, params: Any, reading: Reading) -> tuple[np.ndarray, np.ndarray] | None:
        """Per target (index t - 1 for position t): its bucket (-1: no prediction) and its probability of
        the true token; None when the reading lacks what it needs and it is left out."""
        raise NotImplementedError

    def to_config(self, params: Any, weights: list) -> dict[str, Any]:
        """The config.json entries of its fitted weights (as `fitting.fit_weights` returns them)."""
        return {self.keys[0]: weights}

    def weights(self, cfg: Any) -> np.ndarray:
        """Its weights, flat, indexed by bucket."""
        return np.asarray(value(cfg, self.keys[0]), dtype=np.float64).ravel()

    def save(self, params: Any, model_dir: Path) -> dict[str, Any]:
        """Write what it needs beside config.json; the summary's figures about it."""
        return {}

    def follower(
        self, params: Any, model: Any, prompts: Sequence[Sequence[int]], adapter: Any, use_cache: bool
    ) -> Follower | None:
        """What follows the rows while generating; None: it does not take part in generation."""
        return None

    def card_line(self, cfg: Mapping[str, Any]) -> str | None:
        """Its line on the model card, from config.json (None when the model has none)."""
        return None

    def stored(self, cfg: Any) -> bool:
        """Whether config.json has any of its keys set (what `export-hf` refuses)."""
        return any(value(cfg, key) is not None for key in self.keys)


def value(cfg: Any, key: str) -> Any:
    """A key of config.json: a `ModelConfig` field, or an entry of its `mixture` object (either a
    `ModelConfig` or the config.json dict)."""
    if isinstance(cfg, Mapping):
        return cfg[key] if key in cfg else (cfg.get("mixture") or {}).get(key)
    if hasattr(cfg, key):
        return getattr(cfg, key)
    return (getattr(cfg, "mixture", None) or {}).get(key)


def mix_proposal(probs: torch.Tensor, weight: float, proposal: Proposal) -> None:
    """probs (V,) <- (1 - w) probs + w q, in place."""
    if proposal.ids is None:
        probs.copy_((1.0 - weight) * probs + weight * proposal.q.to(probs.device, probs.dtype))
    else:
        mix_sparse(probs, weight, proposal.ids.to(probs.device), proposal.q)
