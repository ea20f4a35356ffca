"""Exact resume: a run killed and restarted from its last checkpoint ends bit-identical to an unbroken one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tinyllama_model.test_levers import LEVERS
from tests.tinyllama_model.test_trainer import (
    TINY,
    make_trainer,
    read_metrics,
    synthetic_docs,
    tiny_train_config,
)
from tinyllama_model.checkpoint import load_torch_file
from tinyllama_model.data import write_packed
from tinyllama_model.hardware import compile_blocker
from tinyllama_model.training.launch import trainer_from_run_dir, write_run_spec
from tinyllama_model.training.run_layout import CHECKPOINT_DIR, list_checkpoints

REPO = Path(__file__).resolve().parents[2]


class Interrupted(Exception):
    pass


def assert_same_tree(a, b, path: str = "") -> None:
    """Nested dicts/lists equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_tree(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def assert_same_state(a: dict, b: dict) -> None:
    """Model weights and optimizer moments (AdamW's, Muon's momentum) equal bit for bit."""
    assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
    assert a["sampler"] == b["sampler"]
    assert_same_tree(a["model"], b["model"], "model")
    assert_same_tree(a["optimizer"], b["optimizer"], "optimizer")
    assert_same_tree(a["averaged"], b["averaged"], "averaged")  # the weights' average (train.ema_decay)
    assert any(s["state"] for s in a["optimizer"].values())  # moments exist, so they were compared


TIMING = ("tokens_per_s", "mfu", "elapsed_s")


def metrics_without_timing(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(run_dir)]


def final_state(run_dir: Path) -> dict:
    return load_torch_file(list_checkpoints(run_dir / CHECKPOINT_DIR)[-1])


def crash_at(step: int):
    """A metrics callback that interrupts training when the row of `step` arrives."""

    def callback(row: dict) -> None:
        if row.get("step") == step and "train_loss" in row:
            raise Interrupted

    return callback


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_a_crash_is_bit_exact(tmp_path, optimizer):
    # dropout on: the resumed run must also restore the torch RNG that drives it
    model_cfg = TINY.__class__(**{**TINY.to_dict(), "dropout": 0.1})
    cfg = tiny_train_config(max_steps=24, checkpoint_every=8, eval_every=8, optimizer=optimizer)
    make_trainer(tmp_path / "straight", cfg, model_cfg=model_cfg).fit()

    with pytest.raises(Interrupted):
        make_trainer(tmp_path / "crashed", cfg, model_cfg=model_cfg, on_metrics=crash_at(13)).fit()
    resumed = make_trainer(tmp_path / "crashed", cfg, model_cfg=model_cfg)
    assert resumed.step == 8
    result = resumed.fit()
    assert result["resumed_from_step"] == 8

    assert_same_state(final_state(tmp_path / "straight"), final_state(tmp_path / "crashed"))
    # metrics.jsonl: rows logged after the checkpoint by the crashed run were dropped and logged again
    assert metrics_without_timing(tmp_path / "crashed") == metrics_without_timing(tmp_path / "straight")


@pytest.mark.parametrize(
    ("dtype", "extra"),
    [("float32", {"head_lr": 4e-3}), ("bfloat16", {}), ("auto", {"cpu_bf16_min_speedup": 1e-9})],
    ids=["levers-fp32", "levers-bf16", "levers-auto-bf16"],
)
def test_resume_with_every_lever_is_bit_exact(tmp_path, dtype, extra):
    """fp32 anywhere; bf16 autocast on the same machine (asked for, or picked by the probe under auto).
    The weights' average is among the levers: a resume that restarted it would differ."""
    model_cfg = TINY.__class__(**{**TINY.to_dict(), **LEVERS})
    cfg = tiny_train_config(
        max_steps=12, checkpoint_every=4, eval_every=4, optimizer="muon", dtype=dtype, ema_decay=0.9, **extra
    )
    straight = make_trainer(tmp_path / "straight", cfg, model_cfg=model_cfg)
    assert straight.compute_dtype == ("float32" if dtype == "float32" else "bfloat16")
    straight.fit()

    with pytest.raises(Interrupted):
        make_trainer(tmp_path / "crashed", cfg, model_cfg=model_cfg, on_metrics=crash_at(6)).fit()
    resumed = make_trainer(tmp_path / "crashed", cfg, model_cfg=model_cfg)
    assert resumed.step == 4 and resumed.fit()["dtype"] == straight.compute_dtype
    assert final_state(tmp_path / "straight")["averaged"] is not None
    assert_same_state(final_state(tmp_path / "straight"), final_state(tmp_path / "crashed"))


@pytest.mark.slow
@pytest.mark.skipif(compile_blocker(torch.device("cpu")) is not None, reason="torch.compile needs g++ here")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_compiled_run_resumes_bit_exact(tmp_path, dtype):
    """train.compile (in the cpu_10min preset, which trains in bf16 where the CPU has it) keeps exact
    resume: the compiled graph is rebuilt alike."""
    cfg = tiny_train_config(
        max_steps=8, checkpoint_every=4, eval_every=4, optimizer="muon", compile=True, dtype=dtype
    )
    straight = make_trainer(tmp_path / "straight", cfg)
    assert straight.fit()["compiled"] and straight.compute_dtype == dtype
    with pytest.raises(Interrupted):
        make_trainer(tmp_path / "crashed", cfg, on_metrics=crash_at(6)).fit()
    resumed = make_trainer(tmp_path / "crashed", cfg)
    assert resumed.step == 4 and resumed.fit()["compiled"]
    assert_same_state(final_state(tmp_path / "straight"), final_state(tmp_path / "crashed"))


def test_a_resumed_auto_run_keeps_the_dtype_it_began_in(tmp_path):
    """A probe near the threshold may decide otherwise after a restart; the run must not switch."""
    began_bf16 = tiny_train_config(max_steps=4, checkpoint_every=2, eval_every=2, cpu_bf16_min_speedup=1e-9)
    make_trainer(tmp_path, began_bf16).fit()
    # the same run (cpu_bf16_min_speedup is part of its identity, so flip the machine instead): a checkpoint
    # written in bf16, read back by a trainer whose probe picked fp32
    ckpt = list_checkpoints(tmp_path / CHECKPOINT_DIR)[-1]
    state = load_torch_file(ckpt)
    assert state["compute_dtype"] == "bfloat16"
    state["identity"]["train"]["cpu_bf16_min_speedup"] = 1e9
    torch.save(state, ckpt)
    fp32_machine = tiny_train_config(max_steps=4, checkpoint_every=2, eval_every=2, cpu_bf16_min_speedup=1e9)
    assert make_trainer(tmp_path / "fresh", fp32_machine).compute_dtype == "float32"  # what it picks anew
    resumed = make_trainer(tmp_path, fp32_machine)
    assert resumed.step == 4 and resumed.compute_dtype == "bfloat16"


def _write_run(run_dir: Path, cfg) -> None:
    run_dir.mkdir(parents=True)
    write_packed(synthetic_docs(200, 0), run_dir / "train.bin", np.uint16)
    write_packed(synthetic_docs(8, 1), run_dir / "val.bin", np.uint16)
    write_run_spec(run_dir, TINY, cfg, token_dtype="uint16", val_bytes_per_token=2.0, tokenizer_file=None)


def _train_process(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tinyllama_model.training.launch", str(run_dir), "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigkill_then_restart_is_bit_identical(tmp_path):
    # dtype pinned: under dtype=auto each run probes bf16 against fp32, and on a loaded machine the two
    # runs' probes can choose differently (test_a_resumed_auto_run_keeps_the_dtype_it_began_in covers auto)
    cfg = tiny_train_config(max_steps=300, checkpoint_every=30, eval_every=100, keep_last=3, dtype="float32")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _write_run(straight, cfg)
    _write_run(killed, cfg)

    proc = _train_process(killed)
    deadline = time.monotonic() + 300
    while not list_checkpoints(killed / CHECKPOINT_DIR):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = int(list_checkpoints(killed / CHECKPOINT_DIR)[-1].stem.split("-")[1])
    assert killed_at < 300

    proc = _train_process(killed)  # restart: it resumes from the last checkpoint
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    trainer_from_run_dir(straight, progress=False).fit()  # the same run, never interrupted

    assert_same_state(final_state(straight), final_state(killed))
    assert metrics_without_timing(killed) == metrics_without_timing(straight)
    assert not [
        p for p in (killed / CHECKPOINT_DIR).iterdir() if p.name.startswith(".")
    ]  # no temp files left
