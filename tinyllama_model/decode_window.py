"""The decode loop's window: prompts left-padded into one batch, a token appended, the window cut to its
last half when full, and the logits of its last position. Shared by the decode loop (generate.py) and the
unadapted network that runs beside an adapting one (mixture/unadapted.py), so both read the same context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tinyllama_model.tokenizer import PAD_ID


def left_pad(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    rows = [[PAD_ID] * (width - len(p)) + list(p) for p in prompts]
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    return torch.tensor(rows, dtype=torch.long, device=device), pad  # (B, W), (B,)


def append(
    window: torch.Tensor, pad: torch.Tensor, token: torch.Tensor, window_len: int
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The window (B, W) with one token per row appended; when that overfills it, only its last
    `window_len // 2` tokens (True: the cache must be rebuilt from them)."""
    window = torch.cat([window, token[:, None]], dim=1)
    if window.size(1) <= window_len:
        return window, pad, False
    cut = window.size(1) - max(1, window_len // 2)
    return window[:, cut:], (pad - cut).clamp(min=0), True


def window_logits(model: Any, window: torch.Tensor, pad: torch.Tensor, cache: Any) -> torch.Tensor:
    """(B, V) logits for the last position of the whole window (B, W).

    With a cache: a prefill from scratch. Without: the plain training forward, row by row when padded.
    """
    if cache is not None:
        cache.reset(pad)
        return model.forward_cached(window, cache)[:, -1]
    if not bool(pad.any()):
        return model(window, last_only=True)[0][:, -1]
    rows = [model(window[i : i + 1, int(pad[i]) :], last_only=True)[0][:, -1] for i in range(window.size(0))]
    return torch.cat(rows)
