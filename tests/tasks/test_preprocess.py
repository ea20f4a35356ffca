"""run_preprocess end to end: clean rows, the rejected table, the report, long documents, empty corpora."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest

from tasks.cleaning.report import report_markdown
from tasks.preprocess import (
    CLEAN_SCHEMA,
    REJECTED_SCHEMA,
    EmptyCorpusError,
    PreprocessConfig,
    load_report,
    run_preprocess,
)
from tasks.sources.builtin import builtin_documents
from tasks.sources.document import Document, make_doc_id
from tests.tasks.collect_shards import publish_collect, read_rows


def paraphrase(text: str, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for _ in range(4):
        words[rng.randrange(len(words))] = "notably"
    words.insert(rng.randrange(len(words)), "indeed")
    return " ".join(words)


@pytest.fixture(scope="module")
def raw_artifact(tmp_path_factory):
    """A collect artifact of local documents with planted problems, in three shards."""
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
    docs = [Document(make_doc_id("local", r["title"]), "local", r["title"], r["text"]) for r in rows]
    return publish_collect(root, docs, 3), root


def test_clean_and_rejected_tables_and_report(raw_artifact):
    raw, root = raw_artifact
    cfg = PreprocessConfig(max_chars=30_000)
    artifact = run_preprocess(cfg, raw, root)

    for table, schema in (("documents", CLEAN_SCHEMA), ("rejected", REJECTED_SCHEMA)):
        for path in artifact.shard_paths(table):
            assert pq.read_schema(path).equals(schema, check_metadata=False)
    clean = read_rows(artifact, "documents")

    rules = {r["title"]: r for r in read_rows(artifact, "rejected")}
    assert set(rules) == {"Exact copy", "Near copy", "Stub", "Menu"}
    assert rules["Stub"]["rule"] == "min_chars"
    assert rules["Menu"]["rule"] == "repeated_lines"
    titles = {r["doc_id"]: r["title"] for r in clean}
    assert titles[rules["Exact copy"]["duplicate_of"]] == "Doc 0"
    assert rules["Near copy"]["rule"] == "near_duplicate"
    assert titles[rules["Near copy"]["duplicate_of"]] == "Doc 1"
    assert 0.7 <= rules["Near copy"]["similarity"] < 1

    rows = clean
    wiki = next(r for r in rows if r["title"] == "Wiki")
    assert "[1]" not in wiki["text"] and "See also" not in wiki["text"] and "A book" not in wiki["text"]
    long_parts = [r for r in rows if r["title"] == "Long"]
    assert len(long_parts) > 1 and len({r["doc_id"] for r in long_parts}) == 1
    assert [r["part"] for r in long_parts] == list(range(len(long_parts)))
    assert all(r["n_chars"] == len(r["text"]) <= 30_000 for r in rows)

    report = load_report(artifact)
    assert report["documents_in"] == 18
    assert report["documents_kept"] == 18 - 4 == report["documents_in"] - report["rejected"]
    assert report["rows_out"] == len(clean) == 14 + len(long_parts) - 1
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
    rows = read_rows(artifact, "documents")
    assert len([r for r in rows if r["title"] == "Long"]) == n_long_rows
    rejected = {r["title"]: r["rule"] for r in read_rows(artifact, "rejected")}
    assert rejected.get("Long") == rule


def test_everything_dropped_is_a_clear_error_and_the_input_survives(raw_artifact):
    raw, root = raw_artifact
    with pytest.raises(EmptyCorpusError, match=r"dropped all 18 documents .*'min_words': 17"):
        run_preprocess(PreprocessConfig(min_words=1_000_000), raw, root)
    assert all(path.is_file() for path in raw.shard_paths("documents"))
    assert not list((root / "preprocess").glob(".tmp-*"))


def dev_corpus_documents(path) -> list[Document]:
    """The jsonl's articles as the local source reads them (title, content)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Document(make_doc_id("local", r["title"]), "local", r["title"], r["content"]) for r in rows]


def test_the_real_dev_corpus_keeps_its_punctuation(shared_corpus, tmp_path):
    raw = publish_collect(tmp_path, dev_corpus_documents(shared_corpus), 3)
    artifact = run_preprocess(PreprocessConfig(), raw, tmp_path)
    rows = read_rows(artifact, "documents")
    assert len(rows) > 320
    text = "\n".join(r["text"] for r in rows)
    for kept in ("human-level", "GPT-4", "é", "ß", "Δ", "ł"):
        assert kept in text
    assert "External links" not in text
    assert load_report(artifact)["characters"]["out"] < load_report(artifact)["characters"]["in"]
