"""Hugging Face export, checked against the outside oracle: `transformers`' own Llama and tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from tests.factories import TINY_VOCAB, train_tiny_tokenizer, training_texts
from tests.tinyllama_model.test_tokenizer import SAMPLES
from tinyllama_model.errors import ConfigError
from tinyllama_model.export import export_hf, hf_config, hf_state_dict
from tinyllama_model.mixture.corpus_ngrams import CorpusNgrams
from tinyllama_model.model import ModelConfig, TinyLlama
from tinyllama_model.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # the weight-loading progress report


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def make(**overrides) -> TinyLlama:
    base = dict(dim=64, n_layers=2, n_heads=4, vocab_size=TINY_VOCAB, max_seq_len=64, multiple_of=32)
    torch.manual_seed(0)
    model = TinyLlama(ModelConfig(**{**base, **overrides})).eval()
    with torch.no_grad():  # random but not tiny: norms away from 1 and sharper logits make the test strict
        for layer in model.layers:
            layer.attention_norm.weight.uniform_(0.5, 1.5)
            layer.ffn_norm.weight.uniform_(0.5, 1.5)
        model.output.weight.mul_(20.0)
    return model


def export(tmp_path, model: TinyLlama, sp_model):
    model.save_pretrained(tmp_path / "model", tokenizer_file=sp_model)
    return export_hf(tmp_path / "model", tmp_path / "hf")


def test_config_and_names():
    m = make(n_kv_heads=2, tie_embeddings=True, rope_theta=50_000.0)
    cfg = hf_config(m.config)
    assert cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 16 and cfg["tie_word_embeddings"] is True
    assert cfg["rope_theta"] == 50_000.0 and cfg["rope_parameters"]["rope_theta"] == 50_000.0
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (BOS_ID, EOS_ID, PAD_ID)
    assert cfg["intermediate_size"] == m.config.hidden_dim and cfg["rms_norm_eps"] == m.config.norm_eps
    sd = hf_state_dict(m)
    assert "lm_head.weight" not in sd  # tied: HF re-ties it from embed_tokens
    assert torch.equal(sd["model.layers.1.mlp.gate_proj.weight"], m.layers[1].feed_forward.w1.weight)
    assert torch.equal(sd["model.layers.1.mlp.up_proj.weight"], m.layers[1].feed_forward.w3.weight)
    assert torch.equal(sd["model.layers.1.mlp.down_proj.weight"], m.layers[1].feed_forward.w2.weight)
    assert len(sd) == len(m.state_dict()) - 1


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_kv_heads": 2}, {"tie_embeddings": True}, {"n_kv_heads": 1, "tie_embeddings": True}],
    ids=["mha", "gqa", "tied", "mqa-tied"],
)
def test_transformers_gives_the_same_logits_and_greedy_tokens(tmp_path, sp_model, overrides):
    ours = make(**overrides)
    out = export(tmp_path, ours, sp_model)
    theirs = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert theirs.config.num_key_value_heads == ours.config.kv_heads
    idx = torch.randint(0, TINY_VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(idx)[0], theirs(idx).logits
    assert (a - b).abs().max().item() < 1e-4
    assert a.std() > 1.0  # the comparison is not between two near-zero tensors

    prompt = idx[:1, :6]
    mine = ours.generate(prompt, 40, temperature=0.0, eos_id=None)
    hf = theirs.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=PAD_ID)
    assert torch.equal(mine, hf)


def test_auto_tokenizer_matches_ours(tmp_path, sp_model):
    out = export(tmp_path, make(), sp_model)
    hf = transformers.AutoTokenizer.from_pretrained(out)  # offline: a local folder with tokenizer.json
    ours = Tokenizer(sp_model)
    texts = SAMPLES + training_texts()[:40] + ["…and “NFKC” ① ﬁ", " \n  \n", "🦙" * 3]
    for text in texts:
        ids = ours.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf(text)["input_ids"] == ids  # no BOS, no dummy prefix
        assert hf.decode(ids) == ours.decode(ids)
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id, hf.bos_token_id) == (
        PAD_ID,
        EOS_ID,
        UNK_ID,
        BOS_ID,
    )
    assert hf.decode([BOS_ID, *ours.encode("hi"), EOS_ID], skip_special_tokens=True) == "hi"
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False and config["add_prefix_space"] is False


def test_export_without_tokenizer_and_with_a_foreign_one(tmp_path, sp_model):
    m = make()
    m.save_pretrained(tmp_path / "bare")
    out = export_hf(tmp_path / "bare", tmp_path / "hf_bare")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]

    small = make(vocab_size=100)
    small.save_pretrained(tmp_path / "small", tokenizer_file=sp_model)
    with pytest.raises(ValueError, match="does not belong to this model"):
        export_hf(tmp_path / "small", tmp_path / "hf_small")
    assert not (tmp_path / "hf_small").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("mlp", "relu2"), ("qk_norm", True), ("logit_softcap", 15.0), ("value_embeds", True)],
)
def test_a_model_llama_cannot_express_is_refused_naming_the_flag(tmp_path, sp_model, flag, value):
    model = make(**{flag: value})
    with pytest.raises(ConfigError, match=rf"trained with {flag}=.*model\.{flag}="):
        export(tmp_path, model, sp_model)
    assert not (tmp_path / "hf").exists()  # nothing half-written, nothing wrong written
    with pytest.raises(ConfigError, match=flag):
        hf_config(model.config)


@pytest.mark.parametrize(
    ("flag", "table"),
    [
        ("doc_cache_weights", [[[0.1] * 4, [0.5] * 4]]),
        ("corpus_ngram_weights", [[0.2] * 10]),
        ("adapt_lr", 0.05),
    ],
)
def test_a_model_with_an_expert_is_refused_until_it_is_taken_out(tmp_path, sp_model, flag, table):
    model = make(**{flag: table})
    if flag == "corpus_ngram_weights":
        model.corpus_ngrams = CorpusNgrams(torch.randint(4, TINY_VOCAB, (50,)).numpy(), TINY_VOCAB, 1)
    with pytest.raises(ConfigError, match=rf"{flag}=set .*delete {flag} from .*config\.json"):
        export(tmp_path, model, sp_model)
    assert not (tmp_path / "hf").exists()
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    del config["mixture"][flag]  # the fix the message names: the weights alone export as they are
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    assert export_hf(tmp_path / "model", tmp_path / "hf").is_dir()


def test_levers_that_only_change_training_still_export_and_match(tmp_path, sp_model):
    ours = make(zero_init_proj=True)
    with torch.no_grad():  # trained weights are not zero; give the projections some
        for layer in ours.layers:
            layer.attention.wo.weight.normal_(0, 0.05)
            layer.feed_forward.w2.weight.normal_(0, 0.05)
    theirs = transformers.LlamaForCausalLM.from_pretrained(export(tmp_path, ours, sp_model)).eval()
    idx = torch.randint(0, TINY_VOCAB, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4


def test_the_export_command_names_the_flag_instead_of_a_traceback(tmp_path, sp_model):
    from typer.testing import CliRunner

    from flows.cli import app

    make(value_embeds=True).save_pretrained(tmp_path / "model", tokenizer_file=sp_model)
    args = ["export-hf", "-m", str(tmp_path / "model"), "--out", str(tmp_path / "hf")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "value_embeds=True" in result.output
    assert not (tmp_path / "hf").exists()
