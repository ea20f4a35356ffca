"""Export a model directory to the Hugging Face Llama format (`LlamaForCausalLM` + `AutoTokenizer`).

Weights need renaming only, no permutation: our RoPE already uses HF's rotate_half layout (see
model.py). `transformers` is imported only to build `tokenizer.json`, and only when the model
directory has a tokenizer.

The tokenizer, and what was found (transformers 5.x; 4.x agrees):
- `LlamaTokenizer(Fast)` converted from tokenizer.model sets the normalizer to None, so it skips the
  NFKC normalisation our SentencePiece model applies ("…" becomes byte-fallback tokens instead of
  "..."), and by default prepends "▁" (the dummy prefix we train without). `legacy=False` and
  `add_prefix_space=False` fix the prefix but not the normalizer, and in 5.x the Llama class rebuilds
  its backend on load and drops any normalizer stored in tokenizer.json.
- So the export writes a complete `tokenizer.json` (BPE vocab and merges from transformers' own
  SentencePiece extractor, plus SentencePiece's precompiled NFKC charsmap, a Metaspace pre-tokenizer
  with prepend_scheme="never", no BOS/EOS post-processing) and names the class
  `PreTrainedTokenizerFast`, which loads tokenizer.json as it is, offline. tokenizer.model is copied
  beside it for tools that want SentencePiece itself. The test suite checks that both encode and
  decode alike.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from tinyllama_model.checkpoint import TOKENIZER_FILE, write_dir_atomic
from tinyllama_model.errors import ConfigError
from tinyllama_model.mixture import registry
from tinyllama_model.model import ModelConfig, TinyLlama
from tinyllama_model.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

# our name -> HF name, per layer; the FFN maps w1 -> gate, w3 -> up, w2 -> down (SwiGLU: w2(silu(w1) * w3))
_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


# model flags Llama has no counterpart for, each with the value that Llama computes; zero_init_proj and
# an untied head change only how training starts and learns, so they export as they are
_NOT_LLAMA = {
    "mlp": ("swiglu", "Llama's MLP is SwiGLU"),
    "qk_norm": (False, "Llama does not normalise queries and keys"),
    "logit_softcap": (None, "Llama does not cap its logits"),
    "value_embeds": (False, "Llama has no value embeddings"),
    "adapt_lr": (None, "transformers does not learn from the text it reads"),
}
# how to get an exportable model: retrain, except for what lives outside the weights
_FIX = {"adapt_lr": "delete adapt_lr from the mixture object of the model's config.json"}


def check_llama_expressible(cfg: ModelConfig) -> None:
    """Refuse, naming the flag, a model that `LlamaForCausalLM` would load but compute differently: a
    lever Llama lacks, or any expert of the mixture (`registry.EXPERTS`), which lives outside the weights."""
    for name, (llama_value, why) in _NOT_LLAMA.items():
        if getattr(cfg, name) != llama_value:
            fix = _FIX.get(name, f"train with model.{name}={llama_value!r} to export")
            shown = "set" if name in _FIX else repr(getattr(cfg, name))
            _refuse(f"{name}={shown}", why, fix)
    for expert in registry.EXPERTS:
        if expert.stored(cfg):
            keys = " and ".join(expert.keys)
            fix = f"delete {keys} from the mixture object of the model's config.json"
            _refuse(f"{expert.keys[0]}=set", expert.refusal, fix)


def _refuse(setting: str, why: str, fix: str) -> None:
    raise ConfigError(
        f"cannot export to Hugging Face Llama: the model was trained with {setting} and {why}, "
        f"so transformers would compute other logits; serve it with tinyllama itself, or {fix}"
    )


def hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A `LlamaConfig` as JSON; rope_theta is written both the 4.x way and the 5.x way (rope_parameters)."""
    check_llama_expressible(cfg)
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


def hf_state_dict(model: TinyLlama) -> dict[str, torch.Tensor]:
    """Our weights under HF Llama names (contiguous CPU tensors); no lm_head when embeddings are tied."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            hf_name = f"model.layers.{i}.{_LAYER_NAMES[rest]}"
        elif name == "tok_embeddings.weight":
            hf_name = "model.embed_tokens.weight"
        elif name == "norm.weight":
            hf_name = "model.norm.weight"
        elif name == "output.weight":
            if model.config.tie_embeddings:
                continue
            hf_name = "lm_head.weight"
        else:
            raise KeyError(f"no Hugging Face name for parameter {name!r}")
        out[hf_name] = tensor.detach().cpu().contiguous()
    return out


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` so that `LlamaForCausalLM.from_pretrained(out_dir)` (and AutoTokenizer) load it.

    The folder is built under a temporary name and renamed into place when complete.
    """
    model_dir = Path(model_dir)
    model = TinyLlama.from_pretrained(model_dir)
    check_llama_expressible(model.config)  # before anything is written
    tokenizer_file = model_dir / TOKENIZER_FILE
    has_tokenizer = tokenizer_file.is_file()
    if has_tokenizer:
        n_pieces = spm.SentencePieceProcessor(model_file=str(tokenizer_file)).get_piece_size()
        if n_pieces > model.config.vocab_size:
            raise ValueError(
                f"{tokenizer_file} has {n_pieces} pieces but the model's vocab_size is "
                f"{model.config.vocab_size}: this tokenizer does not belong to this model"
            )
    dtype = next(model.parameters()).dtype

    def build(staging: Path) -> None:
        (staging / "config.json").write_text(json.dumps(hf_config(model.config, dtype), indent=2) + "\n")
        generation = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        save_file(hf_state_dict(model), staging / "model.safetensors", metadata={"format": "pt"})
        if has_tokenizer:
            write_hf_tokenizer(tokenizer_file, staging)

    return write_dir_atomic(out_dir, build)


def write_hf_tokenizer(sp_model: str | Path, out_dir: str | Path) -> None:
    """Write tokenizer.model, tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    try:
        from tokenizers import decoders, normalizers, pre_tokenizers, processors
        from transformers import LlamaTokenizerFast
    except ImportError as e:
        raise ImportError(
            "exporting the tokenizer to Hugging Face format needs `transformers` (pip install transformers)"
        ) from e

    out_dir = Path(out_dir)
    shutil.copyfile(sp_model, out_dir / TOKENIZER_FILE)
    proto = _sp_proto(sp_model)
    with tempfile.TemporaryDirectory() as tmp:  # from_pretrained converts tokenizer.model offline
        shutil.copyfile(sp_model, Path(tmp) / TOKENIZER_FILE)
        converted = LlamaTokenizerFast.from_pretrained(tmp, legacy=False, add_prefix_space=False)
    backend = converted.backend_tokenizer
    charsmap = proto.normalizer_spec.precompiled_charsmap
    backend.normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    # our SentencePiece model: add_dummy_prefix=False, whitespace kept as "▁" inside pieces
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")  # never add BOS/EOS
    backend.save(str(out_dir / "tokenizer.json"))

    specials = {
        "bos_token": proto.pieces[BOS_ID].piece,
        "eos_token": proto.pieces[EOS_ID].piece,
        "unk_token": proto.pieces[UNK_ID].piece,
        "pad_token": proto.pieces[PAD_ID].piece,
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        "padding_side": "left",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _sp_proto(sp_model: str | Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(sp_model).read_bytes())
    return proto
