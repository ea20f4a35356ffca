"""TrainConfig refuses bad values by name, round-trips through JSON, and the schedule warms up then decays."""

from __future__ import annotations

import itertools
import json

import pydantic
import pytest

from tinyllama_model.mixture.config import MOVED, MixtureConfig
from tinyllama_model.training.train_config import OPERATIONAL, TrainConfig, lr_at


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "train.batch_size must be a positive integer"),
        ("lr", -1.0, "train.lr must be positive"),
        ("min_lr_ratio", 1.5, r"train.min_lr_ratio must be in \[0, 1\]"),
        ("betas", (0.9, 1.0), "train.betas"),
        ("dtype", "float16", "train.dtype must be one of auto, float32, bfloat16"),
        ("max_epochs", 0, "train.max_epochs must be a positive number"),
        ("doc_cache_orders", 9, r"train.mixture.doc_cache_orders must be an integer in 0..8"),
        ("doc_cache_orders", True, r"train.mixture.doc_cache_orders must be an integer in 0..8"),
        ("corpus_ngram_orders", 5, r"train.mixture.corpus_ngram_orders must be an integer in 0..4"),
        ("adapt_lrs", (0.05, 0), r"train.mixture.adapt_lrs must be a list of positive learning rates"),
        ("adapt_lrs", 0.05, r"train.mixture.adapt_lrs must be a list of positive learning rates"),
        ("calibration_temperatures", (1.1, -1), r"train.mixture.calibration_temperatures must be positive"),
        ("calibration_temperatures", (True,), r"train.mixture.calibration_temperatures must be positive"),
        ("ema_decay", 1.0, r"train.ema_decay must be a number in \(0, 1\)"),
        ("ema_decay", 0, r"train.ema_decay must be a number in \(0, 1\)"),
        ("ema_decay", "0.99", r"train.ema_decay must be a number in \(0, 1\)"),
    ],
)
def test_bad_train_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**({"mixture": {field: value}} if field in MOVED else {field: value}))


def test_a_mixture_setting_where_it_lived_before_is_refused_with_its_new_key():
    with pytest.raises(ValueError, match=r"train.doc_cache_orders -> train.mixture.doc_cache_orders"):
        TrainConfig.from_dict({"max_steps": 5, "doc_cache_orders": 3})
    cfg = TrainConfig(max_steps=5, mixture={"doc_cache_orders": 3, "adapt_lrs": [1e-4]})
    assert cfg.mixture == MixtureConfig(doc_cache_orders=3, adapt_lrs=(1e-4,))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_a_budget_is_required():
    with pytest.raises(ValueError, match="needs a budget"):
        TrainConfig(max_minutes=None)


def test_train_config_round_trips_and_rejects_unknown_keys():
    cfg = TrainConfig(max_steps=5, betas=[0.8, 0.9])
    assert cfg.betas == (0.8, 0.9)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown train config key"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_every_field_has_a_description_for_the_prefect_form():
    schema = pydantic.TypeAdapter(TrainConfig).json_schema()
    missing = [name for name, prop in schema["properties"].items() if not prop.get("description")]
    assert not missing


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=100)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.55)
    assert lr_at(cfg, 100, 1.0) == pytest.approx(0.1)
    lrs = [lr_at(cfg, s, s / 100) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_operational_fields_come_from_the_field_metadata():
    assert {"eval_every", "device", "num_threads", "nproc_per_node"} <= OPERATIONAL
    assert not {"lr", "batch_size", "seed", "dtype", "max_steps"} & OPERATIONAL
