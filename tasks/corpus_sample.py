"""Which clean documents the tokenizer and encode phases read: the validation split and a capped sample.

The split is a pure function of each `doc_id` (a hash compared to `val_fraction`), so a document stays
on its side across rebuilds however the corpus grows, and a shard can be split on its own, on any
worker, from a `DocSplit` of a few fields: nothing holds the set of every id.

The tokenizer learns from a sample: the training-side documents with the lowest `sample_score` (a second
hash of the doc_id, independent of the split), as many as fit under `max_docs` documents and `max_chars`
characters. A hash draws across the whole corpus (every shard, every source) rather than its first N
documents, and the same corpus always gives the same sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.storage.artifacts import Artifact
from tasks.storage.shards import iter_batches

DOCUMENTS_TABLE = "documents"


class TooFewDocumentsError(ValueError):
    """A split needs at least one training and one validation document."""


def split_score(doc_id: str) -> float:
    """A stable uniform number in [0, 1) per document: the first 8 bytes of sha256(doc_id)."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64


def sample_score(doc_id: str) -> float:
    """A second stable uniform number per document, independent of `split_score`: the sampling order."""
    return int.from_bytes(hashlib.sha256(b"sample:" + doc_id.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class DocSplit:
    """The validation predicate of one corpus: a hash threshold, plus the two corner cases of tiny corpora.

    A small corpus may have no document below the threshold (or only such documents); then the one with
    the lowest score is held out (or the one with the highest is kept for training), so both sides are
    non-empty whenever there are two documents. Only such corpora can see a document change sides, when
    documents are added and a natural validation document appears.
    """

    val_fraction: float
    forced_val: str | None = None
    forced_train: str | None = None
    documents: int = 0
    held_out: int = 0

    def is_val(self, doc_id: str) -> bool:
        if doc_id == self.forced_val:
            return True
        if doc_id == self.forced_train:
            return False
        return split_score(doc_id) < self.val_fraction

    @classmethod
    def scan(cls, doc_ids: Iterator[str] | Sequence[str], val_fraction: float) -> DocSplit:
        """One pass over the ids (a row per id; the parts of a split document share theirs)."""
        n = n_val = 0
        low: tuple[float, str] | None = None
        high: tuple[float, str] | None = None
        for doc_id in doc_ids:
            s = split_score(doc_id)
            n += 1
            n_val += s < val_fraction
            low = (s, doc_id) if low is None or s < low[0] else low
            high = (s, doc_id) if high is None or s > high[0] else high
        if n < 2 or low is None or high is None or low[1] == high[1]:
            raise TooFewDocumentsError(
                f"the corpus has {n} row(s) from {0 if low is None else 1 + (low != high)} document(s); at "
                "least 2 documents are needed to hold one out for validation (bits per byte on unseen "
                "text); add documents (more topics or sources in the collect section)"
            )
        forced_val = low[1] if n_val == 0 else None
        forced_train = high[1] if n_val == n else None
        held_out = 1 if forced_val else (n - 1 if forced_train else n_val)
        return cls(val_fraction, forced_val, forced_train, documents=n, held_out=held_out)


# -- reading the clean corpus -------------------------------------------------------------------------


def document_paths(clean: Artifact) -> list[Path]:
    """The clean artifact's `documents` shards, in order."""
    if DOCUMENTS_TABLE in clean.shards:
        return clean.shard_paths(DOCUMENTS_TABLE)
    raise FileNotFoundError(
        f"the {clean.phase} artifact at {clean.path} has no `{DOCUMENTS_TABLE}` shards; run the "
        "preprocess phase first (its clean documents are what the tokenizer reads)"
    )


def check_columns(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no clean corpus at {path}; run the preprocess phase first")
    missing = {"doc_id", "text"} - set(pq.read_schema(path).names)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}; expected the preprocess phase's schema")


def iter_documents(paths: Sequence[Path], batch_docs: int) -> Iterator[tuple[list[str], list[str]]]:
    """(doc_ids, texts) per record batch over every shard, in order: one batch in memory."""
    for path in paths:
        check_columns(path)
        for batch in iter_batches([path], ["doc_id", "text"], batch_docs):
            ids = batch.column("doc_id").to_pylist()
            texts = [t or "" for t in batch.column("text").to_pylist()]
            yield ids, texts


def iter_doc_ids(paths: Sequence[Path], batch_docs: int) -> Iterator[str]:
    """Every doc_id of these shards, in order (the texts are not read)."""
    for path in paths:
        check_columns(path)
        for batch in iter_batches([path], ["doc_id"], batch_docs):
            yield from batch.column("doc_id").to_pylist()


def iter_ids_and_chars(paths: Sequence[Path], batch_docs: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(doc_ids, characters per text) per record batch: the texts are measured in Arrow, never in Python."""
    for path in paths:
        check_columns(path)
        for batch in iter_batches([path], ["doc_id", "text"], batch_docs):
            chars = pc.fill_null(pc.utf8_length(batch.column("text")), 0).to_numpy(zero_copy_only=False)
            yield batch.column("doc_id").to_pylist(), chars.astype(np.int64)


# -- the tokenizer's sample ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Documents with `sample_score <= threshold` are in the sample (training side for training)."""

    threshold: float
    documents: int  # training-side documents in the sample
    characters: int


class _Lowest:
    """The `cap` lowest (score, chars) pairs seen so far, trimmed now and then: memory O(cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.scores: list[np.ndarray] = []
        self.chars: list[np.ndarray] = []
        self.held = 0

    def add(self, scores: np.ndarray, chars: np.ndarray) -> None:
        self.scores.append(scores)
        self.chars.append(chars)
        self.held += scores.size
        if self.held > 2 * self.cap:
            self.trim()

    def trim(self) -> tuple[np.ndarray, np.ndarray]:
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        chars = np.concatenate(self.chars) if self.chars else np.zeros(0, dtype=np.int64)
        order = np.argsort(scores, kind="stable")[: self.cap]
        self.scores, self.chars, self.held = [scores[order]], [chars[order]], order.size
        return scores[order], chars[order]


def choose_sample(
    paths: Sequence[Path], split: DocSplit, max_docs: int, max_chars: int, batch_docs: int
) -> Sample:
    """The sample threshold: the lowest-scoring training documents within both caps."""
    lowest = _Lowest(max_docs)
    for ids, chars in iter_ids_and_chars(paths, batch_docs):
        train = np.fromiter((not split.is_val(d) for d in ids), dtype=bool, count=len(ids))
        scores = np.fromiter((sample_score(d) for d in ids), dtype=np.float64, count=len(ids))
        lowest.add(scores[train], chars[train])
    scores, chars = lowest.trim()
    within = int(np.searchsorted(np.cumsum(chars), max_chars, side="right"))
    take = max(1, within) if scores.size else 0  # one document over the character cap still teaches
    threshold = float(scores[take - 1]) if take else -1.0
    return Sample(threshold, documents=take, characters=int(chars[:take].sum()))
