"""The pipeline run's store-free parts: a config flattened into MLflow params.

Opening, filling and closing a real run is tested end to end in test_register.py.
"""

from __future__ import annotations

from tasks.register import RegisterConfig
from tasks.tracking.mlflow_run import flatten_params, metric_key


def test_flatten_params_dots_nested_sections_and_cuts_long_values() -> None:
    flat = flatten_params(
        {"train": {"lr": 0.001, "betas": [0.9, 0.95]}, "x": None, "long": "y" * 7000, "e": {}}
    )
    assert flat["train.lr"] == "0.001" and flat["train.betas"] == "[0.9, 0.95]"
    assert flat["x"] == "null" and flat["e"] == "{}"
    assert len(flat["long"]) <= 6000 and flat["long"].endswith("[truncated]")
    assert flatten_params(RegisterConfig())["model_name"] == "tinyllama"


def test_metric_keys_keep_what_mlflow_accepts_and_replace_the_rest() -> None:
    assert metric_key("train/val_bpb") == "train/val_bpb"
    assert metric_key("data.kept docs-1") == "data.kept docs-1"
    assert metric_key("mfu%") == "mfu_"
