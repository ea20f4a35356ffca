"""The trainer on a tiny model and a learnable synthetic stream: budgets, outputs, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyllama_model import ModelConfig, TinyLlama
from tinyllama_model.checkpoint import CheckpointError, load_torch_file
from tinyllama_model.data import CorpusTooSmallError, PackedTokens, pack_documents
from tinyllama_model.training.run_layout import (
    BEST_DIR,
    CHECKPOINT_DIR,
    METRICS_FILE,
    RESULT_FILE,
    list_checkpoints,
)
from tinyllama_model.training.run_state import CheckpointMismatchError
from tinyllama_model.training.train_config import TrainConfig
from tinyllama_model.training.trainer import Trainer

TINY = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=64, max_seq_len=32, multiple_of=16)


def tiny_train_config(**overrides) -> TrainConfig:
    base = dict(
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        max_steps=30,
        max_minutes=None,
        eval_every=10,
        checkpoint_every=10,
        keep_last=2,
        eval_tokens=512,
        peak_flops=1e10,  # skip the matmul measurement
        num_threads=1,  # bit-exact comparisons need the same reduction order every run
    )
    return TrainConfig(**{**base, **overrides})


def synthetic_docs(n_docs: int, seed: int, vocab: int = 64) -> list[np.ndarray]:
    """Documents from a sticky Markov chain over ids 4..vocab-1: next = 3 * prev + 1 (mod), 10% noise."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        t = int(rng.integers(4, vocab))
        doc = []
        for _ in range(int(rng.integers(20, 80))):
            doc.append(t)
            t = int(rng.integers(4, vocab)) if rng.random() < 0.1 else (3 * t + 1) % (vocab - 4) + 4
        docs.append(np.array(doc))
    return docs


def synthetic_streams(n_train: int = 60, n_val: int = 8) -> tuple[PackedTokens, PackedTokens]:
    return (
        PackedTokens(pack_documents(synthetic_docs(n_train, 0), dtype=np.uint16)),
        PackedTokens(pack_documents(synthetic_docs(n_val, 1), dtype=np.uint16)),
    )


def make_trainer(
    run_dir: Path, cfg: TrainConfig | None = None, model_cfg: ModelConfig = TINY, **kw
) -> Trainer:
    train, val = synthetic_streams()
    return Trainer(
        model_cfg,
        cfg or tiny_train_config(),
        train,
        val,
        run_dir,
        val_bytes_per_token=2.0,
        progress=False,
        **kw,
    )


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


# -- training -------------------------------------------------------------------------------------------


def test_training_learns_and_writes_metrics_checkpoints_and_the_best_model(tmp_path):
    rows: list[dict] = []
    result = make_trainer(tmp_path, on_metrics=rows.append).fit()
    metrics = read_metrics(tmp_path)
    assert metrics == rows  # the callback sees exactly what metrics.jsonl holds

    train = [r for r in metrics if "train_loss" in r]
    val = [r for r in metrics if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 31))
    assert [r["step"] for r in val] == [10, 20, 30]
    assert {"lr", "tokens_per_s", "mfu", "epoch", "tokens"} <= set(train[0])
    assert {"val_ppl", "val_bpb"} <= set(val[0])
    assert train[-1]["train_loss"] < 0.6 * train[0]["train_loss"]  # the chain is learnable
    assert val[-1]["val_loss"] < math.log(64) - 1.0
    assert val[-1]["val_bpb"] == pytest.approx(val[-1]["val_loss"] / math.log(2) / 2.0)

    assert [p.name for p in list_checkpoints(tmp_path / CHECKPOINT_DIR)] == [
        "step-00000020.pt",
        "step-00000030.pt",
    ]
    best = TinyLlama.from_pretrained(tmp_path / BEST_DIR)
    assert best.config == TINY
    assert result["best_val_loss"] == min(r["val_loss"] for r in val)
    assert result["steps"] == 30 and result["tokens"] == 30 * 4 * 32
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == result


