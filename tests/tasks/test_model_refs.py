"""Model references: local folders to model directories, and an import light enough for the CLI.

Resolving `models:/` and `runs:/` URIs against a real registry is tested in test_register.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.model_refs import MODEL_FILES, ModelDirError, find_model_dir, resolve_model_dir
from tests.factories import make_model_dir

REPO = Path(__file__).resolve().parents[2]


def test_the_cli_resolves_models_without_prefect_or_the_register_task() -> None:
    code = (
        "import sys, tasks.model_refs, flows.cli;"
        "heavy = sorted(m for m in ('prefect', 'tasks.register') if m in sys.modules);"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def test_a_train_artifact_or_a_model_dir_resolves_to_the_model_dir(tmp_path: Path) -> None:
    artifact = tmp_path / "train-artifact"
    (artifact / "model").mkdir(parents=True)
    for name in MODEL_FILES:
        (artifact / "model" / name).write_bytes(b"x")
    assert find_model_dir(artifact) == artifact / "model"
    assert resolve_model_dir(str(artifact / "model")) == artifact / "model"


def test_an_incomplete_or_missing_model_dir_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match=r"tokenizer\.model.*tokenizer_file"):
        find_model_dir(make_model_dir(tmp_path / "model", tokenizer_file=None))
    with pytest.raises(ModelDirError, match="no model directory"):
        find_model_dir(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="MLflow URI"):
        resolve_model_dir(tmp_path / "nowhere")
