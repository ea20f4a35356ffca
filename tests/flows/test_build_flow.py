"""The `tinyllama-build` flow for real: Prefect's harness, a real MLflow store, every phase on tiny data."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest

from flows.build import build
from tests.flows.helpers import PHASES, task_states, tiny_config

pytestmark = pytest.mark.slow


def _run(cfg):
    start = time.perf_counter()
    state = build(config=cfg, return_state=True)
    assert state.is_completed(), state
    return state.result(), task_states(state.state_details.flow_run_id), time.perf_counter() - start


def test_build_registers_a_champion_then_reuses_every_phase(prefect_harness, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data")
    first, states, first_s = _run(cfg)
    assert set(PHASES) <= set(states), states
    assert all(states[p] == "Completed" for p in PHASES), states
    assert first["registered"]["champion_moved"] is True
    assert 0 < first["evaluation"]["val_bpb"] < 20

    mlflow.set_tracking_uri(first["registered"]["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/tinyllama@champion")
    [text] = model.predict(["The for statement"])
    assert isinstance(text, str) and text

    # Nothing changed: collection looks at its sources again (it must, to see new revisions), finds the
    # same content, and every phase after it is a cache hit.
    second, states, second_s = _run(cfg)
    assert second["fingerprints"] == first["fingerprints"]
    assert states["collect"] == "Completed"
    cached = ("preprocess", "train-tokenizer", "encode", "train", "evaluate")
    assert {p: states[p] for p in cached} == dict.fromkeys(cached, "Cached")
    assert second["registered"]["version"] == first["registered"]["version"]  # no duplicate version
    print(f"\nfirst run {first_s:.1f}s, unchanged re-run {second_s:.1f}s, ratio {first_s / second_s:.1f}x")

    # Only operational fields changed (how training is watched, how patiently pages are fetched): no
    # fingerprint moves, so training is a cache hit too.
    operational = ("train.log_every_s=1.0", "train.eval_every=7", "collect.wikipedia.timeout_s=5")
    watched, states, _ = _run(tiny_config(tmp_path / "data", *operational))
    assert watched["fingerprints"] == first["fingerprints"]
    assert {p: states[p] for p in cached} == dict.fromkeys(cached, "Cached")

    # A training setting changed: the data phases stay cached, training and what follows re-run.
    third, states, _ = _run(tiny_config(tmp_path / "data", "train.lr=0.001"))
    assert {p: states[p] for p in ("preprocess", "train-tokenizer", "encode")} == dict.fromkeys(
        ("preprocess", "train-tokenizer", "encode"), "Cached"
    )
    assert states["train"] == states["evaluate"] == "Completed"
    assert third["fingerprints"]["train"] != first["fingerprints"]["train"]
    assert third["registered"]["version"] == first["registered"]["version"] + 1
