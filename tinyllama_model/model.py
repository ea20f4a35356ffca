"""A LLaMA-style decoder in plain PyTorch, read top-down: config -> RMSNorm -> RoPE -> Attention ->
FeedForward -> Block -> TinyLlama.

Names follow meta-llama (`tok_embeddings`, `attention.wq`, `feed_forward.w1`, ...) so checkpoints map
one-to-one onto other implementations. Rotary embeddings use the Hugging Face Llama convention (the head
dimension split into two halves, "rotate_half", not interleaved pairs), so `export.py` copies wq/wk
unchanged into `LlamaForCausalLM` with no permutation.

The training forward (`TinyLlama.forward`) is a straight line: no KV-cache branches, causal attention via
`scaled_dot_product_attention(is_causal=True)`. Incremental decoding goes through `forward_cached` with a
`KVCache` object that only inference code creates. Sampling lives in `generate.py`; files on disk in
`checkpoint.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyllama_model.checkpoint import (
    WEIGHTS_FILE,
    check_state_dict,
    read_model_config,
    read_model_weights,
    save_model_dir,
)
from tinyllama_model.errors import ConfigError
from tinyllama_model.generate import generate_tensor


@dataclass
class ModelConfig:
    dim: int = 512  # width of the residual stream
    n_layers: int = 8  # transformer blocks
    n_heads: int = 8  # query heads; head_dim = dim // n_heads must be even for RoPE
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None = n_heads (plain MHA)
    vocab_size: int = 12_000  # must match the tokenizer; ids 0-3 are PAD EOS UNK BOS
    max_seq_len: int = 512  # context window: the longest sequence trained on, size of the RoPE tables
    ffn_hidden_dim: int | None = None  # SwiGLU width; None = LLaMA's rule (2/3 * 4 * dim up to multiple_of)
    multiple_of: int = 256  # the LLaMA rule rounds the FFN width up to this (matmul-friendly shapes)
    rope_theta: float = 10_000.0  # RoPE base; larger stretches the wavelengths for longer contexts
    norm_eps: float = 1e-5  # RMSNorm epsilon
    dropout: float = 0.0  # attention and residual dropout while training; 0 for pretraining from scratch
    tie_embeddings: bool = False  # share tok_embeddings and output weights (fewer parameters)

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len", "multiple_of"):
            _require_positive_int(name, getattr(self, name))
        for name in ("n_kv_heads", "ffn_hidden_dim"):
            if getattr(self, name) is not None:
                _require_positive_int(name, getattr(self, name))
        if self.dim % self.n_heads:
            raise ConfigError(
                f"dim={self.dim} is not divisible by n_heads={self.n_heads}; make dim a multiple of n_heads"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; "
                "grouped-query attention shares each key/value head among n_heads // n_kv_heads query heads"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head_dim = dim // n_heads = {self.head_dim} is odd; rotary embeddings rotate pairs of "
                "dimensions, so choose dim and n_heads with an even quotient"
            )
        if self.vocab_size < 4:
            raise ConfigError(
                f"vocab_size={self.vocab_size} is smaller than the 4 special ids (PAD EOS UNK BOS); "
                "set it to the tokenizer's vocabulary size"
            )
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise ConfigError(f"rope_theta={self.rope_theta!r} must be a positive number (10000 is LLaMA's)")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ConfigError(f"norm_eps={self.norm_eps!r} must be a small positive number such as 1e-5")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout={self.dropout!r} must be in [0, 1)")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"tie_embeddings={self.tie_embeddings!r} must be true or false")

    # -- derived sizes ------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of the usual 4*dim keeps FLOPs equal to a 2-matrix MLP (3 matrices instead)."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def num_params(self) -> int:
        """Closed-form parameter count (a shared embedding counted once); `TinyLlama.num_params` agrees."""
        d, hd = self.dim, self.head_dim
        attention = d * (self.n_heads * hd) * 2 + d * (self.kv_heads * hd) * 2  # wq, wo; wk, wv
        feed_forward = 3 * d * self.hidden_dim  # w1, w2, w3
        norms = 2 * d  # attention_norm, ffn_norm
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)  # tok_embeddings (+ output)
        return self.n_layers * (attention + feed_forward + norms) + d + embeddings

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), nanoGPT's `estimate_mfu` formula.

        6*N for the matmuls (2 forward, 4 backward per weight) plus 12*L*H*Q*T for attention scores and
        the weighted sum (Q = head_dim, T = seq_len, default max_seq_len; the causal half is not discounted,
        as in nanoGPT and PaLM). N counts only weights that take part in a matmul: the embedding table is
        a lookup, so it is excluded unless it is tied to the output projection.
        """
        t = self.max_seq_len if seq_len is None else seq_len
        n = self.num_params() - (0 if self.tie_embeddings else self.vocab_size * self.dim)
        return 6 * n + 12 * self.n_layers * self.n_heads * self.head_dim * t

    # -- serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config key(s) {unknown}; valid keys are {sorted(known)} "
                "(was this config.json written by another program or version?)"
            )
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


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