def test_the_weights_average_is_what_validation_scores_and_the_best_model_holds(tmp_path):
    """ema_decay: the average of the weights after each step, w_avg <- d w_avg + (1 - d) w, starting at the
    first step's; it does not change the trajectory, and it, not the last weights, is validated and kept."""
    steps, decay = 12, 0.8
    plain = tiny_train_config(max_steps=steps, checkpoint_every=1, keep_last=steps, eval_every=steps)
    make_trainer(tmp_path / "plain", plain).fit()
    averaged_cfg = dataclasses.replace(plain, ema_decay=decay)
    averaged = make_trainer(tmp_path / "averaged", averaged_cfg)
    averaged.fit()

    iterates = [load_torch_file(c)["model"] for c in list_checkpoints(tmp_path / "plain" / CHECKPOINT_DIR)]
    expected = dict(iterates[0])
    for weights in iterates[1:]:
        expected = {k: decay * v + (1 - decay) * weights[k] for k, v in expected.items()}
    final = list_checkpoints(tmp_path / "averaged" / CHECKPOINT_DIR)[-1]
    state = load_torch_file(final)
    assert all(torch.equal(state["model"][k], v) for k, v in iterates[-1].items())  # same trajectory
    kept = TinyLlama.from_pretrained(tmp_path / "averaged" / BEST_DIR).state_dict()
    for name, weights in expected.items():
        torch.testing.assert_close(kept[name], weights, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(kept["output.weight"], iterates[-1]["output.weight"])

    val_rows = [r["val_loss"] for r in read_metrics(tmp_path / "averaged") if "val_loss" in r]
    last = [r["val_loss"] for r in read_metrics(tmp_path / "plain") if "val_loss" in r]
    model = TinyLlama.from_pretrained(tmp_path / "averaged" / BEST_DIR)
    averaged.model.load_state_dict(model.state_dict())
    averaged.averaged = None  # now the trainer's own weights are the average: its validation must agree
    assert val_rows == [averaged.evaluate()["val_loss"]] and val_rows != last


# Equivalence in float64, exact by construction rather than by one CPU's fp32 kernels: the two sides sum
# the same gradients in a different order, which costs ~1e-16 relative per addition; a few optimizer
# steps amplify that by orders of magnitude at most, so 1e-10 holds on any CPU with room to spare, while
# a real fault (a micro-batch dropped, a loss not divided by grad_accum) moves weights by 1e-4 or more.
EQUIVALENT = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_gradient_accumulation_matches_the_larger_batch(tmp_path, optimizer):
    common = dict(max_steps=6, dtype="float64", optimizer=optimizer)
    big = make_trainer(tmp_path / "a", tiny_train_config(batch_size=8, **common))
    accum = make_trainer(tmp_path / "b", tiny_train_config(batch_size=4, grad_accum=2, **common))
    big.fit(), accum.fit()
    for (name, p), q in zip(big.model.named_parameters(), accum.model.parameters(), strict=True):
        assert p.dtype == torch.float64
        torch.testing.assert_close(p, q, **EQUIVALENT, msg=name)


def test_compile_on_a_cpu_without_a_cpp_compiler_trains_eager_and_says_why(tmp_path, caplog):
    from torch._inductor import config

    with config.patch({"cpp.cxx": ("no-such-cxx-for-tinyllama",)}):
        trainer = make_trainer(tmp_path, tiny_train_config(max_steps=3, compile=True))
        result = trainer.fit()
    assert trainer.forward_model is trainer.model and result["compiled"] is False and result["steps"] == 3
    assert "train.compile is set but this run trains eager" in caplog.text
    assert "no-such-cxx-for-tinyllama" in caplog.text


def test_token_budget(tmp_path):
    result = make_trainer(tmp_path, tiny_train_config(max_steps=None, max_tokens=1000)).fit()
    assert result["steps"] == math.ceil(1000 / (4 * 32)) and result["tokens"] >= 1000


def test_epoch_budget(tmp_path):
    trainer = make_trainer(tmp_path, tiny_train_config(max_steps=None, max_epochs=1.0))
    result = trainer.fit()
    per_step = 4 / len(trainer.sampler._order(0))
    assert 1.0 <= result["epochs"] < 1.0 + 2 * per_step


def test_wall_clock_budget_spans_the_cosine(tmp_path):
    cfg = tiny_train_config(max_steps=None, max_minutes=0.03, eval_every=1000, checkpoint_every=1000)
    result = make_trainer(tmp_path, cfg).fit()
    # never stops early; the upper bound only says it stopped at all (a tiny step takes milliseconds,
    # so even a machine loaded many times over ends within a few seconds of the budget)
    assert 1.8 <= result["wall_time_s"] < 1.8 + 30.0
    lrs = [r["lr"] for r in read_metrics(tmp_path) if "lr" in r]
    assert lrs[-1] < 0.15 * cfg.lr  # the schedule reached (about) its floor when time ran out
    assert max(lrs) > 0.9 * cfg.lr


# -- bad input ------------------------------------------------------------------------------------------


def test_a_corpus_smaller_than_one_window_names_the_fix(tmp_path):
    tiny = PackedTokens(pack_documents([np.arange(4, 14)], dtype=np.uint16))
    _, val = synthetic_streams()
    with pytest.raises(CorpusTooSmallError, match=r"train\.seq_len"):
        Trainer(TINY, tiny_train_config(), tiny, val, tmp_path, progress=False)


def test_a_window_longer_than_the_context_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"exceeds model\.max_seq_len"):
        make_trainer(tmp_path, tiny_train_config(seq_len=64))


def test_an_empty_validation_stream_is_refused(tmp_path):
    train, _ = synthetic_streams()
    with pytest.raises(ValueError, match="validation stream is empty"):
        Trainer(TINY, tiny_train_config(), train, PackedTokens(np.zeros(0, np.uint16)), tmp_path)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    ("model_cfg", "train_cfg", "named"),
    [
        (
            dataclasses.replace(TINY, dim=48, n_heads=2),
            tiny_train_config(max_steps=10),
            "model.dim: checkpoint 32",
        ),
        (TINY, tiny_train_config(max_steps=10, batch_size=2), "train.batch_size: checkpoint 4 vs now 2"),
    ],
)
def test_a_checkpoint_from_another_config_is_refused_and_kept(tmp_path, model_cfg, train_cfg, named):
    make_trainer(tmp_path, tiny_train_config(max_steps=10)).fit()
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=named) as e:
        make_trainer(tmp_path, train_cfg, model_cfg=model_cfg)
    assert "fresh run directory" in str(e.value)
    assert _snapshot(tmp_path) == before


def test_a_truncated_checkpoint_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
    make_trainer(tmp_path, tiny_train_config(max_steps=10)).fit()
    path = list_checkpoints(tmp_path / CHECKPOINT_DIR)[-1]
    path.write_bytes(path.read_bytes()[:1000])
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*earlier checkpoint") as e:
        make_trainer(tmp_path, tiny_train_config(max_steps=20))
    assert str(path) in str(e.value)
    assert _snapshot(tmp_path) == before
