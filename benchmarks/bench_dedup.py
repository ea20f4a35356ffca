"""Near-duplicate detection: our numpy MinHash + datasketch LSH against the first version's pairwise Jaccard.

Synthetic corpora of ~300-word documents drawn from a Zipf-distributed vocabulary, with ~10% planted
near-duplicates (a few words replaced, inserted and deleted in a copy of an earlier document). For
each size and method: wall time, documents per second, peak traced memory (tracemalloc, in a second
pass so tracing does not slow the timed one), recall of the planted duplicates and the false-drop rate
(distinct documents wrongly dropped).

Methods:
  pairwise   the original: every new document's 3-word-shingle set against every kept one, O(n^2);
             run once on the smallest corpus under a time budget, and projected (quadratically) from
             the documents it finished to the other sizes
  datasketch MinHash.bulk (sha1 of each shingle, Python-level) + MinHashLSH: the textbook usage
  ours       tasks.cleaning.dedup.NearDedup: numpy word/shingle hashing and signatures, LeanMinHash

    .venv/bin/python benchmarks/bench_dedup.py                  # 1k, 10k, 50k (~2-3 min on 2 cores)
    .venv/bin/python benchmarks/bench_dedup.py --sizes 1000 --no-memory
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.cleaning.dedup import NearDedup
from tinyllama_model.hardware import machine_line

THRESHOLD, NUM_PERM, SHINGLE = 0.7, 128, 3


# --- corpus -----------------------------------------------------------------------------------------
def make_vocabulary(size: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
    return sorted(words)


@dataclass
class Corpus:
    texts: list[str]
    source_of: dict[int, int]  # planted duplicate index -> the index it copies


def make_corpus(n: int, seed: int = 0, dup_fraction: float = 0.1, vocab_size: int = 30_000) -> Corpus:
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    vocab = np.array(make_vocabulary(vocab_size, rng))
    ranks = np.arange(1, vocab_size + 1)
    p = 1.0 / ranks**1.1
    p /= p.sum()
    texts: list[str] = []
    source_of: dict[int, int] = {}
    for i in range(n):
        if i > 10 and rng.random() < dup_fraction:
            src = rng.randrange(i)
            while src in source_of:  # copy an original, so "the duplicate of" is unambiguous
                src = rng.randrange(i)
            texts.append(perturb(texts[src], vocab, rng))
            source_of[i] = src
            continue
        length = int(nprng.integers(250, 350))
        words = vocab[nprng.choice(vocab_size, size=length, p=p)]
        sentences, start = [], 0
        while start < length:
            end = min(start + int(nprng.integers(8, 25)), length)
            sentences.append(" ".join(words[start:end]).capitalize() + ".")
            start = end
        texts.append(" ".join(sentences))
    return Corpus(texts, source_of)


def perturb(text: str, vocab: np.ndarray, rng: random.Random) -> str:
    """Paraphrase-level edits: 3 words replaced, 2 inserted, 2 deleted."""
    words = text.split()
    for _ in range(3):
        words[rng.randrange(len(words))] = str(rng.choice(vocab))
    for _ in range(2):
        words.insert(rng.randrange(len(words)), str(rng.choice(vocab)))
    for _ in range(2):
        del words[rng.randrange(len(words))]
    return " ".join(words)


# --- methods: each returns {index: index it duplicates} ---------------------------------------------
def shingle_set(text: str) -> set[str]:
    words = text.lower().split()
    return {" ".join(words[i : i + SHINGLE]) for i in range(max(len(words) - SHINGLE + 1, 1))}


def pairwise(texts: list[str], budget_s: float) -> tuple[dict[int, int], int]:
    """The original O(n^2) approach; returns (drops, documents processed within the budget)."""
    kept: list[tuple[int, set[str]]] = []
    drops: dict[int, int] = {}
    start = time.perf_counter()
    for i, text in enumerate(texts):
        if time.perf_counter() - start > budget_s:
            return drops, i
        s = shingle_set(text)
        for j, other in kept:
            if len(s & other) / len(s | other) >= THRESHOLD:
                drops[i] = j
                break
        else:
            kept.append((i, s))
    return drops, len(texts)


def datasketch_plain(texts: list[str]) -> dict[int, int]:
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    sets = [[s.encode() for s in shingle_set(t)] for t in texts]
    drops: dict[int, int] = {}
    kept: dict[int, MinHash] = {}
    for i, m in enumerate(MinHash.bulk(sets, num_perm=NUM_PERM)):
        best = max(((m.jaccard(kept[c]), c) for c in lsh.query(m)), default=None)
        if best is not None and best[0] >= THRESHOLD:
            drops[i] = best[1]
        else:
            lsh.insert(i, m)
            kept[i] = m
    return drops


def ours(texts: list[str]) -> dict[int, int]:
    found = NearDedup(THRESHOLD, NUM_PERM, SHINGLE).run([(str(i), t) for i, t in enumerate(texts)])
    return {int(i): int(kept) for i, (kept, _) in found.items()}


# --- measurement ------------------------------------------------------------------------------------
def quality(drops: dict[int, int], corpus: Corpus, n_done: int) -> tuple[float, float]:
    planted = [i for i in corpus.source_of if i < n_done]
    recall = sum(1 for i in planted if i in drops) / max(len(planted), 1)
    distinct = [i for i in range(n_done) if i not in corpus.source_of]
    false_drops = sum(1 for i in distinct if i in drops) / max(len(distinct), 1)
    return recall, false_drops


def peak_mb(fn: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


COLUMNS = " | ".join(
    [
        f"{'docs':>6}",
        f"{'method':<10}",
        f"{'seconds':>8}",
        f"{'docs/s':>8}",
        "peak MB",
        "recall",
        "false drops",
        "note",
    ]
)


def row(
    n: int, method: str, seconds: float, mem: float, recall: float, false_drops: float, note: str = ""
) -> str:
    mem_text = f"{mem:7.1f}" if mem == mem else f"{'-':>7}"  # NaN: not traced
    return (
        f"{n:>6} | {method:<10} | {seconds:>8.2f} | {n / seconds:>8.1f} | {mem_text} | "
        f"{recall:>6.3f} | {false_drops:>11.4f} | {note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--pairwise-budget", type=float, default=30.0, help="seconds before projecting")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc passes")
    parser.add_argument("--memory-max-docs", type=int, default=10_000, help="largest size traced for memory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"{machine_line()}\n")
    print(COLUMNS)
    print("-" * len(COLUMNS))
    measured: tuple[int, float] | None = None
    recall = false_drops = float("nan")
    for n in sorted(args.sizes):
        corpus = make_corpus(n, seed=args.seed)
        texts = corpus.texts
        traced = not args.no_memory and n <= args.memory_max_docs
        for name, method in (("ours", ours), ("datasketch", datasketch_plain)):
            start = time.perf_counter()
            drops = method(texts)
            seconds = time.perf_counter() - start
            mem = peak_mb(lambda m=method, t=texts: m(t)) if traced else float("nan")
            print(row(n, name, seconds, mem, *quality(drops, corpus, n)), flush=True)

        if measured is None:  # the original approach runs once, on the smallest corpus, within a budget
            start = time.perf_counter()
            drops, done = pairwise(texts, args.pairwise_budget)
            measured = (done, time.perf_counter() - start)
            recall, false_drops = quality(drops, corpus, done)
        done, seconds = measured
        # Memory grows linearly (one shingle set per kept document): trace a prefix and scale it.
        prefix = texts[: min(n, 300)]
        mem = (
            peak_mb(lambda p=prefix: pairwise(p, float("inf"))) * n / len(prefix) if traced else float("nan")
        )
        if done == n:
            print(
                row(n, "pairwise", seconds, mem, recall, false_drops, "memory scaled from 300 docs"),
                flush=True,
            )
        else:
            projected = seconds * (n / done) ** 2  # O(n^2) comparisons
            note = f"projected from {done} docs in {seconds:.0f} s"
            print(row(n, "pairwise", projected, mem, recall, false_drops, note), flush=True)


if __name__ == "__main__":
    main()