# -- rotary position embeddings (pure functions) ----------------------------------------------------


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
    cos/sin: (T, 2, hd/2) in training, (B, 1, T, 2, hd/2) when decoding.
    """
    xr = x.unflatten(-1, (2, x.shape[-1] // 2))  # (..., T, 2, hd/2): [x1, x2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # under autocast q/k are bf16 while the tables are fp32
    return (xr * cos + xr.flip(-2) * sin).flatten(-2)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hd) -> (B, n_kv * n_rep, T, hd): query head h reads key/value head h // n_rep."""
    if n_rep == 1:
        return x
    b, n_kv, t, hd = x.shape
    return x[:, :, None].expand(b, n_kv, n_rep, t, hd).reshape(b, n_kv * n_rep, t, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.n_rep = cfg.n_heads // cfg.kv_heads
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, nh, T, hd)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)  # (B, nh, T, hd)
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
    ) -> torch.Tensor:
        """Attend from T new positions at cache slot `pos` to everything cached so far (inference only)."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        k_cache[:, :, pos : pos + t] = k  # caches are (B, nkv, max_seq_len, hd)
        v_cache[:, :, pos : pos + t] = v
        k = repeat_kv(k_cache[:, :, : pos + t], self.n_rep)  # (B, nh, pos+T, hd)
        v = repeat_kv(v_cache[:, :, : pos + t], self.n_rep)
        # mask None: one new token sees every cached one (t == 1), or a fresh unpadded prefill (is_causal)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then h + feed_forward(norm(h))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.resid_dropout(self.attention(self.attention_norm(x), cos, sin))
        return h + self.resid_dropout(self.feed_forward(self.ffn_norm(h)))

    def forward_cached(self, x, cos, sin, k_cache, v_cache, pos, mask) -> torch.Tensor:
        h = x + self.attention.forward_cached(self.attention_norm(x), cos, sin, k_cache, v_cache, pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding. Inference only.

    Rows share one timeline: a batch of prompts of different lengths is left-padded, and `pad[b]` says
    how many leading slots of row b are padding (never attended to; rotary positions count from the
    first real token), so a padded row computes what it would alone.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        pad: torch.Tensor | None = None,
    ):
        shape = (cfg.n_layers, batch_size, cfg.kv_heads, cfg.max_seq_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = cfg.max_seq_len
        self.pos = 0  # slots filled
        self.pad = None if pad is None or not bool(pad.any()) else pad.to(device=device, dtype=torch.long)

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


class TinyLlama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        # RoPE tables computed once; not saved (persistent=False) because they follow from the config
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, 2, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layers) so the stream's variance stays O(1)
        for name, p in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

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
        for layer in self.layers:
            h = layer(h, cos, sin)
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
        """
        _, t = idx.shape
        if cache.pos + t > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {cache.pos} used, {t} more asked")
        positions, mask = cache.positions_and_mask(t)  # (B or 1, T)
        cos = self.rope_cos[positions][:, None]  # (B or 1, 1, T, 2, hd/2)
        sin = self.rope_sin[positions][:, None]
        h = self.tok_embeddings(idx)
        for i, layer in enumerate(self.layers):
            h = layer.forward_cached(h, cos, sin, cache.k[i], cache.v[i], cache.pos, mask)
        cache.pos += t
        h = self.norm(h[:, -1:] if last_only else h)
        return self._logits(h)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """float32 logits, also under bf16 autocast; a float64 model (equivalence tests) keeps float64."""
        return self.output(h).to(torch.promote_types(h.dtype, torch.float32))

    def new_cache(self, batch_size: int, pad: torch.Tensor | None = None) -> KVCache:
        p = self.rope_cos
        dtype = next(self.parameters()).dtype
        return KVCache(self.config, batch_size, device=p.device, dtype=dtype, pad=pad)

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
        return save_model_dir(directory, self.config.to_dict(), state, tokenizer_file=tokenizer_file)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> TinyLlama:
        """Rebuild a model from its directory; weights that do not fit config.json are an error."""
        cfg = ModelConfig.from_dict(read_model_config(directory))
        state = read_model_weights(directory)
        model = cls(cfg)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        if cfg.tie_embeddings:
            expected.pop("output.weight")
        check_state_dict(state, expected, where=str(Path(directory) / WEIGHTS_FILE))
        model.load_state_dict(state, strict=not cfg.tie_embeddings)
        return model.to(map_location)
