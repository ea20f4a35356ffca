"""Deduplication: datasketch-equal signatures and bands, planted near-duplicates caught, distinct kept.

The detectors here are the in-memory reference (`tests/tasks/preprocess_oracle.py`) over the hashing
the staged phase shares with it; `test_preprocess_stages.py` checks the phase against the reference.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from datasketch import MinHash

from tasks.cleaning.dedup import MinHasher, band_keys, lsh_bands, shingle_hashes
from tasks.sources.builtin import builtin_documents
from tests.tasks.preprocess_oracle import ExactDedup, NearDedup


@pytest.fixture(scope="module")
def prose() -> list[str]:
    """Real, distinct documents of 300+ words: Python's own documentation (present everywhere)."""
    docs = [d.text for d in builtin_documents() if 2_000 < len(d.text) < 30_000]
    return docs[:60]


def edit(text: str, rng: random.Random, changes: int = 4, inserts: int = 3) -> str:
    """A paraphrase-level copy: a few words replaced and a few inserted."""
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = rng.choice(["however", "notably", "therefore", "indeed"])
    for _ in range(inserts):
        words.insert(rng.randrange(len(words)), rng.choice(["also", "really", "quite"]))
    return " ".join(words)


def test_signatures_equal_datasketch_minhash_per_document():
    texts = [
        "the quick brown fox jumps over the lazy dog again",
        "",
        "two words",
        "Ünïcode wörds, ok 東京 too",
    ]
    hashes, doc = shingle_hashes(texts, 3)
    signatures = MinHasher(64, seed=7).signatures(hashes, doc, len(texts))
    for i in range(len(texts)):
        reference = MinHash(num_perm=64, seed=7, hashfunc=int)
        reference.update_batch([int(h) for h in hashes[doc == i]])
        assert np.array_equal(signatures[i], reference.hashvalues)


def test_batches_equal_single_documents_and_shingles_stay_inside_one():
    texts = ["alpha beta gamma delta", "Straßenbahn straße groß", "beta gamma delta epsilon", "x y"]
    hashes, doc = shingle_hashes(texts, 3)
    for i, text in enumerate(texts):
        alone, _ = shingle_hashes([text], 3)
        assert np.array_equal(hashes[doc == i], alone)
    assert len(hashes) == 2 + 1 + 2 + 1  # "delta straßenbahn straße" across texts 0 and 1 is not a shingle


def test_shingle_hashes_are_stable_across_processes():
    # Python's own str hash is salted per process (PYTHONHASHSEED); ours must not be.
    call = "shingle_hashes(['Stable hashes, über alles!'], 2)[0].tolist()"
    code = f"from tasks.cleaning.dedup import shingle_hashes; print({call})"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert other.stdout.strip() == str(shingle_hashes(["Stable hashes, über alles!"], 2)[0].tolist())


def test_shingles_ignore_case_and_punctuation():
    assert np.array_equal(
        shingle_hashes(["Hello, World! Again."], 2)[0], shingle_hashes(["hello world again"], 2)[0]
    )


def test_exact_dedup_ignores_case_and_spacing():
    exact = ExactDedup()
    assert exact.check("a", "Some  Text\nhere") is None
    assert exact.check("b", "some text here") == "a"
    assert exact.check("c", "other text") is None


def test_planted_near_duplicates_are_caught_and_distinct_documents_survive(prose):
    rng = random.Random(0)
    near = NearDedup(threshold=0.7, num_perm=128, shingle_size=3)
    for i, text in enumerate(prose):
        assert near.check(f"orig-{i}", text) is None, f"distinct document {i} dropped"
    caught = 0
    for i, text in enumerate(prose):
        match = near.check(f"copy-{i}", edit(text, rng))
        if match is not None and match[0] == f"orig-{i}":
            caught += 1
    assert caught == len(prose)


def test_unrelated_text_on_the_same_subject_is_not_a_duplicate(prose):
    near = NearDedup()
    near.check("a", prose[0])
    half = prose[0].split()
    rewritten = " ".join(half[: len(half) // 3]) + " " + prose[1]
    assert near.check("b", rewritten) is None


def test_bands_are_datasketchs_and_equal_bands_give_equal_keys():
    assert lsh_bands(0.7, 128, 0.9) == (20, 6)  # what MinHashLSH(0.7, 128, weights=(0.1, 0.9)) uses
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(3, 12), dtype=np.uint32)
    sigs[1, :4] = sigs[0, :4]  # band 0 (rows 0-3) shared by documents 0 and 1
    sigs[2, 4:8] = sigs[0, :4]  # the same values in band 1: a different bucket
    keys = band_keys(sigs, 3, 4)
    assert keys[0, 0] == keys[1, 0]
    assert len({*keys[:, 1], *keys[:, 2]}) == 6 and keys[2, 1] != keys[0, 0]
