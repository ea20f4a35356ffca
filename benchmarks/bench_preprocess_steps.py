"""Preprocess's per-document work, function by function: the reference (before) against the live (after).

    .venv/bin/python benchmarks/bench_preprocess_steps.py --source corpus.jsonl --mb 20

Not a test: it prints one table. The documents are those of `benchmarks/bench_data_scale.py` (sentences
of `--source`, or of Python's documentation, recombined into ~7 KB documents; its functions, imported).
"before" is `tests/tasks/cleaning_reference.py`, the functions as they were; "after" is
`tasks.cleaning`. Each row is the best of `--repeat` passes over all documents; MB/s is UTF-8 megabytes
of the raw documents over that time, and the whole per-document path (normalize, then text_stats and the
MinHash signatures of the normalised text) is the last row. Every row also checks that before and
after give equal results, and stops when they do not.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench_data_scale import recombined
from tasks.cleaning import dedup, filters, normalize
from tests.tasks import cleaning_reference as ref

BATCH_CHARS = 1 << 20  # characters per numpy batch, as `tasks.cleaning.dedup.signatures` groups them


def batches(texts: Sequence[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    size = 0
    for t in texts:
        out[-1].append(t)
        size += len(t)
        if size >= BATCH_CHARS:
            out.append([])
            size = 0
    return [b for b in out if b]


def sigs(shingles: Callable, hasher: dedup.MinHasher, k: int, texts: Sequence[str]) -> list[np.ndarray]:
    out = []
    for b in batches(texts):
        h, d = shingles(b, k)
        out.extend(hasher.signatures(h, d, len(b)))
    return out


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def equal(a: Any, b: Any) -> bool:
    """Deep equality of what a row computed (lists and tuples of strings, stats or numpy arrays)."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(equal, a, b))
    return a == b


def rows(raw: list[str], args: argparse.Namespace) -> list[tuple[str, Callable, Callable]]:
    """(name, before, after) per measured step; each takes no argument and returns what it computed."""
    appendix = normalize.appendix_pattern(normalize.DEFAULT_APPENDIX_HEADINGS)
    nfkc = [normalize.nfkc(t) for t in raw]
    clean = [normalize.normalize(t, wikipedia_cleanup=True, appendix=appendix) for t in raw]
    hasher, k = dedup.MinHasher(args.num_perm, 1), args.shingle_size
    joined = batches(clean)

    def path(norm: Callable, stats: Callable, shingles: Callable) -> Callable:
        def run() -> tuple[list, list]:
            texts = [norm(t, wikipedia_cleanup=True, appendix=appendix) for t in raw]
            return [stats(t) for t in texts], sigs(shingles, hasher, k, texts)

        return run

    def each(fn: Callable, texts: list[str], *extra: Any) -> Callable:
        return lambda: [fn(t, *extra) for t in texts]

    return [
        (
            "cut_appendix",
            each(ref.cut_appendix, nfkc, appendix),
            each(normalize.cut_appendix, nfkc, appendix),
        ),
        (
            "strip_reference_markers",
            each(ref.strip_reference_markers, nfkc),
            each(normalize.strip_reference_markers, nfkc),
        ),
        (
            "normalize_whitespace",
            each(ref.normalize_whitespace, nfkc),
            each(normalize.normalize_whitespace, nfkc),
        ),
        (
            "normalize (all)",
            lambda: [ref.normalize(t, wikipedia_cleanup=True, appendix=appendix) for t in raw],
            lambda: [normalize.normalize(t, wikipedia_cleanup=True, appendix=appendix) for t in raw],
        ),
        ("text_stats", each(ref.text_stats, clean), each(filters.text_stats, clean)),
        (
            "word_hashes",
            lambda: [ref.word_hashes(b) for b in joined],
            lambda: [dedup.word_hashes(b) for b in joined],
        ),
        (
            "signatures",
            lambda: sigs(ref.shingle_hashes, hasher, k, clean),
            lambda: sigs(dedup.shingle_hashes, hasher, k, clean),
        ),
        (
            "per-document path",
            path(ref.normalize, ref.text_stats, ref.shingle_hashes),
            path(normalize.normalize, filters.text_stats, dedup.shingle_hashes),
        ),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=None, help="jsonl corpus whose sentences are recombined")
    p.add_argument("--mb", type=float, default=20, help="MB of text to generate")
    p.add_argument("--doc-chars", type=int, default=7000, help="characters per synthetic document")
    p.add_argument("--repeat", type=int, default=3, help="passes per row; the best is reported")
    p.add_argument("--num-perm", type=int, default=128)
    p.add_argument("--shingle-size", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from tinyllama_model.hardware import machine_line

    raw = recombined(args.source, args.mb, args.doc_chars, args.seed)
    mb = sum(len(t.encode()) for t in raw) / 1e6
    print(f"# {machine_line()}")
    print(f"# {len(raw):,} documents, {mb:.1f} MB of text from {args.source or 'Python documentation'}")
    print("| step | before s | after s | before MB/s | after MB/s | speed-up |")
    print("| ---- | -------- | ------- | ----------- | ---------- | -------- |")
    for name, before, after in rows(raw, args):
        t_old, r_old = best(before, args.repeat)
        t_new, r_new = best(after, args.repeat)
        if not equal(r_old, r_new):
            raise SystemExit(f"{name}: the live result differs from the reference's")
        print(
            f"| {name} | {t_old:.2f} | {t_new:.2f} | {mb / t_old:.1f} | {mb / t_new:.1f} "
            f"| {t_old / t_new:.2f}x |"
        )


if __name__ == "__main__":
    main()
