"""The tokenizer and encode phases: train SentencePiece on a sample of the clean corpus, then encode it all.

tokenizer: clean `documents` shards -> `tokenizer.model` + a report (bytes per token, vocabulary use,
a round-trip check). It learns from a sample of the training side of the split (`tasks/corpus_sample.py`:
at most `max_docs` documents, `max_chars` characters and `input_sentence_size` lines, drawn across the
corpus by a hash of doc_id), so the held-out documents that measure bits per byte never shaped the
vocabulary, and the same corpus gives the same `tokenizer.model` byte for byte. The report encodes and
decodes a smaller part of the same draw, both sides (at most `report_max_chars` characters): bytes per
token and the byte-fallback share are ratios a few megabytes measure closely; vocabulary use grows with
the text it is counted on. The round trip of every document is checked by encode, which has its ids.

encode: clean `documents` shards + `tokenizer.model` -> `train-NNNNN.parquet` and `val-NNNNN.parquet`,
one job per clean shard (`tasks/token_shards.py`), run by the phase's mapper: here, or as Prefect task
runs on the data flow's Dask workers. A finished shard is kept in the work folder, so a phase killed
halfway encodes only the shards it had not finished.

Both phases stream the shards a record batch at a time, so memory stays bounded by one batch of
documents however large the corpus; the tokenizer's single job goes through the mapper too, so on a
cluster the flow's own process holds only artifacts and counts.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from tasks.corpus_sample import (
    DocSplit,
    TooFewDocumentsError,
    choose_sample,
    document_paths,
    iter_doc_ids,
    iter_documents,
    sample_score,
    split_score,
)
from tasks.shard_map import Mapper, serial_map, task_map
from tasks.storage.artifacts import Artifact, materialize, phase_fingerprint, publish, scratch_dir
from tasks.storage.cache_records import artifact_cache
from tasks.token_shards import (
    SPLITS,
    EncodeJob,
    RoundTripError,
    encode_shard,
    iter_token_docs,
    place_shards,
    roundtrip_error,
    roundtrip_failures,
    token_schema,
)
from tinyllama_model.config_fields import operational
from tinyllama_model.files import atomic_write
from tinyllama_model.tokenizer import (
    CACHE_WORDS,
    N_SPECIAL,
    TOKENIZER_FILE,
    Tokenizer,
    token_dtype,
    train_sentencepiece,
)

# re-exported for callers of the phases
__all__ = ["RoundTripError", "TooFewDocumentsError", "split_score", "token_schema"]

CODE_VERSION = "3"
N_BYTE_PIECES = 256  # byte-fallback pieces <0x00> ... <0xFF>
REPORT_RECORD = "tokenizer-report.json"


class TokenizerConfig(BaseModel):
    vocab_size: int = Field(
        12_000, ge=N_SPECIAL + N_BYTE_PIECES + 2, description="SentencePiece BPE vocabulary size (ids)."
    )
    max_docs: int = Field(
        500_000, gt=0, description="Most training documents the tokenizer learns from (a hash-drawn sample)."
    )
    max_chars: int = Field(
        100_000_000,
        gt=0,
        description="Most characters the tokenizer learns from (the sample stops before this many). "
        "SentencePiece's trainer holds a few bytes per sampled character, so this bounds the phase's memory; "
        "raise it where memory allows.",
    )
    report_max_chars: int = Field(
        4_000_000,
        gt=0,
        description="Most characters the tokenizer's report (bytes per token, vocabulary use, byte "
        "fallback, a round-trip check) encodes: a hash-drawn part of the sample, both sides of the split. "
        "Vocabulary use grows with it; the encode phase checks the round trip of every document.",
    )
    input_sentence_size: int = Field(
        2_000_000,
        gt=0,
        description="Most non-blank lines the tokenizer learns from (the sample stops before this many, "
        "so SentencePiece never draws lines itself: its draw is not reproducible).",
    )
    max_sentence_length: int = Field(
        16_384, gt=0, description="Longest line (bytes) SentencePiece trains on; longer lines are skipped."
    )
    character_coverage: float = Field(
        0.9995, gt=0, le=1, description="Share of characters kept as pieces; the rarest fall back to bytes."
    )
    seed_sentencepiece_size: int = Field(
        1_000_000, gt=0, description="Candidate pieces SentencePiece starts pruning from."
    )
    val_fraction: float = Field(
        0.05, gt=0, lt=1, description="Share of documents held out for validation (by a hash of doc_id)."
    )
    batch_docs: int = Field(512, gt=0, description="Documents read, checked and encoded per batch.")
    num_threads: int = Field(-1, description="Threads SentencePiece encodes with (-1: all cores).")
    cache_words: int = Field(
        CACHE_WORDS,
        ge=0,
        description="Distinct words an encoding process keeps the ids of, so a repeated word skips "
        "SentencePiece (the same ids; ~300 bytes a word); 0 encodes every word with SentencePiece.",
        json_schema_extra=operational(),
    )


class VocabTooLargeError(ValueError):
    """The corpus holds fewer distinct pieces than the requested vocabulary."""


# -- tokenizer ----------------------------------------------------------------------------------------

_MAX_VOCAB = re.compile(r"Please set it to a value <= (\d+)")


def sampled_texts(
    paths: list[Path], split: DocSplit, threshold: float, batch_docs: int, *, train_only: bool
) -> Iterator[tuple[list[str], list[str]]]:
    """(doc_ids, texts) per batch of the documents scoring at most `threshold` (training side, or both)."""
    for ids, texts in iter_documents(paths, batch_docs):
        keep = [
            i
            for i, d in enumerate(ids)
            if sample_score(d) <= threshold and not (train_only and split.is_val(d))
        ]
        if keep:
            yield [ids[i] for i in keep], [texts[i] for i in keep]


def train_tokenizer(cfg: TokenizerConfig, texts: Iterator[str], model_file: Path, where: str) -> Path:
    """Train SentencePiece on `texts`; SentencePiece's own errors become ones that name the fix."""
    try:
        return train_sentencepiece(
            texts,
            model_file,
            cfg.vocab_size,
            input_sentence_size=cfg.input_sentence_size,
            max_sentence_length=cfg.max_sentence_length,
            character_coverage=cfg.character_coverage,
            seed_sentencepiece_size=cfg.seed_sentencepiece_size,
        )
    except RuntimeError as e:
        if m := _MAX_VOCAB.search(str(e)):
            raise VocabTooLargeError(
                f"tokenizer.vocab_size={cfg.vocab_size} is larger than the training text supports; "
                f"set tokenizer.vocab_size to {m.group(1)} or less (or add text, or raise "
                "tokenizer.max_docs / tokenizer.max_chars / tokenizer.input_sentence_size)"
            ) from e
        if "sentences_.empty()" in str(e):
            raise ValueError(f"{where} has no training text; the tokenizer needs non-empty documents") from e
        raise


