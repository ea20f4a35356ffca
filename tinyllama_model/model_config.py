"""`ModelConfig`: the shape of a TinyLlama and its switches, checked where it is made.

Kept apart from model.py so that sizing, export and the flows' config can read and validate a model's
shape without the modules that build it. Each check names the field and how to fix it, because configs
come from YAML, the CLI's `--set` and checkpoints written by other versions.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from tinyllama_model.errors import ConfigError


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
    # levers from the small-budget records (modded-nanogpt, nanochat); the defaults are plain LLaMA, and
    # `export.py` refuses a model that uses one Llama cannot express
    mlp: str = "swiglu"  # "relu2": w2(relu(w1 x)^2), two matrices of 4*dim instead of SwiGLU's three
    qk_norm: bool = False  # RMS-normalise each head's queries and keys: bounded attention logits
    zero_init_proj: bool = False  # attention.wo and feed_forward.w2 start at 0: each block starts as identity
    logit_softcap: float | None = None  # logits = c * tanh(logits / c): no runaway logits early in training
    value_embeds: bool = False  # a token table per alternate layer added to v through a learned gate
    # the document cache's mixture weights, [order - 1][one continuation][min(n, 4) - 1] (doc_cache.py):
    # fitted after training when train.mixture.doc_cache_orders > 0; None predicts with the model alone
    doc_cache_weights: list[list[list[float]]] | None = None
    # the training corpus's n-grams as a second expert, [order - 1][min(log2(count), 9)]
    # (corpus_ngrams.py): fitted after training when train.mixture.corpus_ngram_orders > 0, with the training
    # tokens saved beside the weights; None: no corpus n-grams
    corpus_ngram_weights: list[list[float]] | None = None
    # dynamic evaluation (adaptation.py): the SGD learning rate with which a copy of the network learns
    # from each document as it reads it, chosen after training from train.mixture.adapt_lrs; None: none
    adapt_lr: float | None = None
    # and each parameter tensor's multiplier of it, {name: 1 / its gradient's RMS on the validation
    # split}, measured with it; None: every tensor at adapt_lr (plain SGD)
    adapt_scales: dict[str, float] | None = None
    # the unadapted network's share of the prediction beside the adapted one's, fitted with the experts
    # after adaptation (docs/mixture.md); None or 0: the adapted network alone
    unadapted_share: float | None = None
    # the neural cache (neural_cache.py): its softmax temperature on cosines
    # (train.mixture.neural_cache_theta) and its mixture weight per bucket of the best similarity, fitted
    # after training; None: no neural cache
    neural_cache_theta: float | None = None
    neural_cache_weights: list[float] | None = None
    # the fitted values of experts registered from outside the package (mixture/registry.py), by their
    # config key; the built-in experts' are the fields above
    mixture: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._check_shape()
        self._check_experts()

    def _check_shape(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len", "multiple_of"):
            _require_positive_int(name, getattr(self, name))
        for name in ("n_kv_heads", "ffn_hidden_dim"):
            if getattr(self, name) is not None:
                _require_positive_int(name, getattr(self, name))
        for name, bound in SHAPE_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value > bound:
                raise ConfigError(
                    f"{name}={value} is above its bound of {bound:,}; this is far past any model this "
                    "project trains: check the config.json or the --set value it came from"
                )
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
        for name in ("tie_embeddings", "qk_norm", "zero_init_proj", "value_embeds"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.mlp not in MLPS:
            raise ConfigError(f"mlp={_shown(self.mlp)} must be one of {', '.join(MLPS)}")
        cap = self.logit_softcap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
            raise ConfigError(f"logit_softcap={cap!r} must be a positive number (15 in nanochat) or None")

    def _check_experts(self) -> None:
        self._check_adaptation()
        if self.doc_cache_weights is not None:
            _require_cache_weights(self.doc_cache_weights)
        if self.corpus_ngram_weights is not None:
            _require_corpus_weights(self.corpus_ngram_weights)
        if self.unadapted_share is not None and not _is_weight(self.unadapted_share):
            raise ConfigError(
                f"unadapted_share={self.unadapted_share!r} must be in [0, 1) or null; "
                "leave it null to have it fitted with the experts after training"
            )
        if self.mixture is not None and not (
            isinstance(self.mixture, dict) and all(isinstance(k, str) for k in self.mixture)
        ):
            raise ConfigError(
                f"mixture={_shown(self.mixture)} must be an object of an expert's config keys, or null; "
                "restore the config.json the train phase wrote"
            )
        theta, weights = self.neural_cache_theta, self.neural_cache_weights
        if (theta is None) != (weights is None) or (
            theta is not None and not (_is_scale(theta) and theta > 0)
        ):
            raise ConfigError(
                f"neural_cache_theta={theta!r} must be a positive number, set together with "
                "neural_cache_weights (or both null); set train.mixture.neural_cache_theta to fit them"
            )
        if weights is not None and not _is_row(weights, NEURAL_CACHE_BUCKETS):
            raise ConfigError(
                f"neural_cache_weights={_shown(weights)} must be a list of {NEURAL_CACHE_BUCKETS} weights in "
                "[0, 1), one per bucket of the best similarity; leave it null, "
                "set train.mixture.neural_cache_theta"
            )

    def _check_adaptation(self) -> None:
        lr = self.adapt_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise ConfigError(
                f"adapt_lr={lr!r} must be a positive learning rate or null (no adaptation); "
                "set train.mixture.adapt_lrs to have it chosen after training"
            )
        scales = self.adapt_scales
        if scales is None:
            return
        if not (
            isinstance(scales, dict) and all(isinstance(k, str) and _is_scale(v) for k, v in scales.items())
        ):
            raise ConfigError(
                f"adapt_scales must map parameter names to finite numbers >= 0 (got {_shown(scales)}); "
                "leave it null and set train.mixture.adapt_lrs to have it measured after training"
            )
        names = self.parameter_shapes().keys()
        if scales.keys() != names:  # one scale per parameter tensor, so its length is bounded by the shape
            unknown, missing = sorted(scales.keys() - names), sorted(names - scales.keys())
            raise ConfigError(
                f"adapt_scales ({len(scales):,} entries) does not fit the network's {len(names):,} parameter "
                f"tensors: unknown {_shown(unknown)}, missing {_shown(missing)}; delete adapt_scales and "
                "adapt_lr from config.json, or retrain to refit them"
            )

    # -- derived sizes ------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden_dim(self) -> int:
        """FFN width: 4*dim for ReLU^2; for SwiGLU 2/3 of that, so its 3 matrices cost what 2 would."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = 4 * self.dim if self.mlp == "relu2" else int(2 * (4 * self.dim) / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def ve_layers(self) -> tuple[int, ...]:
        """Layers with a value embedding: every other one, ending at the last (nanochat's placement)."""
        if not self.value_embeds:
            return ()
        return tuple(i for i in range(self.n_layers) if (self.n_layers - 1 - i) % 2 == 0)

    @property
    def ve_gate_channels(self) -> int:
        return min(VE_GATE_CHANNELS, self.dim)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of every parameter tensor `TinyLlama` holds (a tied head once), by arithmetic.

        What a weights file must hold for this config, known without building a module: a config.json
        of 8,000 layers is compared with its file's header in microseconds instead of seconds of meta
        tensors (`TinyLlama.from_pretrained`); tests check it against the module for every lever.
        """
        d, v, h, hd = self.dim, self.vocab_size, self.hidden_dim, self.head_dim
        q, kv = self.n_heads * hd, self.kv_heads * hd
        shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (v, d)}
        for i in range(self.n_layers):
            layer = {
                "attention.wq.weight": (q, d),
                "attention.wk.weight": (kv, d),
                "attention.wv.weight": (kv, d),
                "attention.wo.weight": (d, q),
                "feed_forward.w1.weight": (h, d),
                "feed_forward.w2.weight": (d, h),
                "attention_norm.weight": (d,),
                "ffn_norm.weight": (d,),
            }
            if self.mlp == "swiglu":
                layer["feed_forward.w3.weight"] = (h, d)
            if i in self.ve_layers:
                layer["attention.ve_gate.weight"] = (self.kv_heads, self.ve_gate_channels)
            shapes.update({f"layers.{i}.{name}": shape for name, shape in layer.items()})
        shapes.update({f"value_embeds.{i}.weight": (v, kv) for i in self.ve_layers})
        shapes["norm.weight"] = (d,)
        if not self.tie_embeddings:
            shapes["output.weight"] = (v, d)
        return shapes

    def buffer_elements(self) -> int:
        """Elements of the buffers the model computes from the config: RoPE's cos and sin tables."""
        return 2 * self.max_seq_len * self.head_dim

    def value_embed_params(self) -> int:
        """Parameters of the value-embedding tables: lookups, so they cost memory but no matmul FLOPs."""
        return len(self.ve_layers) * self.vocab_size * self.kv_heads * self.head_dim

    def num_params(self) -> int:
        """Closed-form parameter count (a shared embedding counted once); `TinyLlama.num_params` agrees."""
        d, hd = self.dim, self.head_dim
        attention = d * (self.n_heads * hd) * 2 + d * (self.kv_heads * hd) * 2  # wq, wo; wk, wv
        feed_forward = (3 if self.mlp == "swiglu" else 2) * d * self.hidden_dim  # w1, w2 (, w3)
        norms = 2 * d  # attention_norm, ffn_norm
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)  # tok_embeddings (+ output)
        gates = len(self.ve_layers) * self.ve_gate_channels * self.kv_heads  # attention.ve_gate
        blocks = self.n_layers * (attention + feed_forward + norms)
        return blocks + d + embeddings + gates + self.value_embed_params()

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), nanoGPT's `estimate_mfu` formula.

        6*N for the matmuls (2 forward, 4 backward per weight) plus 12*L*H*Q*T for attention scores and
        the weighted sum (Q = head_dim, T = seq_len, default max_seq_len; the causal half is not discounted,
        as in nanoGPT and PaLM). N counts only weights that take part in a matmul: the embedding table is
        a lookup, so it is excluded unless it is tied to the output projection.
        """
        t = self.max_seq_len if seq_len is None else seq_len
        lookups = (0 if self.tie_embeddings else self.vocab_size * self.dim) + self.value_embed_params()
        n = self.num_params() - lookups
        return 6 * n + 12 * self.n_layers * self.n_heads * self.head_dim * t

    # -- serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (what `ModelConfig(**d)` takes); config.json nests them (`file_config`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = flat_config(d)
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


MLPS = ("swiglu", "relu2")
RENAMED = {"adapt_static_weight": "unadapted_share"}  # old config.json key -> its name now
# what the train phase fits after training, kept in config.json's `mixture` object (`to_dict`)
MIXTURE_KEYS = (
    "doc_cache_weights",
    "corpus_ngram_weights",
    "adapt_lr",
    "adapt_scales",
    "unadapted_share",
    "neural_cache_theta",
    "neural_cache_weights",
)


def file_config(d: dict[str, Any]) -> dict[str, Any]:
    """A config as config.json holds it: the network's fields, and everything fitted after training (the
    mixture and dynamic evaluation) in one `mixture` object, beside the entries of experts registered from
    outside the package."""
    d = flat_config(d)
    extra = d.pop("mixture", None) or {}
    fitted = {k: d.pop(k, None) for k in MIXTURE_KEYS}
    return {**d, "mixture": {**fitted, **extra}}


def flat_config(d: dict[str, Any]) -> dict[str, Any]:
    """A config.json's keys as `ModelConfig`'s fields: the `mixture` object's entries for its fields
    lifted out (the rest stay in it: experts registered from outside the package), and a config.json
    written before the mixture had its object (its keys at the top level) or before a rename read as
    written now."""
    d = {RENAMED.get(k, k): v for k, v in d.items()}
    mixture = d.pop("mixture", None)
    if mixture is None:
        return d
    if not isinstance(mixture, dict):
        raise ConfigError(
            f"mixture={_shown(mixture)} must be an object; restore the config.json training wrote"
        )
    mixture = {RENAMED.get(k, k): v for k, v in mixture.items()}
    lifted = {k: v for k, v in mixture.items() if k in MIXTURE_KEYS}
    if both := sorted(k for k in lifted if d.get(k) is not None and lifted[k] is not None):
        raise ConfigError(
            f"config.json sets {both} both at the top level and in its mixture object; keep the mixture's"
        )
    extra = {k: v for k, v in mixture.items() if k not in MIXTURE_KEYS}
    return {**d, **{k: v for k, v in lifted.items() if v is not None or k not in d}, "mixture": extra or None}


# upper bounds on a config's sizes, each far past any model this project trains (the wikipedia preset is
# 8 layers of 512 with 12,000 ids) and well inside what a 64-bit index and a model file can hold: a
# config.json beyond them is a typo or a hostile file, refused before any arithmetic on its shape
SHAPE_BOUNDS = {
    "n_layers": 1_024,
    "dim": 65_536,
    "vocab_size": 1 << 21,
    "max_seq_len": 1 << 20,
    "ffn_hidden_dim": 1 << 18,
    "multiple_of": 1 << 16,
}
DOC_CACHE_MAX_ORDER = 8  # document cache: contexts of up to 8 tokens (train.mixture.doc_cache_orders' bound)
CORPUS_MAX_ORDER, CORPUS_COUNT_BUCKETS = 4, 10  # corpus n-grams: 4 tokens fill a uint64; log2 count 0..9
NEURAL_CACHE_BUCKETS = 7  # neural_cache weights: one per bucket of the best earlier state's cosine
CACHE_COUNT_BUCKETS = 4  # doc_cache weights per (order, one continuation): n = 1, 2, 3, 4 or more
VE_GATE_CHANNELS = 32  # the value-embedding gate reads this many leading channels of the block input


def _is_weight(w: object) -> bool:
    return isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < 1


def _is_scale(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < math.inf


def _is_row(row: object, length: int) -> bool:
    return isinstance(row, list) and len(row) == length and all(map(_is_weight, row))


def _shown(value: object, limit: int = 80) -> str:
    """A value as an error message shows it: its repr, cut to `limit` characters (a list can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_corpus_weights(table: object) -> None:
    """A (orders <= 4, 10) nested list of weights in [0, 1), as `doc_cache.fit_weights` writes it."""
    ok = isinstance(table, list) and 0 < len(table) <= CORPUS_MAX_ORDER
    if not (ok and all(_is_row(row, CORPUS_COUNT_BUCKETS) for row in table)):
        raise ConfigError(
            f"corpus_ngram_weights={_shown(table)} must be a list of [10 weights] per order (at most "
            f"{CORPUS_MAX_ORDER}), each in [0, 1); leave it null and set "
            "train.mixture.corpus_ngram_orders to fit it"
        )


def _require_cache_weights(table: object) -> None:
    """A (orders, 2, 4) nested list of weights in [0, 1), as `doc_cache.fit_weights` writes it."""

    def is_row(row: object) -> bool:
        return _is_row(row, CACHE_COUNT_BUCKETS)

    if isinstance(table, list) and len(table) > DOC_CACHE_MAX_ORDER:
        raise ConfigError(
            f"doc_cache_weights has {len(table):,} orders, above the bound of {DOC_CACHE_MAX_ORDER} (a cache "
            "of longer contexts costs memory with the square of the prompt and predicts no better); "
            "leave it null and set train.mixture.doc_cache_orders (at most 8) to have it fitted"
        )
    ok = isinstance(table, list) and len(table) > 0
    ok = ok and all(isinstance(o, list) and len(o) == 2 and all(map(is_row, o)) for o in table)
    if not ok:
        raise ConfigError(
            f"doc_cache_weights={_shown(table)} must be a list of [[4 weights], [4 weights]] per cache "
            "order, each weight in [0, 1); leave it null and set train.mixture.doc_cache_orders to fit them"
        )


def _require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
