"""DDP: two gloo ranks under torchrun follow the trajectory of one process with the same global batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.train import run_torchrun
from tests.tinyllama_model.test_levers import LEVERS
from tests.tinyllama_model.test_resume import final_state
from tests.tinyllama_model.test_trainer import EQUIVALENT, TINY, synthetic_docs, tiny_train_config
from tinyllama_model.data import write_packed
from tinyllama_model.training.launch import trainer_from_run_dir, write_run_spec
from tinyllama_model.training.run_layout import BEST_DIR


def _write_run(run_dir, cfg, model_cfg=TINY) -> None:
    run_dir.mkdir(parents=True)
    write_packed(synthetic_docs(100, 0), run_dir / "train.bin", np.uint16)
    write_packed(synthetic_docs(8, 1), run_dir / "val.bin", np.uint16)
    spec = dict(token_dtype="uint16", val_bytes_per_token=2.0, tokenizer_file=None)
    write_run_spec(run_dir, model_cfg, cfg, **spec)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("optimizer", "levers"),
    [("adamw", {}), ("muon", {}), ("muon", LEVERS)],
    ids=["adamw", "muon", "muon-levers"],
)
def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path, optimizer, levers):
    steps = 12
    # global batch 8 windows per step in both runs: 1 x (4 x 2 micro-batches) vs 2 ranks x (2 x 2)
    common = dict(
        grad_accum=2, max_steps=steps, eval_every=6, checkpoint_every=6, optimizer=optimizer, dtype="float64"
    )
    if levers:  # and the weights' average, which validation scores and the best checkpoint holds
        common.update(head_lr=4e-3, ema_decay=0.8)
    model_cfg = TINY.__class__(**{**TINY.to_dict(), **levers})
    single_cfg = tiny_train_config(batch_size=4, **common)
    ddp_cfg = tiny_train_config(batch_size=2, nproc_per_node=2, **common)
    _write_run(tmp_path / "single", single_cfg, model_cfg)
    _write_run(tmp_path / "ddp", ddp_cfg, model_cfg)

    single = trainer_from_run_dir(tmp_path / "single", progress=False).fit()
    rows: list[dict] = []
    run_torchrun(tmp_path / "ddp", 2, rows.append)

    a, b = final_state(tmp_path / "single"), final_state(tmp_path / "ddp")
    assert b["identity"]["world_size"] == 2 and a["tokens"] == b["tokens"]
    for name, p in a["model"].items():
        assert p.dtype == torch.float64
        torch.testing.assert_close(b["model"][name], p, **EQUIVALENT, msg=name)
    assert (a["averaged"] is None) == (not levers)
    for name, p in (a["averaged"] or {}).items():
        torch.testing.assert_close(b["averaged"][name], p, **EQUIVALENT, msg=name)

    # rank 0 alone logged: one row per step and per evaluation, forwarded to the callback
    train_rows = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    assert [r["step"] for r in rows if "val_loss" in r] == [6, 12]
    val_ddp = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val_ddp[-1] == pytest.approx(
        single["final_val_loss"], rel=EQUIVALENT["rtol"]
    )  # validation sharded over ranks
    assert (tmp_path / "ddp" / BEST_DIR / "model.safetensors").is_file()