def tokenizer_report(
    tok: Tokenizer, batches: Iterator[tuple[list[str], list[str]]], num_threads: int
) -> dict[str, Any]:
    """Encode and decode every document of `batches`: bytes per token, vocabulary use, byte fallback.

    Raises RoundTripError naming the documents whose decoded text differs from the normalised text.
    """
    used = np.zeros(tok.vocab_size, dtype=bool)
    is_byte = np.array([tok.sp.is_byte(i) for i in range(tok.vocab_size)])
    learned = ~is_byte & ~np.array(
        [tok.sp.is_control(i) or tok.sp.is_unknown(i) for i in range(tok.vocab_size)]
    )
    n_docs = n_bytes = n_tokens = n_fallback = 0
    failures: list[str] = []
    for ids, texts in batches:
        encoded = tok.encode_batch(texts, num_threads=num_threads)
        failures += roundtrip_failures(tok, ids, texts, encoded, num_threads)
        count = sum(len(toks) for toks in encoded)
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=count)
        used[flat] = True
        n_fallback += int(is_byte[flat].sum())
        n_tokens += flat.size
        n_bytes += sum(len(t.encode()) for t in texts)
        n_docs += len(ids)
    if failures:
        raise roundtrip_error(failures, n_docs, "the tokenizer's report sample")
    return {
        "documents": n_docs,
        "bytes": n_bytes,
        "tokens": n_tokens,
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "vocab_size": tok.vocab_size,
        # share of the learned pieces (not the special ids, not the 256 byte-fallback pieces) in use
        "vocab_used": float(used[learned].mean()),
        "byte_fallback_share": n_fallback / max(n_tokens, 1),
        "roundtrip_ok": True,
    }


