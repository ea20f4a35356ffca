"""Bounded samples of a split: whole documents spread evenly over it, the split itself when it fits."""

from __future__ import annotations

import numpy as np
import pytest

from tinyllama_model.data import pack_documents
from tinyllama_model.doc_sample import sample_stream, spread_documents
from tinyllama_model.tokenizer import EOS_ID


def docs(n: int, seed: int = 0) -> list[np.ndarray]:
    """Documents whose ids say where they are: document i holds only the id 4 + i."""
    rng = np.random.default_rng(seed)
    return [np.full(rng.integers(5, 60), 4 + i) for i in range(n)]


def split_into_documents(stream: np.ndarray) -> list[np.ndarray]:
    assert stream[0] == EOS_ID and stream[-1] == EOS_ID
    return [d for d in np.split(stream, np.flatnonzero(stream == EOS_ID))[1:] if len(d) > 1]


def test_a_split_within_the_budget_is_taken_whole():
    stream = pack_documents(docs(20), EOS_ID)
    assert sample_stream(stream, len(stream)) is stream
    assert spread_documents(np.array([3, 4, 5]), 12).tolist() == [0, 1, 2]


@pytest.mark.parametrize("budget", [200, 1_000, 3_000])
def test_a_larger_split_gives_whole_documents_from_all_over_it_within_the_budget(budget):
    originals = docs(400)
    stream = pack_documents(originals, EOS_ID)
    sample = sample_stream(stream, budget)
    assert budget // 2 < len(sample) <= budget
    picked = [int(d[1]) - 4 for d in split_into_documents(sample)]
    for i, d in zip(picked, split_into_documents(sample), strict=True):
        assert np.array_equal(d[1:], originals[i])  # each one whole, with its opening EOS
    assert picked == sorted(picked) and len(set(picked)) == len(picked)
    assert picked[0] < 400 // 8 and picked[-1] >= 400 - 400 // len(picked) - 1  # from the start to the end
    gaps = np.diff(picked)
    assert gaps.max() - gaps.min() <= 1  # evenly spaced
    assert np.array_equal(sample_stream(stream, budget), sample)  # the same every time


def test_two_splits_of_different_sizes_give_samples_of_the_same_bound():
    small, large = (pack_documents(docs(n, seed=n), EOS_ID) for n in (300, 3_000))
    sizes = [len(sample_stream(s, 2_000)) for s in (small, large)]
    assert len(large) > 5 * len(small) > 5 * 2_000 and all(1_000 < n <= 2_000 for n in sizes)


def test_a_document_longer_than_the_budget_gives_the_streams_start():
    stream = pack_documents([np.full(500, 7), np.full(500, 8)], EOS_ID)
    assert np.array_equal(sample_stream(stream, 100), stream[:100])
    assert spread_documents(np.array([500, 500]), 100).size == 0


def test_the_document_scan_reads_the_stream_a_chunk_at_a_time_with_the_same_result(monkeypatch):
    from tinyllama_model import doc_sample

    stream = pack_documents(docs(200), EOS_ID)
    whole = sample_stream(stream, 1_500)
    monkeypatch.setattr(doc_sample, "SCAN_CHUNK_TOKENS", 7)  # documents and EOSs straddle the chunks
    assert np.array_equal(sample_stream(stream, 1_500), whole)
    assert np.array_equal(doc_sample._positions_of(stream, EOS_ID), np.flatnonzero(stream == EOS_ID))
