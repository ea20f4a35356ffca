"""The tokenizer and encode phases: train SentencePiece on the clean corpus, then turn it into token Parquet.

tokenizer: clean `documents.parquet` -> `tokenizer.model` + a report (bytes per token, vocabulary use,
a round-trip check on every document). The tokenizer learns from the training side of the split only, so
the held-out documents that measure bits per byte never shaped the vocabulary.

encode: clean `documents.parquet` + `tokenizer.model` -> `train.parquet` and `val.parquet`, one row per
document: `doc_id`, `tokens` (list<uint16>, or list<uint32> past 65,536 ids), `n_bytes` (the UTF-8 size
of the text, the denominator of bits per byte). Documents are never joined here; the trainer packs them.

The train/validation split is a pure function of each `doc_id` (a hash compared to `val_fraction`), so a
document stays on its side across rebuilds however the corpus grows. Both phases read Parquet in record
batches, so memory stays bounded by one batch of documents, and write nothing but their outputs.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from tasks.storage.artifacts import Artifact, materialize, phase_fingerprint, publish
from tasks.storage.cache_records import artifact_cache
from tinyllama_model.data import token_dtype
from tinyllama_model.tokenizer import N_SPECIAL, TOKENIZER_FILE, Tokenizer, train_sentencepiece

CODE_VERSION = "1"
DOCUMENTS = "documents.parquet"
TRAIN_FILE, VAL_FILE = "train.parquet", "val.parquet"
N_BYTE_PIECES = 256  # byte-fallback pieces <0x00> ... <0xFF>


class TokenizerConfig(BaseModel):
    vocab_size: int = Field(
        12_000, ge=N_SPECIAL + N_BYTE_PIECES + 2, description="SentencePiece BPE vocabulary size (ids)."
    )
    input_sentence_size: int = Field(
        2_000_000, gt=0, description="Lines SentencePiece samples from the corpus to learn merges from."
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


class VocabTooLargeError(ValueError):
    """The corpus holds fewer distinct pieces than the requested vocabulary."""


class RoundTripError(ValueError):
    """decode(encode(text)) did not give back the normalised text: the tokenizer would lose information."""


class TooFewDocumentsError(ValueError):
    """A split needs at least one training and one validation document."""


# -- the split ----------------------------------------------------------------------------------------


def split_score(doc_id: str) -> float:
    """A stable uniform number in [0, 1) per document: the first 8 bytes of sha256(doc_id)."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64


def validation_ids(doc_ids: Iterable[str], val_fraction: float) -> set[str]:
    """The doc_ids held out for validation: those whose score is below `val_fraction`.

    A small corpus may have no document below the threshold (or only such documents); then the one with
    the lowest score is held out (or the one with the highest is kept for training), so both sides are
    non-empty whenever there are two documents. Only such corpora can see a document change sides, when
    documents are added and a natural validation document appears.
    """
    scores = {d: split_score(d) for d in doc_ids}
    if len(scores) < 2:
        raise TooFewDocumentsError(
            f"the corpus has {len(scores)} document(s); at least 2 are needed to hold one out for validation "
            "(bits per byte on unseen text); add documents (more topics or sources in the collect section)"
        )
    val = {d for d, s in scores.items() if s < val_fraction}
    if not val:
        val = {min(scores, key=scores.__getitem__)}
    if len(val) == len(scores):
        val.discard(max(scores, key=scores.__getitem__))
    return val


# -- reading the clean corpus -------------------------------------------------------------------------


def iter_documents(path: Path, batch_docs: int) -> Iterator[tuple[list[str], list[str]]]:
    """(doc_ids, texts) per Parquet record batch."""
    if not path.is_file():
        raise FileNotFoundError(f"no clean corpus at {path}; run the preprocess phase first")
    pf = pq.ParquetFile(path)
    missing = {"doc_id", "text"} - set(pf.schema_arrow.names)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}; expected the preprocess phase's schema")
    for batch in pf.iter_batches(batch_size=batch_docs, columns=["doc_id", "text"]):
        ids = batch.column("doc_id").to_pylist()
        texts = [t or "" for t in batch.column("text").to_pylist()]
        yield ids, texts


def read_doc_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"no clean corpus at {path}; run the preprocess phase first")
    return pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()


# -- tokenizer ----------------------------------------------------------------------------------------

_MAX_VOCAB = re.compile(r"Please set it to a value <= (\d+)")


