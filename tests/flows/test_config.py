"""PipelineConfig: presets, dotted overrides, and the errors a user sees when they get one wrong."""

from __future__ import annotations

import pytest

from flows.config import PipelineConfig, load_config, preset_names
from tinyllama_model.errors import ConfigError
from tinyllama_model.training.sizing import cpu_10min


def test_defaults_are_the_full_design() -> None:
    cfg = PipelineConfig()
    assert (cfg.model.dim, cfg.model.n_layers, cfg.model.n_heads) == (512, 8, 8)
    assert cfg.model.max_seq_len == 512
    assert cfg.tokenizer.vocab_size == 12_000
    assert cfg.collect.wikipedia.enabled and not cfg.collect.builtin


@pytest.mark.parametrize("name", ["demo", "cpu-10min", "wikipedia"])
def test_every_shipped_preset_loads(name: str) -> None:
    assert name in preset_names()
    assert isinstance(load_config(name), PipelineConfig)


def test_demo_preset_is_offline() -> None:
    cfg = load_config("demo")
    assert cfg.collect.builtin and not cfg.collect.wikipedia.enabled
    assert not cfg.collect.web.urls and not cfg.collect.local.paths


def test_size_expands_into_model_train_and_vocabulary() -> None:
    model, train, vocab = cpu_10min()
    cfg = load_config("cpu-10min")
    assert cfg.model == model
    assert cfg.train == train
    assert cfg.tokenizer.vocab_size == vocab


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(
        "demo", ["train.max_minutes=0.5", "model.n_layers=3", "collect.wikipedia.topics=[a, b]"]
    )
    assert cfg.train.max_minutes == 0.5
    assert cfg.model.n_layers == 3
    assert cfg.collect.wikipedia.topics == ["a", "b"]


def test_override_beats_preset_and_size() -> None:
    # n_heads too: the size's own head count follows this CPU's bf16 probe (5 at dim 320)
    cfg = load_config("cpu-10min", ["tokenizer.vocab_size=1000", "model.dim=96", "model.n_heads=4"])
    assert cfg.tokenizer.vocab_size == 1000
    assert cfg.model.dim == 96


def test_unknown_field_names_the_field_and_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"train has no field 'max_minute'.*max_minutes"):
        load_config(None, ["train.max_minute=10"])


def test_unknown_section() -> None:
    with pytest.raises(ConfigError, match="the top level has no field 'trian'"):
        load_config(None, ["trian.lr=1"])


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        load_config(None, ["train.lr"])


def test_invalid_model_is_rejected_with_the_models_reason() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["model.dim=100", "model.n_heads=8"])


def test_missing_preset_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="demo"):
        load_config("no-such-preset")


def test_preset_file_with_a_typo_is_refused(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_minuts: 3\n")
    with pytest.raises(ConfigError, match="max_minuts"):
        load_config(str(bad))


def test_the_mixture_has_its_own_section_and_its_old_keys_name_the_new_one(tmp_path) -> None:
    cfg = load_config("demo", ["train.mixture.adapt_lrs=[0.0002]"])
    assert (cfg.train.mixture.doc_cache_orders, cfg.train.mixture.adapt_lrs) == (3, (2e-4,))
    with pytest.raises(ConfigError, match=r"train.neural_cache_theta -> train.mixture.neural_cache_theta"):
        load_config("demo", ["train.neural_cache_theta=15"])
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  max_steps: 5\n  doc_cache_orders: 3\n")
    with pytest.raises(ConfigError, match=r"train.doc_cache_orders -> train.mixture.doc_cache_orders"):
        load_config(str(old))
    # a preset's own mixture keys refine its size's, key by key
    refined = tmp_path / "refined.yaml"
    refined.write_text("size: cpu_10min\ntrain:\n  mixture:\n    doc_cache_orders: 2\n")
    mixture = load_config(str(refined)).train.mixture
    assert mixture.doc_cache_orders == 2 and mixture.adapt_lrs == cpu_10min()[1].mixture.adapt_lrs
