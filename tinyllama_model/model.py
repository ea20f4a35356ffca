"""A LLaMA-style decoder in plain PyTorch, read top-down: RMSNorm -> RoPE -> Attention -> FeedForward ->
Block -> TinyLlama. Its shape and switches are a `ModelConfig` (model_config.py).

Names follow meta-llama (`tok_embeddings`, `attention.wq`, `feed_forward.w1`, ...) so checkpoints map
one-to-one onto other implementations. Rotary embeddings use the Hugging Face Llama convention (the head
dimension split into two halves, "rotate_half", not interleaved pairs), so `export.py` copies wq/wk
unchanged into `LlamaForCausalLM` with no permutation.

The training forward (`TinyLlama.forward`) is a straight line: no KV-cache branches, causal attention via
`scaled_dot_product_attention(is_causal=True)`. Incremental decoding goes through `forward_cached` with a
`KVCache` object (`kv_cache.py`) that only inference code creates; its one-token step, on weights packed
for it, is `decode.py`. RoPE and the key/value head sharing are `attention_math.py`. Sampling lives in
`generate.py`; files on disk in `checkpoint.py`.

Levers from the small-budget speedrun records (ReLU^2, QK-norm, zero-init projections, logit soft-capping,
value embeddings) are `ModelConfig` flags, all off by default and in every preset: off, the model is plain
LLaMA. Their maths is the levers section at the bottom, each called from one marked line above.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tinyllama_model.attention_math import apply_rope, repeat_kv, rope_tables
from tinyllama_model.checkpoint import (
    CONFIG_FILE,
    check_loadable,
    read_model_config,
    read_model_weights,
    save_model_dir,
)
from tinyllama_model.decode import compiled_decode_one, decode_one
from tinyllama_model.decode_weights import DecodeWeights, matrix_groups, pack, weights_key
from tinyllama_model.errors import ConfigError
from tinyllama_model.generate import generate_tensor
from tinyllama_model.kv_cache import KVCache
from tinyllama_model.mixture.corpus_ngrams import CorpusNgrams, corpus_file_tokens, table_bytes
from tinyllama_model.model_config import ModelConfig  # also imported from here by most callers


class RMSNorm(nn.Module):
    """Scale by the root mean square (no mean subtraction, no bias), computed in float32 like LLaMA."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is weight * x * rsqrt(mean(x^2) + eps) in one call (bit-equal to the spelled-out
        # ops in fp32); lower precision is normalised in fp32 and cast back before the weight, as in HF;
        # float64 (equivalence tests) stays float64
        if x.dtype in (torch.float32, torch.float64):
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).type_as(x)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal SDPA; under CPU bf16 autocast, in fp32, because PyTorch's CPU flash-attention backward runs
    several times slower in bf16 (measurements: docs/tuning-log.md). The projections around it are where
    bf16 pays.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, has_ve: bool = False):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.n_rep = cfg.n_heads // cfg.kv_heads
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout
        self.qk_norm_eps = cfg.norm_eps if cfg.qk_norm else None  # lever (levers section below)
        self.ve_gate = value_embed_gate(cfg) if has_ve else None  # lever (levers section below)

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ve: torch.Tensor | None):
        b, t, _ = x.shape
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if self.qk_norm_eps is not None:
            q, k = qk_rms_norm(q, k, self.qk_norm_eps)
        if self.ve_gate is not None and ve is not None:
            v = v + gated_value_embed(self.ve_gate, x, ve).transpose(1, 2)  # (B, nkv, T, hd)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ve: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin, ve)
        k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, nh, T, hd)
        dropout = self.dropout if self.training else 0.0
        y = causal_attention(q, k, v, dropout)  # (B, nh, T, hd)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, C)

    def forward_cached(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        pos: int,
        mask: torch.Tensor | None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from T new positions at cache slot `pos` to everything cached so far (inference only)."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin, ve)
        k_cache[:, :, pos : pos + t] = k  # caches are (B, nkv, max_seq_len + 1, hd)
        v_cache[:, :, pos : pos + t] = v
        k = repeat_kv(k_cache[:, :, : pos + t], self.n_rep)  # (B, nh, pos+T, hd)
        v = repeat_kv(v_cache[:, :, : pos + t], self.n_rep)
        # mask None: a fresh unpadded prefill (is_causal), or one token that sees every cached slot
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); or the ReLU^2 lever (mlp="relu2", levers section): no w3."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False) if cfg.mlp == "swiglu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is None:
            return self.w2(relu_squared(self.w1(x)))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then h + feed_forward(norm(h))."""

    def __init__(self, cfg: ModelConfig, has_ve: bool = False):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, has_ve)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ve=None) -> torch.Tensor:
        h = x + self.resid_dropout(self.attention(self.attention_norm(x), cos, sin, ve))
        return h + self.resid_dropout(self.feed_forward(self.ffn_norm(h)))

    def forward_cached(self, x, cos, sin, k_cache, v_cache, pos, mask, ve=None) -> torch.Tensor:
        x_norm = self.attention_norm(x)
        h = x + self.attention.forward_cached(x_norm, cos, sin, k_cache, v_cache, pos, mask, ve)
        return h + self.feed_forward(self.ffn_norm(h))


class TinyLlama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i in cfg.ve_layers) for i in range(cfg.n_layers))
        kv_dim = cfg.kv_heads * cfg.head_dim
        tables = {str(i): nn.Embedding(cfg.vocab_size, kv_dim) for i in cfg.ve_layers}
        self.value_embeds = nn.ModuleDict(tables)  # keyed by layer index; empty unless value_embeds
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self._decode_weights: DecodeWeights | None = None  # packed by the first new_cache()
        self.compile_decode = False  # True: one-token steps run torch.compile'd (`compiled_decode_one`)
        self.corpus_ngrams: CorpusNgrams | None = None  # with config.corpus_ngram_weights (from_pretrained)
        # with record_states, every forward keeps the final states its head read (neural_cache.py)
        self.record_states, self.states = False, None
        # RoPE tables computed once; not saved (persistent=False) because they follow from the config
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, 2, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layers) so the stream's variance stays O(1)
        for name, p in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_projection_std(cfg))
            elif name.endswith("attention.ve_gate.weight"):
                nn.init.zeros_(p)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return self.config.flops_per_token(seq_len)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> (logits, loss). Logits are (B, T, V), or (B, 1, V) with last_only and no targets.

        targets (B, T) with -1 at positions that carry no loss. Logits are float32 even under autocast.
        """
        _, t = idx.shape
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len={self.config.max_seq_len}")
        h = self.dropout(self.tok_embeddings(idx))  # (B, T, C)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]  # (T, 2, hd/2)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, self._value_embed(i, idx))
        h = self.norm(h)
        if targets is None:
            return self._logits(h[:, -1:] if last_only else h), None
        logits = self._logits(h)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.inference_mode()
    def forward_cached(self, idx: torch.Tensor, cache: KVCache, *, last_only: bool = True) -> torch.Tensor:
        """Run T new tokens (B, T) through the model, appending to `cache`; returns float32 logits.

        (B, 1, V) with last_only (decoding), else (B, T, V). The caller keeps pos + T <= max_seq_len.
        One token (T = 1, the decode loop) takes the packed step of decode.py.
        """
        _, t = idx.shape
        if cache.pos + t > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {cache.pos} used, {t} more asked")
        if t == 1 and cache.decode_weights is not None:
            step = compiled_decode_one() if self.compile_decode else decode_one
            return step(self, idx, cache)
        positions, mask = cache.positions_and_mask(t)  # (B or 1, T)
        cos = self.rope_cos[positions][:, None]  # (B or 1, 1, T, 2, hd/2)
        sin = self.rope_sin[positions][:, None]
        h = self.tok_embeddings(idx)
        for i, layer in enumerate(self.layers):
            ve = self._value_embed(i, idx)
            k, v = cache.k_layers[i], cache.v_layers[i]
            h = layer.forward_cached(h, cos, sin, k, v, cache.pos, mask, ve)
        cache.pos += t
        h = self.norm(h[:, -1:] if last_only else h)
        return self._logits(h)

    def decode_weights(self) -> DecodeWeights:
        """The matrices packed for one-token decoding, packed again whenever a weight has changed."""
        groups = matrix_groups(self.layers, self.output.weight)
        if self._decode_weights is None or self._decode_weights.key != weights_key(groups):
            self._decode_weights = None  # free the stale copy before packing the new one
            self._decode_weights = pack(groups)
        return self._decode_weights

    def _value_embed(self, layer: int, idx: torch.Tensor) -> torch.Tensor | None:
        """Layer `layer`'s value embedding of the tokens idx (B, T) -> (B, T, kv_dim), or None."""
        key = str(layer)
        return self.value_embeds[key](idx) if key in self.value_embeds else None

    def _logits(self, h: torch.Tensor, output_t: torch.Tensor | None = None) -> torch.Tensor:
        """float32 logits, also under bf16 autocast; a float64 model (equivalence tests) keeps float64.

        output_t: the head's weight transposed (decode_weights), instead of `self.output`.
        """
        if self.record_states:
            self.states = h.detach()
        logits = (self.output(h) if output_t is None else h @ output_t).to(
            torch.promote_types(h.dtype, torch.float32)
        )
        cap = self.config.logit_softcap
        return logits if cap is None else soft_cap(logits, cap)

    @torch.no_grad()
    def scale_logits(self, temperature: float) -> None:
        """Divide every logit by `temperature`, in the weights: the final norm's weight, which the head
        reads (tied or not), is divided by it. So scoring, generation, dynamic evaluation and the
        transformers export all read the calibrated network, with no new config key.

        A network trained for several epochs on a small corpus is overconfident on text it never saw
        (measurements: docs/tuning-log.md). Under a soft cap the logits are not linear in that weight, so a
        capped model is refused.
        """
        if self.config.logit_softcap is not None:
            raise ValueError(
                f"logit_softcap={self.config.logit_softcap} caps the logits after the head, so scaling the "
                "final norm is not a temperature of them; calibrate a model without a soft cap"
            )
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}: must be positive")
        self.norm.weight.div_(temperature)

    def new_cache(self, batch_size: int, pad: torch.Tensor | None = None) -> KVCache:
        p = self.rope_cos
        dtype = next(self.parameters()).dtype
        weights = self.decode_weights()
        return KVCache(self.config, batch_size, device=p.device, dtype=dtype, pad=pad, decode_weights=weights)

    @torch.inference_mode()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        eos_id: int | None = 1,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue each row of idx (B, T); returns (B, T + n). See `generate.generate_ids` for the rules.

        Rows that stop at EOS early are filled with PAD (0) after their EOS; n is the longest row's count.
        """
        return generate_tensor(
            self,
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            eos_id=eos_id,
            seed=seed,
        )

    # -- the model directory (config.json + model.safetensors [+ tokenizer.model]) --------------------

    def save_pretrained(self, directory: str | Path, tokenizer_file: str | Path | None = None) -> Path:
        """Write the model directory atomically (see checkpoint.py); a tied head is stored once."""
        state = self.state_dict()
        if self.config.tie_embeddings:
            state.pop("output.weight")  # tok_embeddings.weight again; safetensors refuses aliases
        extra = self.corpus_ngrams.save if self.corpus_ngrams is not None else None
        return save_model_dir(directory, self.config.to_dict(), state, tokenizer_file, write_extra=extra)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> TinyLlama:
        """Rebuild a model from its directory; weights that do not fit config.json are an error.

        The config is checked first by arithmetic: its bounds (`ModelConfig`), the tensors it describes
        against the weights file's header, and the memory it needs (with the corpus n-grams' tokens and
        tables) against this machine's (`check_loadable`), so a config.json that does not fit is refused
        before any module is built or anything is allocated.
        """
        try:
            cfg = ModelConfig.from_dict(read_model_config(directory))
        except ConfigError as err:  # name the file: the config came from it, not from the caller
            raise ConfigError(f"{Path(directory) / CONFIG_FILE}: {err}") from err
        n_bytes = load_bytes(cfg)
        if cfg.corpus_ngram_weights is not None:
            n_bytes += table_bytes(corpus_file_tokens(directory), len(cfg.corpus_ngram_weights))
        check_loadable(directory, cfg.parameter_shapes(), n_bytes)
        model = cls(cfg)
        model.load_state_dict(read_model_weights(directory), strict=not cfg.tie_embeddings)
        if cfg.corpus_ngram_weights is not None:
            model.corpus_ngrams = CorpusNgrams.load(directory, cfg.vocab_size, len(cfg.corpus_ngram_weights))
        return model.to(map_location)


# -- levers no preset uses ------------------------------------------------------------------------------
# From the small-budget speedrun records (modded-nanogpt, nanochat): ModelConfig flags, off by default and
# off in every preset, kept here together rather than deleted until they are measured at the `wikipedia`
# preset's shape (what they did at the presets' shapes: docs/tuning-log.md). Off, the model is plain
# LLaMA, and export.py refuses a model that uses one. decode.py spells qk_norm and the value embeddings
# out again for its one-token step; train.head_lr, the optimiser's lever, lives in optim.py.


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """mlp="relu2": relu(x)^2 between w1 and w2, two matrices of 4*dim instead of SwiGLU's three."""
    return F.relu(x).square()


