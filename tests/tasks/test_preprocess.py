"""run_preprocess end to end: clean rows, the rejected table, the report, long documents, empty corpora."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest

from tasks.cleaning.report import report_markdown
from tasks.collect import CollectConfig, run_collect
from tasks.preprocess import (
    CLEAN_SCHEMA,
    REJECTED_FILE,
    REJECTED_SCHEMA,
    EmptyCorpusError,
    PreprocessConfig,
    load_report,
    run_preprocess,
)
from tasks.sources.builtin import builtin_documents
from tasks.sources.document import DOCUMENTS_FILE

OFFLINE = {"wikipedia": {"enabled": False}}


def paraphrase(text: str, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for _ in range(4):
        words[rng.randrange(len(words))] = "notably"
    words.insert(rng.randrange(len(words)), "indeed")
    return " ".join(words)


@pytest.fixture(scope="module")
def raw_artifact(tmp_path_factory):
    """A collect artifact from local jsonl with planted problems, built through the real collect phase."""
    root = tmp_path_factory.mktemp("root")
    prose = [d.text for d in builtin_documents() if 3_000 < len(d.text) < 20_000][:12]
    rows = [{"title": f"Doc {i}", "text": t} for i, t in enumerate(prose)]
    rows += [
        {"title": "Exact copy", "text": prose[0].upper()},  # equal up to case
        {"title": "Near copy", "text": paraphrase(prose[1], 0)},
        {"title": "Stub", "text": "Too short to keep."},
        {
            "title": "Menu",
            "text": "Read our privacy policy and the terms of use.\n" * 30 + "Welcome, friend.",
        },
        {"title": "Long", "text": "\n\n".join(prose[2:])},
        {
            "title": "Wiki",
            "text": "Body of an article.[1] " * 30 + "\n\nSee also\n\nOther\n\nReferences\n\n1. A book.",
        },
    ]
    path = root / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = CollectConfig(local={"paths": [str(path)]}, **OFFLINE)
    return run_collect(cfg, root), root


def test_clean_and_rejected_tables_and_report(raw_artifact):
    raw, root = raw_artifact
    cfg = PreprocessConfig(max_chars=30_000)
    artifact = run_preprocess(cfg, raw, root)

    clean = pq.read_table(artifact.file(DOCUMENTS_FILE))
    rejected = pq.read_table(artifact.file(REJECTED_FILE))
    assert clean.schema.equals(CLEAN_SCHEMA, check_metadata=False)
    assert rejected.schema.equals(REJECTED_SCHEMA, check_metadata=False)

    rules = {r["title"]: r for r in rejected.to_pylist()}
    assert set(rules) == {"Exact copy", "Near copy", "Stub", "Menu"}
    assert rules["Stub"]["rule"] == "min_chars"
    assert rules["Menu"]["rule"] == "repeated_lines"
    titles = {r["doc_id"]: r["title"] for r in clean.to_pylist()}
    assert titles[rules["Exact copy"]["duplicate_of"]] == "Doc 0"
    assert rules["Near copy"]["rule"] == "near_duplicate"
    assert titles[rules["Near copy"]["duplicate_of"]] == "Doc 1"
    assert 0.7 <= rules["Near copy"]["similarity"] < 1

    rows = clean.to_pylist()
    wiki = next(r for r in rows if r["title"] == "Wiki")
    assert "[1]" not in wiki["text"] and "See also" not in wiki["text"] and "A book" not in wiki["text"]
    long_parts = [r for r in rows if r["title"] == "Long"]
    assert len(long_parts) > 1 and len({r["doc_id"] for r in long_parts}) == 1
    assert [r["part"] for r in long_parts] == list(range(len(long_parts)))
    assert all(r["n_chars"] == len(r["text"]) <= 30_000 for r in rows)

    report = load_report(artifact)
    assert report["documents_in"] == 18
    assert report["documents_kept"] == 18 - 4 == report["documents_in"] - report["rejected"]
    assert report["rows_out"] == clean.num_rows == 14 + len(long_parts) - 1
    assert report["rejected_by_rule"] == {
        "min_chars": 1,
        "repeated_lines": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
    }
    for before, after in zip(report["stages"], report["stages"][1:], strict=False):
        assert after["in"] == before["out"]
    assert sum(h["documents"] for h in report["histogram"]) == report["rows_out"]
    markdown = report_markdown(report)
    assert "| near_duplicate | 15 | 1 | 14 |" in markdown
    assert artifact.stats["rejected_by_rule"] == report["rejected_by_rule"]

    assert run_preprocess(cfg, raw, root).path == artifact.path  # same input and config: reused


@pytest.mark.parametrize("mode, n_long_rows, rule", [("keep", 1, None), ("drop", 0, "max_chars")])
def test_long_documents_kept_whole_or_dropped_on_request(raw_artifact, mode, n_long_rows, rule):
    raw, root = raw_artifact
    artifact = run_preprocess(PreprocessConfig(max_chars=30_000, long_documents=mode), raw, root)
    rows = pq.read_table(artifact.file(DOCUMENTS_FILE)).to_pylist()
    assert len([r for r in rows if r["title"] == "Long"]) == n_long_rows
    rejected = {r["title"]: r["rule"] for r in pq.read_table(artifact.file(REJECTED_FILE)).to_pylist()}
    assert rejected.get("Long") == rule


def test_everything_dropped_is_a_clear_error_and_the_input_survives(raw_artifact):
    raw, root = raw_artifact
    with pytest.raises(EmptyCorpusError, match=r"dropped all 18 documents .*'min_words': 17"):
        run_preprocess(PreprocessConfig(min_words=1_000_000), raw, root)
    assert raw.file(DOCUMENTS_FILE).is_file()
    assert not list((root / "preprocess").glob(".tmp-*"))


def test_the_real_dev_corpus_keeps_its_punctuation(shared_corpus, tmp_path):
    cfg = CollectConfig(local={"paths": [str(shared_corpus)], "text_field": "content"}, **OFFLINE)
    raw = run_collect(cfg, tmp_path)
    artifact = run_preprocess(PreprocessConfig(), raw, tmp_path)
    rows = pq.read_table(artifact.file(DOCUMENTS_FILE)).to_pylist()
    assert len(rows) > 320
    text = "\n".join(r["text"] for r in rows)
    for kept in ("human-level", "GPT-4", "é", "ß", "Δ", "ł"):
        assert kept in text
    assert "External links" not in text
    assert load_report(artifact)["characters"]["out"] < load_report(artifact)["characters"]["in"]
