"""Evaluation: every token of every document counts, bytes are the source's, and the phase's outputs.

Also the one test of the tokenizer/encode/train/evaluate Prefect wrappers, as a flow under the harness.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.evaluate import EvaluateConfig, evaluate_file, run_evaluate, score_documents
from tasks.tokenizer import read_split, run_encode, run_tokenizer
from tasks.train import run_train
from tests.flows.helpers import ui_artifact_keys
from tests.tasks.test_tokenizer_task import SMALL, doc_texts, write_clean
from tests.tasks.test_train_task import MODEL, train_config
from tinyllama_model import TinyLlama
from tinyllama_model.doc_sample import spread_documents
from tinyllama_model.generate import generate_text
from tinyllama_model.tokenizer import Tokenizer

FAST = EvaluateConfig(prompts=["The for statement", "Ünïcode prompt"], max_new_tokens=8, stride=16)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(root, tokenizer, encode, train) artifacts of a tiny run."""
    root = tmp_path_factory.mktemp("root")
    clean = write_clean(root / "clean", doc_texts(30))
    tok = run_tokenizer(SMALL, clean, root)
    enc = run_encode(SMALL, clean, tok, root)
    return root, tok, enc, run_train(MODEL, train_config(), enc, tok, root)


@pytest.fixture(scope="module")
def model_dir(pipeline) -> Path:
    return pipeline[3].file("model")


def test_the_phase_scores_every_validation_token(pipeline):
    root, _, enc, trained = pipeline
    art = run_evaluate(FAST, trained, enc, root)
    metrics = json.loads(art.file("metrics.json").read_text())
    val = list(read_split(enc, "val"))
    assert metrics["tokens"] == sum(len(t) + 1 for _, t, _ in val)  # each token plus each document's EOS
    assert metrics["bytes"] == enc.stats["val_bytes"] == sum(b for *_, b in val)
    assert metrics["documents"] == enc.stats["val_docs"]
    direct = score_documents(
        TinyLlama.from_pretrained(trained.file("model")), [t for _, t, _ in val], metrics["bytes"], stride=16
    )
    assert metrics["bpb"] == pytest.approx(direct["bpb"])
    assert art.stats["val_bpb"] == metrics["bpb"] and art.stats["val_loss"] == metrics["loss"]
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]))


def test_the_phase_scores_whole_documents_spread_over_a_split_past_its_bound(pipeline):
    root, tok, _, trained = pipeline
    clean = write_clean(root / "clean-many", doc_texts(30))
    enc = run_encode(SMALL.model_copy(update={"val_fraction": 0.7}), clean, tok, root)  # ~20 held out
    val = list(read_split(enc, "val"))
    lengths = [len(t) + 1 for _, t, _ in val]
    bound = sum(lengths) // 2
    art = run_evaluate(FAST.model_copy(update={"max_tokens": bound}), trained, enc, root)
    metrics = json.loads(art.file("metrics.json").read_text())
    assert metrics["tokens"] < bound and 0 < metrics["documents"] < metrics["documents_in_split"] == len(val)
    picked = spread_documents(np.array(lengths), bound - 1)
    assert metrics["tokens"] == sum(lengths[i] for i in picked)  # whole documents, each with its EOS
    assert metrics["bytes"] == sum(val[i][2] for i in picked)  # and their bytes: bpb stays exact
    assert art.fingerprint != run_evaluate(FAST, trained, enc, root).fingerprint  # it defines the result
    with pytest.raises(ValueError, match=r"evaluate\.max_tokens=2 holds no whole validation document"):
        run_evaluate(FAST.model_copy(update={"max_tokens": 2}), trained, enc, root)


def test_the_phase_stores_reproducible_samples(pipeline, model_dir):
    root, _, enc, trained = pipeline
    samples = json.loads(run_evaluate(FAST, trained, enc, root).file("samples.json").read_text())
    assert list(samples) == FAST.prompts
    again = generate_text(
        TinyLlama.from_pretrained(model_dir),
        Tokenizer(model_dir),
        FAST.prompts,
        max_new_tokens=8,
        temperature=FAST.temperature,
        top_k=FAST.top_k,
        seed=FAST.seed,
    )
    assert list(samples.values()) == again and all(isinstance(s, str) for s in again)


# -- evaluate_file (the CLI's `tinyllama eval`) --------------------------------------------------------

TEXTS = [
    "Un café à Zürich costs 4,50 €.\nNew line — and an em dash.",
    doc_texts(3)[2][:3000],  # longer than the 32-token context: needs many windows
    "short",
]


def _files(tmp_path: Path) -> Iterator[Path]:
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"title": str(i), "content": t}) + "\n" for i, t in enumerate(TEXTS)))
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": TEXTS}), parquet)
    return iter([jsonl, parquet])


def test_jsonl_and_parquet_give_the_same_numbers(tmp_path, model_dir):
    results = [evaluate_file(model_dir, path) for path in _files(tmp_path)]
    assert results[0] == results[1]
    tok = Tokenizer(model_dir)
    assert results[0]["bytes"] == sum(len(t.encode("utf-8")) for t in TEXTS)  # as in the file, not normalised
    assert results[0]["tokens"] == sum(len(tok.encode(t)) + 1 for t in TEXTS)
    assert results[0]["documents"] == 3


def test_every_token_counts_whatever_the_stride(tmp_path, model_dir):
    path = tmp_path / "one.txt"
    path.write_text(TEXTS[1], encoding="utf-8")
    by_stride = {s: evaluate_file(model_dir, path, stride=s) for s in (1, 8, 32)}
    n_tokens = len(Tokenizer(model_dir).encode(TEXTS[1])) + 1
    assert n_tokens > 100
    assert {r["tokens"] for r in by_stride.values()} == {n_tokens}


def test_bad_files_get_clear_errors(tmp_path, model_dir):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(KeyError, match="--text-field"):
        evaluate_file(model_dir, jsonl)
    assert evaluate_file(model_dir, jsonl, text_field="text")["documents"] == 1
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"use \.jsonl, \.parquet or \.txt"):
        evaluate_file(model_dir, tmp_path / "x.csv")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no non-empty"):
        evaluate_file(model_dir, tmp_path / "empty.txt")


# -- the Prefect tasks ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_tasks_run_in_a_flow_and_publish_ui_artifacts(prefect_harness, tmp_path):
    from prefect import flow

    from tasks.evaluate import evaluate
    from tasks.tokenizer import build_tokenizer, encode
    from tasks.train import train

    clean = write_clean(tmp_path / "clean", doc_texts(30))

    @flow
    def build(root: Path):
        tok = build_tokenizer(SMALL, clean, root)
        enc = encode(SMALL, clean, tok, root)
        model = train(MODEL, train_config(max_steps=10), enc, tok, root)
        return evaluate(FAST, model, enc, root)

    state = build(tmp_path, return_state=True)
    result = state.result()
    assert result.phase == "evaluate" and result.stats["val_bpb"] > 0
    # this run's own: the session's server also holds the artifacts of every other build
    published = ui_artifact_keys(state.state_details.flow_run_id)
    assert {"tokenizer-report", "encode-splits", "train-summary", "evaluation"} <= published, published
    assert build(tmp_path) == result  # cached on the inputs' fingerprints
