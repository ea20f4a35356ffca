"""The staged, sharded preprocess against the in-memory reference: same kept documents, same rejections.

The reference (`tests/tasks/preprocess_oracle.py`) is the one-pass version: a dict of exact keys and a
datasketch LSH index over the kept documents, a document dropped when it matches an earlier KEPT one.
The staged phase must keep exactly the same documents however the corpus is cut into shards.
"""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest

from tasks.cleaning.dedup import MinHasher, jaccard, signatures
from tasks.cleaning.dedup_stages import buckets, candidate_pairs, pair_chunks
from tasks.cleaning.shard_jobs import filter_shard, prepare_shard
from tasks.preprocess import PreprocessConfig, load_report, run_preprocess
from tasks.sources.builtin import builtin_documents
from tasks.sources.document import Document
from tests.tasks.collect_shards import publish_collect, read_rows
from tests.tasks.preprocess_oracle import clean_documents
from tests.tasks.test_preprocess import dev_corpus_documents


def replace_words(text: str, fraction: float, rng: random.Random) -> str:
    words = text.split()
    for k in rng.sample(range(len(words)), int(len(words) * fraction)):
        words[k] = f"w{rng.randrange(10**6)}"
    return " ".join(words)


def doc(doc_id: str, text: str) -> Document:
    return Document(doc_id, "local", f"Title {doc_id}", text)


@pytest.fixture(scope="module")
def planted() -> list[Document]:
    """Distinct documents plus exact copies, near copies, chains A~B~C (A not ~C), all shuffled."""
    rng = random.Random(0)
    prose = [d.text for d in builtin_documents() if 3_000 < len(d.text) < 30_000][:40]
    docs = [doc(f"orig-{i}", t) for i, t in enumerate(prose)]
    docs += [doc(f"exact-{i}", prose[i].upper().replace(" ", "  ")) for i in range(5)]
    docs += [doc(f"near-{i}", replace_words(prose[i], 0.02, rng)) for i in range(5, 10)]
    for i in range(10, 25):  # B's edits on A, C's on B: each ~0.78 to the next, A and C ~0.63
        b = replace_words(prose[i], 0.04, rng)
        docs += [doc(f"chain-b-{i}", b), doc(f"chain-c-{i}", replace_words(b, 0.04, rng))]
    docs += [doc("exact-of-chain-b", docs[-2].text.lower()), doc("stub", "Too short.")]
    originals, copies = docs[:40], docs[40:]
    rng.shuffle(copies)
    mixed = originals[:20] + copies[:12] + originals[20:] + copies[12:]  # some copies before originals
    return mixed


def staged(tmp_path, docs: list[Document], cfg: PreprocessConfig, n_shards: int, **kwargs):
    artifact = run_preprocess(cfg, publish_collect(tmp_path, docs, n_shards), tmp_path, **kwargs)
    return read_rows(artifact, "documents"), read_rows(artifact, "rejected"), load_report(artifact)


def assert_same_as_reference(tmp_path, docs: list[Document], cfg: PreprocessConfig, n_shards: int) -> None:
    ref = clean_documents(docs, cfg)
    rows, rejected, report = staged(tmp_path, docs, cfg, n_shards)
    assert [r["doc_id"] for r in rows] == [r["doc_id"] for r in ref.rows]
    assert rows == ref.rows
    by_id = lambda r: r["doc_id"]
    assert sorted(rejected, key=by_id) == sorted(ref.rejected, key=by_id)
    assert report["stages"] == ref.stages
    assert report["rejected_by_rule"] == ref.rejected_by_rule
    assert report["characters"]["after_normalization"] == ref.chars_normalized


@pytest.mark.parametrize("n_shards", [1, 4])
def test_builtin_corpus_keeps_what_the_reference_keeps(tmp_path, n_shards):
    assert_same_as_reference(tmp_path, builtin_documents(), PreprocessConfig(), n_shards)


