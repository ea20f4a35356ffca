"""The unadapted network as an expert beside the adapting one: a share of the trained network's own
prediction is mixed into the adapted network's, a hedge for a dynamic-evaluation step that went wrong.

Only a model with `adapt_lr` (adaptation.py) has one; its one weight, `unadapted_share` in config.json, is
fitted with the other experts after adaptation is chosen (tasks/train.py). Scoring reads the unadapted
network as sliding-window scoring does (`Reading.unadapted`); generation runs it on its own KV cache, its
window following the decode loop's rule (decode_window.py), so both see the same logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tinyllama_model.decode_window import append, left_pad, window_logits
from tinyllama_model.mixture.expert import Expert, FitInputs, Proposal, Reading, value


class UnadaptedExpert(Expert):
    """The unadapted network's share: one weight, every target in bucket 0."""

    name, keys, stage = "unadapted_share", ("unadapted_share",), "adapted"
    refusal = "transformers does not learn from the text it reads"

    def wanted(self, settings: Any) -> bool:
        return bool(settings.adapt_lrs)

    def fit_params(self, fit: FitInputs) -> bool | None:
        return True if fit.model.config.adapt_lr is not None else None

    def params(self, model: Any) -> float | None:
        cfg = model.config
        share = getattr(cfg, "unadapted_share", None) if getattr(cfg, "adapt_lr", None) is not None else None
        return share or None

    def table_shape(self, params: Any) -> tuple[int, int]:
        return (1, 1)

    def hits(self, params: Any, reading: Reading) -> tuple[np.ndarray, np.ndarray] | None:
        if reading.unadapted is None:
            return None
        return np.zeros(len(reading.unadapted), dtype=np.int64), np.exp(reading.unadapted)

    def to_config(self, params: Any, weights: list) -> dict[str, Any]:
        return {"unadapted_share": float(np.reshape(weights, ()))}

    def weights(self, cfg: Any) -> np.ndarray:
        return np.array([value(cfg, "unadapted_share") or 0.0])

    def stored(self, cfg: Any) -> bool:
        """Only beside `adapt_lr`, which export refuses first: the share alone changes nothing."""
        return bool(value(cfg, "adapt_lr") is not None and value(cfg, "unadapted_share"))

    def follower(
        self, share: float, model: Any, prompts: Sequence[Sequence[int]], adapter: Any, use_cache: bool
    ) -> _UnadaptedNet | None:
        return None if adapter is None else _UnadaptedNet(model, prompts, use_cache)

    def card_line(self, cfg: Mapping[str, Any]) -> str | None:
        share = cfg.get("unadapted_share")
        if not (cfg.get("adapt_lr") and share):
            return None
        return (
            f"- the unadapted network: {share} of each prediction, beside the adapted one "
            "(`tinyllama_model/mixture/unadapted.py`)"
        )


class _UnadaptedNet:
    """The unadapted network beside the adapting copy, on its own KV cache, for its share of the mixture:
    its window follows the decode loop's rule, so its logits are what sliding-window scoring computes."""

    def __init__(self, model: Any, prompts: Sequence[Sequence[int]], use_cache: bool):
        self.model, self.window_len = model, model.config.max_seq_len
        self.window, self.pad = left_pad([p[-self.window_len :] for p in prompts], model.rope_cos.device)
        self.cache = model.new_cache(len(prompts), self.pad) if use_cache else None
        self.logits = window_logits(model, self.window, self.pad, self.cache)

    def step(self, tokens: list[int]) -> None:
        token = torch.tensor(tokens, device=self.window.device)
        self.window, self.pad, slid = append(self.window, self.pad, token, self.window_len)
        if slid or self.cache is None:
            self.logits = window_logits(self.model, self.window, self.pad, self.cache)
        else:
            self.logits = self.model.forward_cached(token[:, None], self.cache)[:, -1]

    def observe(self, tokens: list[int], states: torch.Tensor | None) -> None:
        self.step(tokens)

    def propose(self, row: int, states: torch.Tensor | None) -> Proposal:
        return Proposal(0, self.logits[row].float().softmax(dim=-1))