@dataclass(frozen=True)
class TokenizerJob:
    """Everything the tokenizer's one job needs: small, so it can run on a Dask worker."""

    cfg: TokenizerConfig
    paths: tuple[str, ...]
    work: str


def tokenizer_job(job: TokenizerJob) -> dict[str, Any]:
    """Split, sample, train, report; model and report stay in the work folder, for a retry to reuse."""
    cfg, paths, work = job.cfg, [Path(p) for p in job.paths], Path(job.work)
    record = work / REPORT_RECORD
    if record.is_file() and (work / TOKENIZER_FILE).is_file():
        return json.loads(record.read_text())
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    split = DocSplit.scan(iter_doc_ids(paths, cfg.batch_docs), cfg.val_fraction)
    sample = choose_sample(
        paths, split, cfg.max_docs, cfg.max_chars, cfg.batch_docs, max_lines=cfg.input_sentence_size
    )
    seconds["sample_seconds"] = time.perf_counter() - t0
    batches = sampled_texts(paths, split, sample.threshold, cfg.batch_docs, train_only=True)
    t0 = time.perf_counter()
    model_file = train_tokenizer(
        cfg, (t for _, texts in batches for t in texts), work / TOKENIZER_FILE, paths[0].parent.as_posix()
    )
    seconds["train_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    within = sample.documents + split.held_out  # at least the both-sides documents of the training draw
    report_sample = choose_sample(
        paths, split, within, cfg.report_max_chars, cfg.batch_docs, train_only=False
    )
    threshold = min(sample.threshold, report_sample.threshold)  # a part of the training sample's draw
    both_sides = sampled_texts(paths, split, threshold, cfg.batch_docs, train_only=False)
    report = tokenizer_report(Tokenizer(model_file), both_sides, cfg.num_threads)
    seconds["report_seconds"] = time.perf_counter() - t0
    stats = {
        **report,
        "corpus_documents": split.documents,
        "held_out_documents": split.held_out,
        "sampled_documents": sample.documents,
        "sampled_characters": sample.characters,
        "sampled_lines": sample.lines,
        **{k: round(v, 3) for k, v in seconds.items()},
    }
    atomic_write(record, json.dumps(stats))
    return stats


def run_tokenizer(
    cfg: TokenizerConfig, clean: Artifact, root: str | Path, *, mapper: Mapper = serial_map
) -> Artifact:
    clean = materialize(clean)
    paths = document_paths(clean)
    fp = phase_fingerprint("tokenizer", CODE_VERSION, cfg=cfg, clean=clean)

    def build(out: Path) -> dict[str, Any]:
        work = scratch_dir(root, "tokenizer", fp)
        job = TokenizerJob(cfg, tuple(str(p) for p in paths), str(work))
        stats = mapper(tokenizer_job, [job])[0]
        shutil.copyfile(work / TOKENIZER_FILE, out / TOKENIZER_FILE)
        return stats

    return publish(root, "tokenizer", fp, build)


# -- encode -------------------------------------------------------------------------------------------


def run_encode(
    cfg: TokenizerConfig,
    clean: Artifact,
    tokenizer: Artifact,
    root: str | Path,
    *,
    mapper: Mapper = serial_map,
) -> Artifact:
    """One `encode_shard` job per clean shard, then the finished shards published as one artifact."""
    clean, tokenizer = materialize(clean), materialize(tokenizer)
    paths = document_paths(clean)
    fp = phase_fingerprint("encode", CODE_VERSION, cfg=cfg, clean=clean, tokenizer=tokenizer)

    def build(out: Path) -> dict[str, Any]:
        work = scratch_dir(root, "encode", fp)
        split = DocSplit.scan(iter_doc_ids(paths, cfg.batch_docs), cfg.val_fraction)
        model = str(tokenizer.file(TOKENIZER_FILE))
        jobs = [
            EncodeJob(i, str(p), model, str(work), split, cfg.batch_docs, cfg.num_threads, cfg.cache_words)
            for i, p in enumerate(paths)
        ]
        results = mapper(encode_shard, jobs)
        place_shards(results, work, out)
        stats: dict[str, Any] = {
            f"{s}_{k}": sum(r[f"{s}_{k}"] for r in results)
            for s in SPLITS
            for k in ("docs", "tokens", "bytes")
        }
        vocab = Tokenizer(model).vocab_size
        return {
            **stats,
            "vocab_size": vocab,
            "dtype": str(token_dtype(vocab)),
            "val_fraction": cfg.val_fraction,
            "shards": len(jobs),
        }

    return publish(root, "encode", fp, build)


def read_split(tokens: Artifact, split: str) -> Iterator[tuple[str, np.ndarray, int]]:
    """(doc_id, tokens, n_bytes) for each document of one split of an encode artifact, streamed."""
    if split not in SPLITS:
        raise ValueError(f"no split {split!r}; the encode phase writes {SPLITS}")
    if split not in tokens.shards:
        raise FileNotFoundError(
            f"the encode artifact at {tokens.path} has no {split} shards; run the encode phase again"
        )
    yield from iter_token_docs(tokens.shard_paths(split))


# -- Prefect ------------------------------------------------------------------------------------------


def tokenizer_markdown(stats: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Tokenizer",
            "",
            "| metric | value |",
            "|---|---|",
            f"| vocabulary size | {stats['vocab_size']:,} |",
            f"| documents in the corpus | {stats['corpus_documents']:,} |",
            f"| held out (not trained on) | {stats['held_out_documents']:,} |",
            f"| trained on (the sample) | {stats['sampled_documents']:,} |",
            f"| reported on (part of the sample, both sides) | {stats['documents']:,} |",
            f"| bytes per token | {stats['bytes_per_token']:.3f} |",
            f"| vocabulary used on the reported documents | {stats['vocab_used']:.1%} |",
            f"| tokens from byte fallback | {stats['byte_fallback_share']:.3%} |",
            "| decode(encode(x)) == normalise(x) | checked on every reported document (and on every document "
            "by the encode phase) |",
            f"| split and sample / training / report | {stats['sample_seconds']:.1f} s / "
            f"{stats['train_seconds']:.1f} s / {stats['report_seconds']:.1f} s |",
        ]
    )


@task(name="train-tokenizer", **artifact_cache("tokenizer", CODE_VERSION))
def build_tokenizer(cfg: TokenizerConfig, clean: Artifact, root: str) -> Artifact:
    artifact = run_tokenizer(cfg, clean, root, mapper=task_map)
    create_markdown_artifact(tokenizer_markdown(artifact.stats), key="tokenizer-report")
    return artifact


@task(name="encode", **artifact_cache("encode", CODE_VERSION))
def encode(cfg: TokenizerConfig, clean: Artifact, tokenizer: Artifact, root: str) -> Artifact:
    artifact = run_encode(cfg, clean, tokenizer, root, mapper=task_map)
    s = artifact.stats
    rows = [
        {"split": k, "documents": s[f"{k}_docs"], "tokens": s[f"{k}_tokens"], "bytes": s[f"{k}_bytes"]}
        for k in SPLITS
    ]
    create_table_artifact(rows, key="encode-splits", description="Token counts per split")
    return artifact