@pytest.mark.parametrize(
    "n_shards, overrides",
    [
        (1, {}),
        (5, {}),
        (7, {"exact_dedup": False}),
        (3, {"near_dedup": False}),
        (3, {"threshold": 0.6, "num_perm": 64, "shingle_size": 2, "long_documents": "keep"}),
    ],
)
def test_planted_duplicates_and_chains_keep_what_the_reference_keeps(tmp_path, planted, n_shards, overrides):
    assert_same_as_reference(tmp_path, planted, PreprocessConfig(**overrides), n_shards)


def test_the_planted_chains_are_chains(planted):
    """Guards the corpus above: in a chain B goes as A's duplicate and C stays though C ~ B.

    Connected components (union-find over the similar pairs) would drop C as well; keeping it is the
    reference's rule, a duplicate only of an earlier KEPT document.
    """
    ref = clean_documents(planted, PreprocessConfig())
    rejected = {r["doc_id"]: r for r in ref.rejected}
    kept = {r["doc_id"] for r in ref.rows}
    texts = {d.doc_id: d.text for d in planted}
    hasher = MinHasher(128, 1)
    chains = 0
    for i in range(10, 25):
        b, c = f"chain-b-{i}", f"chain-c-{i}"
        if rejected.get(b, {}).get("duplicate_of") == f"orig-{i}" and c in kept:
            sig_b, sig_c = signatures([texts[b], texts[c]], hasher, 3)
            chains += jaccard(sig_b, sig_c) >= 0.7
    assert chains >= 3
    assert rejected["exact-of-chain-b"]["rule"] == "exact_duplicate"
    assert {r["rule"] for r in ref.rejected} >= {"exact_duplicate", "near_duplicate", "min_chars"}


def test_the_real_dev_corpus_keeps_what_the_reference_keeps(shared_corpus, tmp_path):
    assert_same_as_reference(tmp_path, dev_corpus_documents(shared_corpus), PreprocessConfig(), 3)


def test_candidate_pairs_share_a_bucket_and_exact_copies_stand_aside():
    band_key = np.array([7, 7, 7, 9, 9, 5], dtype=np.uint64)
    pos = np.array([30, 10, 20, 10, 40, 50], dtype=np.int64)
    exact = np.array([1, 2, 2, 2, 3, 4], dtype=np.uint64)  # 20 is an exact copy of 10
    assert candidate_pairs(band_key, pos, exact, collapse=True).tolist() == [[30, 10], [40, 10]]
    assert candidate_pairs(band_key, pos, exact, collapse=False).tolist() == [
        [20, 10],
        [30, 10],
        [30, 20],
        [40, 10],
    ]


class Interrupted(Exception):
    pass


def interrupt_at(stage, shard: int):
    """A mapper that runs the jobs in order and fails on `stage`'s job for `shard`, as a killed run would."""

    def mapper(fn, jobs):
        results = []
        for job in jobs:
            if fn is stage and job.shard == shard:
                raise Interrupted(f"{fn.__name__} of shard {shard}")
            results.append(fn(job))
        return results

    return mapper


def recording(calls: list):
    """A mapper that sends every job through pickle (as Dask would) and records what each one returned."""

    def mapper(fn, jobs):
        results = [pickle.loads(pickle.dumps(fn))(pickle.loads(pickle.dumps(job))) for job in jobs]
        calls.append((fn.__name__, results))
        return results

    return mapper


