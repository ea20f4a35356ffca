"""The pure functions attention is built from: rotary position tables and rotation, and the sharing of
key/value heads among query heads (grouped-query attention).

Kept apart from model.py because both the network (model.py) and its one-token decode step (decode.py)
compute with them. Rotary embeddings use the Hugging Face Llama convention (the head dimension split into
two halves, "rotate_half", not interleaved pairs), so `export.py` copies wq/wk unchanged into
`LlamaForCausalLM` with no permutation.
"""

from __future__ import annotations

import torch


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of position * frequency, each (max_seq_len, 2, head_dim // 2), float32.

    HF Llama computes `x * cos + rotate_half(x) * sin` with cos = cat(c, c), sin = cat(s, s) and
    rotate_half(x) = cat(-x2, x1). Viewing the head dimension as two halves (2, hd/2), that is
    `[x1, x2] * [c, c] + [x2, x1] * [-s, s]`: these are the [c, c] and [-s, s] tables.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (hd/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, hd/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack((cos, cos), dim=1), torch.stack((-sin, sin), dim=1)  # (T, 2, hd/2) each


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, head_dim) by position, in HF's rotate_half layout (see `rope_tables`).

    Dimension i is paired with i + head_dim/2, not with its neighbour (interleaved, as in meta-llama's
    complex-number version). The halves are swapped with `flip` rather than sliced and concatenated:
    fewer passes over memory, and a backward with no zero-filled slice gradients.
    cos/sin: (T, 2, hd/2) in training, (B, 1, T, 2, hd/2) for cached steps; for a one-token step x is
    (B, heads, hd) and cos/sin (2, hd/2), or (B, 1, 2, hd/2) when rows sit at different positions.
    """
    xr = x.unflatten(-1, (2, x.shape[-1] // 2))  # (..., T, 2, hd/2): [x1, x2]
    if cos.dtype != x.dtype:  # under autocast q/k are bf16 while the tables are fp32
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return (xr * cos + xr.flip(-2) * sin).flatten(-2)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hd) -> (B, n_kv * n_rep, T, hd): query head h reads key/value head h // n_rep."""
    if n_rep == 1:
        return x
    b, n_kv, t, hd = x.shape
    return x[:, :, None].expand(b, n_kv, n_rep, t, hd).reshape(b, n_kv * n_rep, t, hd)
