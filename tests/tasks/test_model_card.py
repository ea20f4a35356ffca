"""The model card's text without a store: what it says, what it leaves out, and what fits the registry.

The card on a real registered version (description, tags, README.md beside the weights) is tested in
test_register.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.storage.artifacts import publish
from tasks.tracking.model_card import MAX_DESCRIPTION_CHARS, ModelCard, build_card


def card(**facts) -> ModelCard:
    base = dict(
        model_name="tinyllama",
        data_fingerprint="abc",
        sources={"wikipedia": {"in": 300, "kept": 280}},
        documents=280,
        tokens={"train_tokens": 1_000_000, "val_tokens": 50_000, "train_docs": 270, "val_docs": 10},
        tokenizer={"vocab_size": 2048, "bytes_per_token": 3.9},
        model_config={"dim": 128, "n_layers": 4, "max_seq_len": 256},
        training={"num_params": 1_300_000, "steps": 500, "tokens": 4_000_000, "wall_time_s": 600.0},
        evaluation={"val_bpb": 1.61, "val_loss": 3.1},
        samples=[("The future of AI is", " bright.")],
    )
    return ModelCard(**{**base, **facts})


def test_the_card_states_data_model_quality_samples_and_limits() -> None:
    text = card().markdown()
    for fact in (
        "1.30M-parameter LLaMA-style language model",
        "| wikipedia | 300 | 280 |",
        "- tokens: 1,000,000 for training",
        "vocabulary 2,048, 3.90 bytes per token",
        "- model config: dim 128, n_layers 4, max_seq_len 256",
        "- training: 500 steps, 4,000,000 tokens, 10.0 minutes",
        "validation bits per byte (lower is better; compares across tokenizers): 1.6100",
        "The future of AI is bright.",
        "It has seen 1,000,000 tokens from wikipedia",
        "It sees at most 256 tokens of context",
    ):
        assert fact in text, fact


def test_the_card_says_that_loading_the_pyfunc_runs_the_code_shipped_with_the_version() -> None:
    text = card().markdown()
    assert "## Loading it safely" in text
    assert 'mlflow.pyfunc.load_model("models:/tinyllama@champion")` imports and runs the Python code' in text
    assert "whoever can register a version or move an alias in this registry chooses the code" in text
    assert "use `tinyllama generate -m models:/tinyllama/<version>`" in text and "runs no code" in text
    assert "Pin a version number rather than an alias" in text
    assert "## Loading it safely" in card(samples=[("x", "y" * 6000)]).description()  # kept in the registry


def test_a_document_cache_is_stated_with_the_model_alone_beside_it() -> None:
    weights = [[[0.1] * 4, [0.5] * 4]] * 3
    text = card(
        model_config={"dim": 128, "n_layers": 4, "doc_cache_weights": weights},
        evaluation={"val_bpb": 1.52, "val_model_alone_bpb": 1.61},
    ).markdown()
    assert "- model config: dim 128, n_layers 4\n" in text  # the 24 weights are not a config line
    assert "- document cache: the n-grams of each document so far, up to order 3" in text
    assert "validation bits per byte of the network alone (no cache, no n-grams): 1.6100" in text
    assert "document cache" not in card().markdown()


def test_dynamic_evaluation_is_stated_with_its_rate_and_without_its_scale_table() -> None:
    scales = {f"layers.{i}.attention.wq.weight": 300.0 + i for i in range(4)}
    cfg = {"dim": 128, "max_seq_len": 64, "adapt_lr": 2e-4, "adapt_scales": scales}
    text = card(model_config=cfg).markdown()
    assert "- model config: dim 128, max_seq_len 64, adapt_lr 0.0002\n" in text
    assert "reads it (SGD, lr 0.0002 scaled per tensor, every 32 tokens)" in text
    plain = card(model_config={**cfg, "adapt_scales": None}).markdown()
    assert "(SGD, lr 0.0002, every 32 tokens)" in plain and "adapt_scales" not in text
    assert "unadapted" not in text and "neural cache" not in text


def test_the_unadapted_share_and_the_neural_cache_are_stated() -> None:
    cfg = {"max_seq_len": 64, "adapt_lr": 2e-4, "unadapted_share": 0.15, "neural_cache_theta": 15.0}
    text = card(model_config={**cfg, "neural_cache_weights": [0.1] * 7}).markdown()
    assert "- the unadapted network: 0.15 of each prediction, beside the adapted one" in text
    written_before = {**{k: v for k, v in cfg.items() if k != "unadapted_share"}, "adapt_static_weight": 0.15}
    old = card(model_config=written_before).markdown()
    assert "- the unadapted network: 0.15 of each prediction" in old  # a config.json from before the rename
    assert (
        "- neural cache: earlier states of the document vote" in text and "(softmax of 15.0 x cosine)" in text
    )
    assert "neural_cache_weights" not in text  # a fitted table, not a config line


def test_the_registry_gets_a_description_within_its_column() -> None:
    long = card(samples=[("Prompt", " word" * 400)] * 5)
    assert len(long.markdown()) > MAX_DESCRIPTION_CHARS
    description = long.description()
    assert len(description) <= MAX_DESCRIPTION_CHARS
    assert "## Limits" in description and "Sample generations" not in description  # samples go first


def test_tags_hold_only_known_facts() -> None:
    assert card().tags()["card.data_sources"] == "wikipedia=280"
    assert card().tags()["card.model"] == "dim=128, n_layers=4, max_seq_len=256"
    bare = ModelCard(model_name="m", evaluation={"val_bpb": 2.0})
    assert bare.tags() == {"card.val_bpb": "2.0"}
    assert "- data fingerprint: `unknown`" in bare.markdown() and "not evaluated" not in bare.markdown()


def test_a_card_from_artifacts_leaves_out_what_it_was_not_given(tmp_path: Path) -> None:
    def train(out: Path) -> dict:
        (out / "model").mkdir()
        (out / "model" / "config.json").write_text(json.dumps({"dim": 8, "n_layers": 1}))
        return {"steps": 3, "num_params": 99, "best_val_bpb": None}

    model = publish(tmp_path, "train", "t", train)
    built = build_card("m", model, model.file("model"), {"val_bpb": 3.0, "eval_tokens": 10.0}, None, {})
    assert built.sources == {} and built.tokens == {} and built.data_fingerprint is None
    assert built.training == {"num_params": 99, "steps": 3}
    assert "measured on 10 held-out tokens" in built.markdown()