def qk_rms_norm(q: torch.Tensor, k: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """qk_norm: each head's queries and keys RMS-normalised (no weight), so attention logits stay bounded."""
    return F.rms_norm(q, (q.size(-1),), eps=eps), F.rms_norm(k, (k.size(-1),), eps=eps)


def value_embed_gate(cfg: ModelConfig) -> nn.Linear:
    """value_embeds: the gate of a layer's value embedding, read from the block input's leading channels
    (zero init: a gate of 1); the token tables themselves are `TinyLlama.value_embeds`."""
    return nn.Linear(cfg.ve_gate_channels, cfg.kv_heads, bias=False)


def gated_value_embed(gate: nn.Linear, x: torch.Tensor, ve: torch.Tensor) -> torch.Tensor:
    """value_embeds: 2 * sigmoid(gate(x[..., :C])) * ve per kv head, x (B, T, C), ve (B, T, nkv * hd) ->
    (B, T, nkv, hd), added to the values."""
    weight = 2 * torch.sigmoid(gate(x[..., : gate.in_features]))  # (B, T, nkv)
    return weight.unsqueeze(-1) * ve.view(*ve.shape[:-1], gate.out_features, -1)


def residual_projection_std(cfg: ModelConfig) -> float:
    """The init std of attention.wo and feed_forward.w2: GPT-2's 0.02 / sqrt(2 * n_layers), or 0 with
    zero_init_proj (each block starts as the identity, as in modded-nanogpt)."""
    return 0.0 if cfg.zero_init_proj else 0.02 / math.sqrt(2 * cfg.n_layers)


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """logit_softcap: cap * tanh(logits / cap), so no logit runs away early in training."""
    return cap * torch.tanh(logits / cap)


def load_bytes(cfg: ModelConfig) -> int:
    """The memory a model of this config takes once built: its parameters and RoPE tables, in the
    default dtype (as `TinyLlama(cfg)` makes them)."""
    elements = sum(math.prod(shape) for shape in cfg.parameter_shapes().values()) + cfg.buffer_elements()
    return elements * torch.get_default_dtype().itemsize