@pytest.mark.parametrize("stage", [prepare_shard, filter_shard])
def test_a_run_killed_halfway_redoes_only_its_unfinished_shards(tmp_path, planted, stage):
    cfg, k = PreprocessConfig(), 3
    raw = publish_collect(tmp_path / "a", planted, 6)
    with pytest.raises(Interrupted):
        run_preprocess(cfg, raw, tmp_path / "a", mapper=interrupt_at(stage, k))
    calls: list = []
    resumed = run_preprocess(cfg, raw, tmp_path / "a", mapper=recording(calls))

    results = dict(calls)[stage.__name__]
    assert [r["resumed"] for r in results] == [True] * k + [False] * (6 - k)
    if stage is filter_shard:  # the earlier stages had all finished
        assert all(r["resumed"] for r in dict(calls)["prepare_shard"])
    whole = run_preprocess(cfg, publish_collect(tmp_path / "b", planted, 6), tmp_path / "b")
    for table in ("documents", "rejected"):
        assert read_rows(resumed, table) == read_rows(whole, table)
    assert load_report(resumed) == load_report(whole)
    assert not list((tmp_path / "a" / "preprocess").glob(".work-*"))  # the work folder goes once published


def test_report_counts_add_up_over_shards(tmp_path, planted):
    rows, rejected, report = staged(tmp_path, planted, PreprocessConfig(max_chars=5_000), 4)
    assert report["documents_in"] == len(planted) == report["documents_kept"] + len(rejected)
    assert report["rows_out"] == len(rows) and report["split_documents"] > 0
    assert sum(v["rows_out"] for v in report["by_source"].values()) == len(rows)
    assert report["characters"]["out"] == sum(len(r["text"]) for r in rows)
    lengths = [r["n_chars"] for r in rows]
    assert report["length_chars"]["p50"] == pytest.approx(float(np.quantile(lengths, 0.5)))
    assert report["length_chars"]["p10"] == pytest.approx(float(np.quantile(lengths, 0.1)))
    assert report["length_chars"]["mean"] == pytest.approx(float(np.mean(lengths)))
    assert json.dumps(report)  # plain JSON


@pytest.mark.slow
def test_the_jobs_run_as_prefect_task_runs(prefect_harness, tmp_path, planted):
    """The data flow passes `mapper=task_map`: every stage's jobs become task runs, same artifact."""
    from prefect import flow

    from tasks.preprocess import preprocess
    from tasks.shard_map import task_map

    raw = publish_collect(tmp_path / "a", planted, 3)
    stages: list[str] = []

    def mapper(fn, jobs):
        stages.append(fn.__name__)
        return task_map(fn, jobs)

    @flow
    def clean(root: str):
        return run_preprocess(PreprocessConfig(), raw, root, mapper=mapper)

    by_tasks = clean(str(tmp_path / "a"))
    assert stages == ["prepare_shard", "exact_partition", "pair_partition", "filter_shard"]

    @flow
    def by_the_task(root: str):
        return preprocess(PreprocessConfig(), raw, root)

    assert by_the_task(str(tmp_path / "c")).fingerprint == by_tasks.fingerprint
    serial = run_preprocess(PreprocessConfig(), publish_collect(tmp_path / "b", planted, 3), tmp_path / "b")
    assert by_tasks.fingerprint == serial.fingerprint
    for table in ("documents", "rejected"):
        assert read_rows(by_tasks, table) == read_rows(serial, table)


def test_a_large_bucket_is_verified_in_chunks_of_pairs():
    """Every pair of a bucket is a candidate (any earlier member may be the kept one), a chunk at a time."""
    band_key = np.array([1] * 40 + [2] * 3 + [3], dtype=np.uint64)
    pos = np.arange(44, dtype=np.int64)[::-1].copy()
    groups = buckets(band_key, pos, np.arange(44, dtype=np.uint64), collapse=True)
    assert sorted(groups.members().tolist()) == list(range(1, 44))  # 0, alone in bucket 3, is not
    chunks = list(pair_chunks(groups, chunk=100))
    assert max(len(i) for i, _ in chunks) <= 100
    pairs = {(int(i), int(j)) for c_i, c_j in chunks for i, j in zip(c_i, c_j, strict=True)}
    expected = {(i, j) for lo, hi in ((4, 44), (1, 4)) for i in range(lo, hi) for j in range(lo, i)}
    assert pairs == expected and len(pairs) == 40 * 39 // 2 + 3
