"""What the Prefect UI shows beside the phases: the loss curve table and the link to the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.register import RegisterConfig, registration_markdown
from tasks.tracking.mlflow_store import mlflow_run_link
from tasks.train import loss_curve_rows


def test_loss_curve_keeps_every_validation_and_thins_train_steps(tmp_path: Path) -> None:
    rows = [{"step": s, "train_loss": 5.0 - s / 1000, "lr": 1e-3} for s in range(1, 1001)]
    rows += [{"step": s, "val_loss": 4.0, "val_bpb": 2.0} for s in (250, 500, 1000)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))

    curve = loss_curve_rows(metrics, max_train_rows=50)
    assert [r["step"] for r in curve if r["val_loss"] is not None] == [250, 500, 1000]
    train = [r for r in curve if r["train_loss"] is not None]
    assert 50 <= len(train) <= 51 and train[0]["step"] == 1
    assert set(curve[0]) == {"step", "train_loss", "val_loss", "val_bpb", "lr"}


def test_local_store_link_says_how_to_open_the_ui() -> None:
    text = mlflow_run_link("sqlite:////data/mlflow/mlflow.db", "abc123")
    assert "abc123" in text and "mlflow ui --backend-store-uri sqlite:////data/mlflow/mlflow.db" in text


def test_registration_summary_names_the_version_and_where_the_champion_is() -> None:
    stats = {
        "run_id": "abc123",
        "tracking_uri": "sqlite:////data/mlflow/mlflow.db",
        "model_uri": "models:/tinyllama/2",
        "reused_version": False,
        "val_bpb": 2.5,
        "previous_champion": 1,
        "previous_champion_value": None,
        "champion_version": 1,
        "champion_moved": False,
    }
    text = registration_markdown(RegisterConfig(), stats)
    assert text.startswith("# Registered `models:/tinyllama/2`\n")
    assert "| val_bpb | 2.5000 |" in text and "| champion before | 1 (n/a) |" in text
    assert "| `@champion` now | version 1 (unchanged) |" in text
    assert "mlflow.pyfunc.load_model('models:/tinyllama@champion')" in text