def train_tokenizer(cfg: TokenizerConfig, documents: Path, model_file: Path, exclude: set[str]) -> Path:
    """Train SentencePiece on the texts of `documents` whose doc_id is not in `exclude`."""

    def texts() -> Iterator[str]:
        for ids, batch in iter_documents(documents, cfg.batch_docs):
            yield from (t for d, t in zip(ids, batch, strict=True) if d not in exclude)

    try:
        return train_sentencepiece(
            texts(),
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
                f"set tokenizer.vocab_size to {m.group(1)} or less (or add text)"
            ) from e
        if "sentences_.empty()" in str(e):
            raise ValueError(
                f"{documents} has no training text; the tokenizer needs non-empty documents"
            ) from e
        raise


def tokenizer_report(tok: Tokenizer, documents: Path, batch_docs: int, num_threads: int) -> dict[str, Any]:
    """Encode every document once: bytes per token, vocabulary use, byte fallback, and the round trip.

    Raises RoundTripError naming the documents whose decoded text differs from the normalised text.
    """
    used = np.zeros(tok.vocab_size, dtype=bool)
    is_byte = np.array([tok.sp.is_byte(i) for i in range(tok.vocab_size)])
    learned = ~is_byte & ~np.array(
        [tok.sp.is_control(i) or tok.sp.is_unknown(i) for i in range(tok.vocab_size)]
    )
    n_docs = n_bytes = n_tokens = n_fallback = 0
    failures: list[str] = []
    for ids, texts in iter_documents(documents, batch_docs):
        encoded = tok.encode_batch(texts, num_threads=num_threads)
        for doc_id, text, toks in zip(ids, texts, encoded, strict=True):
            if tok.decode(toks) != tok.normalize(text):
                failures.append(doc_id)
            arr = np.asarray(toks, dtype=np.int64)
            used[arr] = True
            n_fallback += int(is_byte[arr].sum())
            n_tokens += arr.size
            n_bytes += len(text.encode())
            n_docs += 1
    if failures:
        raise RoundTripError(
            f"decode(encode(text)) != normalise(text) for {len(failures)} of {n_docs} documents "
            f"(first: {failures[:5]}); the tokenizer would change these texts. Check them for characters "
            "SentencePiece reserves (U+2581) or control characters, and clean them in the preprocess phase"
        )
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


def run_tokenizer(cfg: TokenizerConfig, clean: Artifact, root: str | Path) -> Artifact:
    clean = materialize(clean)
    documents = clean.file(DOCUMENTS)
    fp = phase_fingerprint("tokenizer", CODE_VERSION, cfg=cfg, clean=clean)

    def build(out: Path) -> dict[str, Any]:
        held_out = validation_ids(read_doc_ids(documents), cfg.val_fraction)
        t0 = time.perf_counter()
        model_file = train_tokenizer(cfg, documents, out / TOKENIZER_FILE, exclude=held_out)
        seconds = time.perf_counter() - t0
        report = tokenizer_report(Tokenizer(model_file), documents, cfg.batch_docs, cfg.num_threads)
        return {**report, "held_out_documents": len(held_out), "train_seconds": round(seconds, 3)}

    return publish(root, "tokenizer", fp, build)


# -- encode -------------------------------------------------------------------------------------------

SPLITS = ("train", "val")


def token_schema(vocab_size: int) -> pa.Schema:
    value_type = pa.uint16() if token_dtype(vocab_size) == np.uint16 else pa.uint32()
    return pa.schema([("doc_id", pa.string()), ("tokens", pa.list_(value_type)), ("n_bytes", pa.int64())])


def _token_column(encoded: list[list[int]], dtype: np.dtype, value_type: pa.DataType) -> pa.Array:
    lengths = np.fromiter((len(t) for t in encoded), dtype=np.int32, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)  # one batch of documents stays far below 2**31
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(offsets, pa.array(values, type=value_type))


