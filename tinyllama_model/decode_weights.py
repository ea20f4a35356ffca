"""The model's matrices laid out for decoding one token at a time: the hot loop of generation on a CPU.

A decode step multiplies one row per sequence by every weight matrix, so it runs at the speed the
weights stream from memory, not at the CPU's FLOP rate. Two layouts stream faster than `nn.Linear`'s
(out, in) weight applied as `F.linear`:
- each matrix transposed once to (in, out), applied as `x @ w` (measured: docs/tuning-log.md);
- wq | wk | wv and w1 | w3 concatenated: one matmul each instead of three and two, so fewer, larger
  reads and fewer calls.
The arithmetic is the same dot products, so greedy output does not change (the cache tests compare the
packed step with the full forward in float64, and generation with transformers in fp32).

The packed copy costs a second copy of the matrices while it is held. It is keyed by every weight's
storage and version counter and checked each time a KV cache is made, so after a training step,
`load_state_dict` or `.to()` the next generation packs again rather than decode with stale weights.
Nothing here imports model.py (it imports this).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LayerWeights:
    qkv: torch.Tensor  # (dim, (n_heads + 2 * kv_heads) * head_dim): wq | wk | wv, transposed
    wo: torch.Tensor  # (n_heads * head_dim, dim)
    w13: torch.Tensor  # (dim, 2 * hidden): w1 | w3 for SwiGLU; (dim, hidden): w1 alone for ReLU^2
    w2: torch.Tensor  # (hidden, dim)


@dataclass(frozen=True)
class DecodeWeights:
    key: tuple[tuple[int, int], ...]  # (storage address, version) of every weight it was packed from
    layers: tuple[LayerWeights, ...]
    output: torch.Tensor  # (dim, vocab_size)


def matrix_groups(layers: Iterable[Any], output_weight: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The nn.Linear weights `pack` joins into each packed matrix, in `LayerWeights` order, then the head.

    Read by attribute, not through `parameters()`, which walks the module tree (measured: docs/tuning-log.md).
    """
    groups: list[tuple[torch.Tensor, ...]] = []
    for layer in layers:
        att, ff = layer.attention, layer.feed_forward
        gate_up = (ff.w1.weight,) if ff.w3 is None else (ff.w1.weight, ff.w3.weight)
        groups += [(att.wq.weight, att.wk.weight, att.wv.weight), (att.wo.weight,), gate_up, (ff.w2.weight,)]
    return [*groups, (output_weight,)]


def weights_key(groups: Iterable[tuple[torch.Tensor, ...]]) -> tuple[tuple[int, int], ...]:
    """What changes when any weight does: its storage (replaced by `.to()`) or its in-place version."""
    return tuple((w.data_ptr(), w._version) for group in groups for w in group)


@torch.no_grad()
def pack(groups: list[tuple[torch.Tensor, ...]]) -> DecodeWeights:
    """Join and transpose each of `matrix_groups`: (out_i, in) weights -> one contiguous (in, sum out_i)."""
    packed = [torch.cat(group).t().contiguous() for group in groups]
    per_layer = len(dataclasses.fields(LayerWeights))
    layers = tuple(LayerWeights(*packed[i : i + per_layer]) for i in range(0, len(packed) - 1, per_layer))
    return DecodeWeights(weights_key(groups), layers, packed[-1])
