"""The whole build on an S3 data root (moto's server on loopback), then a training that resumes elsewhere.

One build runs for the module: every phase publishes into the bucket, MLflow (no MLFLOW_TRACKING_URI)
keeps its default store in the local cache with a warning. The tests then check the bucket, re-run with
everything after collect cached, and train on the store's artifacts with a crash, a wiped machine and a
retry that resumes from the checkpoint the store kept.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.build import build
from tasks.storage.artifacts import MANIFEST, load_artifact, read_manifest
from tasks.storage.data_root import DataRoot
from tasks.train import run_train, train_fingerprint
from tests.flows.helpers import PHASES, task_states, tiny_config
from tests.moto_s3 import s3_server, use_s3

pytestmark = pytest.mark.slow


def _run(cfg) -> tuple[dict[str, Any], dict[str, str]]:
    state = build(config=cfg, return_state=True)
    assert state.is_completed(), state
    return state.result(), task_states(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def built(prefect_harness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("object-store")
    with s3_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # so a root taken for a folder would show up here as `s3:/`
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cache = tmp / "cache"
        root = use_s3(mp, endpoint, cache)
        cfg = tiny_config(Path("unused"), f"data_root={root}")
        summary, states = _run(cfg)
        yield {"root": root, "cfg": cfg, "summary": summary, "states": states, "cache": cache, "tmp": tmp}


def test_every_phase_publishes_to_the_bucket_and_reruns_are_cached(built: dict[str, Any]) -> None:
    root, summary, states = built["root"], built["summary"], built["states"]
    assert all(states[p] == "Completed" for p in PHASES), states
    assert summary["data_root"] == root
    assert not (built["tmp"] / "s3:").exists()
    data_root = DataRoot.parse(root)
    for phase, fp in summary["fingerprints"].items():
        manifest = read_manifest(root, phase, fp)
        assert manifest is not None and manifest.upload, phase
        assert data_root.read_bytes(phase, fp, manifest.upload, next(iter(manifest.files))) is not None
    assert summary["registered"]["tracking_uri"].startswith(f"sqlite:///{built['cache']}")

    second, states = _run(built["cfg"])
    assert second["fingerprints"] == summary["fingerprints"]
    cached = ("preprocess", "train-tokenizer", "encode", "train", "evaluate")
    assert {p: states[p] for p in cached} == dict.fromkeys(cached, "Cached"), states


class Crash(RuntimeError):
    """The worker dies mid-training."""


def test_training_resumes_on_another_machine_from_the_stores_checkpoint(
    built: dict[str, Any], tmp_path: Path
) -> None:
    root, fps = built["root"], built["summary"]["fingerprints"]
    tokens = load_artifact(root, "encode", fps["encode"])
    tokenizer = load_artifact(root, "tokenizer", fps["tokenizer"])
    assert tokens is not None and tokenizer is not None
    cfg = built["cfg"]
    train_cfg = dataclasses.replace(cfg.train, max_steps=40, checkpoint_every=10, eval_every=1000)

    def crash_after_the_first_checkpoint(row: dict) -> None:
        if row.get("step") == 15 and "train_loss" in row:
            raise Crash("worker lost")

    with pytest.raises(Crash):
        run_train(cfg.model, train_cfg, tokens, tokenizer, root, on_metrics=crash_after_the_first_checkpoint)
    fp = train_fingerprint(cfg.model, train_cfg, tokens, tokenizer)
    data_root = DataRoot.parse(root)
    assert data_root.read_bytes("train", f".work-{fp}", "checkpoints", "step-00000010.pt") is not None

    shutil.rmtree(built["cache"])  # the retry lands on a machine with nothing local: no cache, no work folder
    model = run_train(cfg.model, train_cfg, tokens, tokenizer, root)

    assert model.stats["resumed_from_step"] == 10 and model.stats["steps"] == 40
    assert data_root.read_bytes("train", fp, MANIFEST) is not None
    assert data_root.read_bytes("train", f".work-{fp}", "checkpoints", "step-00000010.pt") is None  # cleaned