def encode_corpus(cfg: TokenizerConfig, documents: Path, tok: Tokenizer, out: Path) -> dict[str, Any]:
    """Write `train.parquet` and `val.parquet` (one row per document) and return per-split counts."""
    held_out = validation_ids(read_doc_ids(documents), cfg.val_fraction)
    schema = token_schema(tok.vocab_size)
    dtype = token_dtype(tok.vocab_size)
    value_type = schema.field("tokens").type.value_type
    counts = {s: {"docs": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
    writers = {s: pq.ParquetWriter(out / f"{s}.parquet", schema) for s in SPLITS}
    try:
        for ids, texts in iter_documents(documents, cfg.batch_docs):
            encoded = tok.encode_batch(texts, num_threads=cfg.num_threads)
            n_bytes = [len(t.encode()) for t in texts]
            for split in SPLITS:
                rows = [i for i, d in enumerate(ids) if (d in held_out) == (split == "val")]
                if not rows:
                    continue
                table = pa.Table.from_arrays(
                    [
                        pa.array([ids[i] for i in rows], pa.string()),
                        _token_column([encoded[i] for i in rows], dtype, value_type),
                        pa.array([n_bytes[i] for i in rows], pa.int64()),
                    ],
                    schema=schema,
                )
                writers[split].write_table(table)
                c = counts[split]
                c["docs"] += len(rows)
                c["tokens"] += sum(len(encoded[i]) for i in rows)
                c["bytes"] += sum(n_bytes[i] for i in rows)
    finally:
        for w in writers.values():
            w.close()
    stats: dict[str, Any] = {f"{s}_{k}": v for s in SPLITS for k, v in counts[s].items()}
    return {**stats, "vocab_size": tok.vocab_size, "dtype": str(dtype), "val_fraction": cfg.val_fraction}


def run_encode(cfg: TokenizerConfig, clean: Artifact, tokenizer: Artifact, root: str | Path) -> Artifact:
    clean, tokenizer = materialize(clean), materialize(tokenizer)
    fp = phase_fingerprint("encode", CODE_VERSION, cfg=cfg, clean=clean, tokenizer=tokenizer)

    def build(out: Path) -> dict[str, Any]:
        return encode_corpus(cfg, clean.file(DOCUMENTS), Tokenizer(tokenizer.file(TOKENIZER_FILE)), out)

    return publish(root, "encode", fp, build)


def read_split(tokens: Artifact, split: str) -> Iterator[tuple[str, np.ndarray, int]]:
    """(doc_id, tokens, n_bytes) for each document of one split of an encode artifact, streamed."""
    path = tokens.file(f"{split}.parquet")
    if not path.is_file():
        raise FileNotFoundError(f"no {split} tokens at {path}; run the encode phase first")
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        col = batch.column("tokens")
        values = col.values.to_numpy(zero_copy_only=False)
        offsets = col.offsets.to_numpy()
        for i, (doc_id, n_bytes) in enumerate(
            zip(batch.column("doc_id").to_pylist(), batch.column("n_bytes").to_pylist(), strict=True)
        ):
            yield doc_id, values[offsets[i] - offsets[0] : offsets[i + 1] - offsets[0]], n_bytes


# -- Prefect ------------------------------------------------------------------------------------------


def tokenizer_markdown(stats: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Tokenizer",
            "",
            "| metric | value |",
            "|---|---|",
            f"| vocabulary size | {stats['vocab_size']:,} |",
            f"| documents | {stats['documents']:,} |",
            f"| held out (not trained on) | {stats['held_out_documents']:,} |",
            f"| bytes per token | {stats['bytes_per_token']:.3f} |",
            f"| vocabulary used on the corpus | {stats['vocab_used']:.1%} |",
            f"| tokens from byte fallback | {stats['byte_fallback_share']:.3%} |",
            "| decode(encode(x)) == normalise(x) | checked on every document |",
            f"| training time | {stats['train_seconds']:.1f} s |",
        ]
    )


@task(name="train-tokenizer", **artifact_cache("tokenizer", CODE_VERSION))
def build_tokenizer(cfg: TokenizerConfig, clean: Artifact, root: str) -> Artifact:
    artifact = run_tokenizer(cfg, clean, root)
    create_markdown_artifact(tokenizer_markdown(artifact.stats), key="tokenizer-report")
    return artifact


@task(name="encode", **artifact_cache("encode", CODE_VERSION))
def encode(cfg: TokenizerConfig, clean: Artifact, tokenizer: Artifact, root: str) -> Artifact:
    artifact = run_encode(cfg, clean, tokenizer, root)
    s = artifact.stats
    rows = [
        {"split": k, "documents": s[f"{k}_docs"], "tokens": s[f"{k}_tokens"], "bytes": s[f"{k}_bytes"]}
        for k in SPLITS
    ]
    create_table_artifact(rows, key="encode-splits", description="Token counts per split")
    return artifact
