"""run.json describes a run completely: the trainer rebuilt from it is the one that was described."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tinyllama_model.test_trainer import TINY, synthetic_docs, tiny_train_config
from tinyllama_model.data import write_packed
from tinyllama_model.training.launch import trainer_from_run_dir, write_run_spec
from tinyllama_model.training.run_layout import RUN_SPEC


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


@pytest.mark.gpu
def test_a_run_described_for_cuda_trains_in_bf16_from_memory_mapped_streams(tmp_path):
    """On a CUDA machine (benchmarks/gpu_check.sh): the packed files stay memory-mapped, the model and its
    steps live on the GPU under bf16 autocast, and the loss falls."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cfg = tiny_train_config(max_steps=30, device="cuda", dtype="bfloat16", num_threads=None)
    write_packed(synthetic_docs(40, 0), tmp_path / "train.bin", np.uint16)
    write_packed(synthetic_docs(4, 1), tmp_path / "val.bin", np.uint16)
    write_run_spec(tmp_path, TINY, cfg, token_dtype="uint16", val_bytes_per_token=2.5, tokenizer_file=None)
    rows: list[dict] = []
    trainer = trainer_from_run_dir(tmp_path, progress=False, on_metrics=rows.append)
    assert isinstance(trainer.train_data.tokens, np.memmap)
    assert next(trainer.model.parameters()).device.type == "cuda"
    trainer.fit()
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert losses and losses[-1] < losses[0]
