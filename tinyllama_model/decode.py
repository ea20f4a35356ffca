"""The one-token decode step: the hot loop of generation, one new position per row on the matrices the
KV cache holds packed for it (decode_weights.py).

The same maths as `TinyLlama.forward_cached` for T = 1 in fewer ops, since on a CPU a decode step's time
beyond streaming the weights is per-op overhead: rows stay (B, C) with no time axis, q and k are
normalised and rotated as one tensor, w1 | w3 and wq | wk | wv are one matmul each, and RMSNorm is spelled
out in plain ops (`norm`). `TinyLlama.forward_cached` calls `decode_one` (or its compiled form) for a
one-token step once the model has packed its weights (`TinyLlama.new_cache`); tests check that the step
gives the bits or tokens of the plain path (test_model.py, test_compiled_decode.py). Kept apart from
model.py so that the network reads in one sitting.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from tinyllama_model.attention_math import apply_rope, repeat_kv
from tinyllama_model.decode_weights import LayerWeights
from tinyllama_model.kv_cache import KVCache


def norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """`RMSNorm.forward` spelled out in six plain ops; the same bits.

    On a CPU F.rms_norm is a composite of ~10 ATen calls, and in the decode loop every call runs cold: the
    weight matrix streamed just before has evicted the dispatcher's code and data from L2 (measurements:
    docs/tuning-log.md).
    """
    if x.dtype in (torch.float32, torch.float64):
        return module.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.eps))
    xf = x.float()
    return module.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + module.eps)).type_as(x)


def attention(attn: Any, x, cos, sin, k_cache, v_cache, pos, mask, ve, packed: LayerWeights) -> torch.Tensor:
    """`Attention.forward_cached` for one new position per row, x (B, C), on the packed matrices."""
    b = x.size(0)
    nh, nkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    qkv = x @ packed.qkv  # (B, (nh + 2 nkv) hd): wq | wk | wv
    qk = qkv[:, : (nh + nkv) * hd].view(b, nh + nkv, hd)
    v = qkv[:, (nh + nkv) * hd :].view(b, nkv, hd)
    if attn.qk_norm_eps is not None:
        qk = F.rms_norm(qk, (hd,), eps=attn.qk_norm_eps)
    if attn.ve_gate is not None and ve is not None:
        gate = 2 * torch.sigmoid(attn.ve_gate(x[:, : attn.ve_gate.in_features]))  # (B, nkv)
        v = v + gate[..., None] * ve.view(b, nkv, hd)
    qk = apply_rope(qk, cos, sin)
    k_cache.narrow(2, pos, 1).copy_(qk[:, nh:, None])  # caches are (B, nkv, max_seq_len + 1, hd)
    v_cache.narrow(2, pos, 1).copy_(v[:, :, None])
    k = repeat_kv(k_cache.narrow(2, 0, pos + 1), attn.n_rep)  # (B, nh, pos+1, hd)
    v = repeat_kv(v_cache.narrow(2, 0, pos + 1), attn.n_rep)
    y = F.scaled_dot_product_attention(qk[:, :nh, None], k, v, attn_mask=mask)  # (B, nh, 1, hd)
    return y.view(b, nh * hd) @ packed.wo


def feed_forward(ff: Any, x: torch.Tensor, packed: LayerWeights) -> torch.Tensor:
    """`FeedForward.forward` with the matrices laid out for decoding: w1 | w3 in one matmul."""
    up = x @ packed.w13
    if ff.w3 is None:
        return F.relu(up).square() @ packed.w2
    gate, linear = up.chunk(2, dim=-1)
    return (F.silu(gate) * linear) @ packed.w2


def block(layer: Any, x, cos, sin, k_cache, v_cache, pos, mask, ve, packed: LayerWeights) -> torch.Tensor:
    """`Block.forward_cached` for one new position per row."""
    x_norm = norm(layer.attention_norm, x)
    h = x + attention(layer.attention, x_norm, cos, sin, k_cache, v_cache, pos, mask, ve, packed)
    return h + feed_forward(layer.feed_forward, norm(layer.ffn_norm, h), packed)


def decode_one(model: Any, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token per row (B, 1) of a `TinyLlama` -> logits (B, 1, V), on the matrices the cache holds."""
    b, pos = idx.size(0), cache.pos
    if cache.pad is None:  # every row at the same position, every cached slot visible
        cos, sin, mask = model.rope_cos[pos], model.rope_sin[pos], None  # (2, hd/2)
    else:
        positions, mask = cache.positions_and_mask(1)  # (B, 1)
        cos, sin = model.rope_cos[positions], model.rope_sin[positions]  # (B, 1, 2, hd/2): over heads
    weights = cache.decode_weights
    h = model.tok_embeddings(idx).view(b, -1)
    for i, layer in enumerate(model.layers):
        ve = model._value_embed(i, idx)
        k, v = cache.k_layers[i], cache.v_layers[i]
        h = block(layer, h, cos, sin, k, v, pos, mask, ve, weights.layers[i])
    cache.pos += 1
    return model._logits(norm(model.norm, h), weights.output)[:, None]


@functools.cache
def compiled_decode_one():
    """`decode_one` through torch.compile, built once per process and shared by every model.

    The compiled step fuses each layer's norms, rotary, cache writes and activation into a few C++ kernels
    around the matmuls, so a step pays fewer of the per-call costs that every ATen call after a weight
    stream pays cold (`norm`). `dynamic=True` makes the cache position and the batch size symbols,
    so a graph serves every position; Dynamo still builds one per kind of cache (padded or not) and one for
    a batch of 1. Parameters are inputs, not constants, so a copy of the model (adaptation.py) or new
    weights reuse the graphs. The build costs seconds once per process (Inductor caches it on
    disk); greedy output stays that of the eager step (tests/tinyllama_model/test_compiled_decode.py).
    """
    return torch.compile(decode_one, dynamic=True)
