"""The key/value cache of incremental decoding: inference-only state that the training forward never sees.

It knows sizes and positions only (the model config's `n_layers`, `kv_heads`, `max_seq_len`,
`head_dim`), never the model, so model.py can create one without a cycle.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class CacheShape(Protocol):
    """What a cache needs of a model config (`ModelConfig` is one)."""

    n_layers: int
    max_seq_len: int

    @property
    def kv_heads(self) -> int: ...

    @property
    def head_dim(self) -> int: ...


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding. Inference only.

    Rows share one timeline: a batch of prompts of different lengths is left-padded, and `pad[b]` says
    how many leading slots of row b are padding (never attended to; rotary positions count from the
    first real token), so a padded row computes what it would alone.
    """

    def __init__(
        self,
        cfg: CacheShape,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        pad: torch.Tensor | None = None,
        decode_weights: Any = None,
    ):
        # one slot more than a window, never written: a view of the filled slots is then never the whole
        # tensor, which the compiled decode step would otherwise specialise on (a second graph for the last
        # position of every window)
        shape = (cfg.n_layers, batch_size, cfg.kv_heads, cfg.max_seq_len + 1, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # each layer's (B, nkv, max_seq_len + 1, hd) view, taken once for every forward: indexing self.k[i]
        # is an ATen call per layer per token, and in the decode loop each runs cold (decode.norm)
        self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)
        self.max_len = cfg.max_seq_len
        self.pos = 0  # slots filled
        self.pad = None if pad is None or not bool(pad.any()) else pad.to(device=device, dtype=torch.long)
        # the model's matrices packed for one-token steps (decode_weights.py), looked up once per cache
        # rather than once per token: weights do not change while a cache is in use
        self.decode_weights = decode_weights

    def reset(self, pad: torch.Tensor | None = None) -> None:
        """Empty the cache (the tensors are reused) with a new left padding."""
        self.pos = 0
        self.pad = None if pad is None or not bool(pad.any()) else pad.to(self.k.device, torch.long)

    def positions_and_mask(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotary positions (B or 1, T) of the next t slots and the attention mask (None when not needed)."""
        device, p = self.k.device, self.pos
        slots = torch.arange(p, p + t, device=device)  # (T,)
        if self.pad is None:
            if t == 1 or p == 0:
                return slots[None], None  # one token sees all; a fresh prefill is plain causal
            keys = torch.arange(p + t, device=device)
            return slots[None], (keys[None, :] <= slots[:, None])[None, None]  # (1, 1, T, p+T)
        # RoPE scores depend only on relative positions, so this offset changes rounding, not maths: it
        # keeps a padded row's numbers as close as possible to the same prompt run alone
        positions = (slots[None, :] - self.pad[:, None]).clamp(min=0)  # (B, T)
        keys = torch.arange(p + t, device=device)
        causal = keys[None, :] <= slots[:, None]  # (T, p+T)
        real = keys[None, :] >= self.pad[:, None]  # (B, p+T)
        # a padding query attends to itself only, so every softmax row has a finite entry
        own = keys[None, :] == slots[:, None]
        mask = causal[None] & (real[:, None, :] | own[None])  # (B, T, p+T)
        return positions, mask[:, None]  # (B, 1, T, p+T)
