"""run.json describes a run completely: the trainer rebuilt from it is the one that was described."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tinyllama_model.test_trainer import TINY, synthetic_docs, tiny_train_config
from tinyllama_model.data import write_packed
from tinyllama_model.training.launch import trainer_from_run_dir, write_run_spec
from tinyllama_model.training.run_state import RUN_SPEC


def test_the_trainer_rebuilt_from_run_json_is_the_one_described(tmp_path):
    cfg = tiny_train_config(max_steps=3)
    n_train = write_packed(synthetic_docs(20, 0), tmp_path / "train.bin", np.uint16)
    write_packed(synthetic_docs(4, 1), tmp_path / "val.bin", np.uint16)
    path = write_run_spec(
        tmp_path, TINY, cfg, token_dtype="uint16", val_bytes_per_token=2.5, tokenizer_file=None
    )
    assert path == tmp_path / RUN_SPEC and json.loads(path.read_text())["train"]["max_steps"] == 3
    trainer = trainer_from_run_dir(tmp_path, progress=False)
    assert trainer.model_cfg == TINY and trainer.cfg == cfg
    assert trainer.val_bytes_per_token == 2.5 and trainer.tokenizer_file is None
    assert len(trainer.train_data) == n_train


def test_a_run_dir_without_run_json_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no run\.json"):
        trainer_from_run_dir(tmp_path)
