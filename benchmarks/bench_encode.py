"""Encode speed: SentencePiece alone against `Tokenizer.encode_batch`'s word cache, with the same ids.

    .venv/bin/python benchmarks/bench_encode.py --source corpus.jsonl --mb 100
    .venv/bin/python benchmarks/bench_encode.py --source corpus.jsonl --model tokenizer.model --mb 20

Not a test: it prints a table. Two corpora: the `--source` documents as they are (jsonl with `content`
or `text`; else Python's documentation), and `--mb` megabytes of documents recombined from their
sentences the way bench_data_scale.py builds its dump. The tokenizer is `--model`, or one trained on
the source documents with the tokenizer phase's defaults. Every row encodes in batches of the encode
phase's `batch_docs`, as `tasks/token_shards.py` does; a cache row starts from a fresh Tokenizer (an
empty cache, as each encode job does) and its second pass shows the cache full. MB/s is UTF-8 text
megabytes over wall time; "x" is against SentencePiece on one thread. Every row's ids are compared
with SentencePiece's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench_data_scale import recombined, source_texts, table
from tasks.tokenizer import TokenizerConfig
from tinyllama_model.hardware import machine_line
from tinyllama_model.tokenizer import CACHE_WORDS, Tokenizer, train_sentencepiece


def cache_bytes(tok: Tokenizer) -> int:
    """What the cache's dict, words, id tuples and their int objects hold (small ints are shared)."""
    ids = tok.word_cache._ids if tok.word_cache else {}
    return sys.getsizeof(ids) + sum(
        sys.getsizeof(w) + sys.getsizeof(v) + sum(sys.getsizeof(i) for i in v if i > 256)
        for w, v in ids.items()
    )


def batched(encode: Callable[[list[str]], list[list[int]]], docs: list[str], batch: int) -> list[list[int]]:
    return [ids for i in range(0, len(docs), batch) for ids in encode(docs[i : i + batch])]


def bench_corpus(name: str, docs: list[str], model: Path, args: argparse.Namespace) -> list[tuple]:
    mb = sum(len(d.encode()) for d in docs) / 1e6
    words = sum(d.count(" ") + 1 for d in docs)
    print(f"# {name}: {len(docs)} documents, {mb:.1f} MB, ~{words / 1e6:.1f}M words", flush=True)
    sp = Tokenizer(model).sp
    t0 = time.perf_counter()
    expected = batched(lambda b: sp.encode(b, num_threads=1), docs, args.batch_docs)
    base = time.perf_counter() - t0
    rows = [(name, f"{mb:.1f}", "sentencepiece, 1 thread", f"{base:.2f}", f"{mb / base:.1f}", "1.00", "", "")]

    def row(label: str, seconds: float, got: list[list[int]], tok: Tokenizer | None = None) -> None:
        cached = f"{len(tok.word_cache):,} / {cache_bytes(tok) / 1e6:.0f} MB" if tok else ""
        same = "yes" if got == expected else "NO"
        rows.append((name, f"{mb:.1f}", label, f"{seconds:.2f}", f"{mb / seconds:.1f}",
                     f"{base / seconds:.2f}", cached, same))  # fmt: skip

    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    got = batched(lambda b: sp.encode(b, num_threads=-1), docs, args.batch_docs)
    row(f"sentencepiece, {cores} threads", time.perf_counter() - t0, got)
    for threads in (1, -1):
        tok = Tokenizer(model)
        for attempt in ("empty cache", "second pass"):
            t0 = time.perf_counter()
            got = batched(
                lambda b: tok.encode_batch(b, num_threads=threads, cache_words=args.cache_words),  # noqa: B023
                docs,
                args.batch_docs,
            )
            label = f"word cache, {attempt}, misses on {1 if threads == 1 else cores} thread(s)"
            row(label, time.perf_counter() - t0, got, tok)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=None, help="jsonl corpus (`content` or `text`)")
    p.add_argument("--mb", type=float, default=100, help="MB of recombined documents")
    p.add_argument("--model", type=Path, default=None, help="a tokenizer.model (default: train one)")
    p.add_argument("--vocab-size", type=int, default=TokenizerConfig().vocab_size)
    p.add_argument("--batch-docs", type=int, default=TokenizerConfig().batch_docs)
    p.add_argument("--cache-words", type=int, default=CACHE_WORDS)
    p.add_argument("--doc-chars", type=int, default=7000, help="characters per recombined document")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"# {machine_line()}")
    docs = source_texts(args.source)
    model = args.model
    if model is None:
        model = Path(tempfile.mkdtemp(prefix="bench-encode-")) / "tokenizer.model"
        t0 = time.perf_counter()
        train_sentencepiece(docs, model, vocab_size=args.vocab_size)
        print(f"# trained a {args.vocab_size}-piece tokenizer in {time.perf_counter() - t0:.1f} s: {model}")
    tok = Tokenizer(model)
    if tok.word_cache is None:
        print(f"# {model} gets no word cache: {tok.word_cache_refusal}")
    rows = bench_corpus("source documents", docs, model, args)
    if args.mb > 0:
        more = recombined(args.source, args.mb, args.doc_chars, args.seed)
        rows += bench_corpus("recombined", more, model, args)
    header = ("corpus", "MB", "path", "s", "MB/s", "x", "cached words / bytes", "same ids")
    table(header, rows)


if __name__ == "__main__":
    main()
