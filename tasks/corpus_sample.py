"""Which clean documents the tokenizer and encode phases read: the validation split and a capped sample.

The split is a pure function of each `doc_id` (a hash compared to `val_fraction`), so a document stays
on its side across rebuilds however the corpus grows, and a shard can be split on its own, on any
worker, from a `DocSplit` of a few fields: nothing holds the set of every id.

The tokenizer learns from a sample: the training-side documents with the lowest `sample_score` (a second
hash of the doc_id, independent of the split), as many as fit under `max_docs` documents and `max_chars`
characters. Its report reads a smaller sample the same way, from both sides of the split. A hash draws
across the whole corpus (every shard, every source) rather than its first N documents, and the same
corpus always gives the same sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.storage.artifacts import Artifact
from tasks.storage.shards import iter_batches

DOCUMENTS_TABLE = "documents"
# One match per line holding a non-space character: the lines the tokenizer trains on (a blank line is not).
NONBLANK_LINE = r"[^\n]*\S[^\n]*"


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


def iter_measured(paths: Sequence[Path], batch_docs: int) -> Iterator[tuple[list[str], pa.Array]]:
    """(doc_ids, texts as an Arrow array) per record batch, for measuring the texts in Arrow."""
    for path in paths:
        check_columns(path)
        for batch in iter_batches([path], ["doc_id", "text"], batch_docs):
            yield batch.column("doc_id").to_pylist(), batch.column("text")


def _count(texts: pa.Array, what: str) -> np.ndarray:
    counted = pc.utf8_length(texts) if what == "chars" else pc.count_substring_regex(texts, NONBLANK_LINE)
    return pc.fill_null(counted, 0).to_numpy(zero_copy_only=False).astype(np.int64)


# -- the tokenizer's sample ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Documents with `sample_score <= threshold` are in the sample (training side for training)."""

    threshold: float
    documents: int  # documents of the sampled sides in the sample
    characters: int
    lines: int = 0  # their non-blank lines (counted when the sample has a line cap)


class _Lowest:
    """The lowest-scoring documents seen so far, as many as the caps can still take: memory O(cap).

    Trimmed now and then; once a cap binds, `cutoff` is the score of the first document left out, and
    nothing scoring above it can ever be sampled, so the caller measures only the documents below it.
    """

    def __init__(self, max_docs: int, caps: dict[str, int]) -> None:
        self.max_docs, self.caps, self.cutoff = max_docs, caps, np.inf
        self.scores: list[np.ndarray] = []
        self.sizes: dict[str, list[np.ndarray]] = {k: [] for k in caps}
        self.held = 0
        self.totals = dict.fromkeys(caps, 0)

    def add(self, scores: np.ndarray, sizes: dict[str, np.ndarray]) -> None:
        self.scores.append(scores)
        self.held += scores.size
        for k, v in sizes.items():
            self.sizes[k].append(v)
            self.totals[k] += int(v.sum())
        if self.held > 2 * self.max_docs or any(self.totals[k] > 2 * c for k, c in self.caps.items()):
            self.trim()

    def trim(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The documents within every cap, lowest score first (at least one: it still teaches)."""
        scores = np.concatenate([np.zeros(0), *self.scores])
        order = np.argsort(scores, kind="stable")
        sizes = {k: np.concatenate([np.zeros(0, np.int64), *v])[order] for k, v in self.sizes.items()}
        fits = [int(np.searchsorted(np.cumsum(sizes[k]), c, side="right")) for k, c in self.caps.items()]
        take = min(order.size, self.max_docs, *fits)
        take = max(1, take) if order.size else 0
        if take < order.size:  # the first document left out bounds every later one: the sample is a prefix
            self.cutoff = float(scores[order[take]])
        self.scores, self.sizes = [scores[order[:take]]], {k: [v[:take]] for k, v in sizes.items()}
        self.held, self.totals = take, {k: int(v[:take].sum()) for k, v in sizes.items()}
        return self.scores[0], {k: v[0] for k, v in self.sizes.items()}


def choose_sample(
    paths: Sequence[Path],
    split: DocSplit,
    max_docs: int,
    max_chars: int,
    batch_docs: int,
    *,
    max_lines: int | None = None,
    train_only: bool = True,
) -> Sample:
    """The lowest-scoring training documents (or documents of both sides) within every cap, in one pass.

    `max_lines` caps the non-blank lines: SentencePiece draws its own subset of the lines it is given past
    `input_sentence_size`, and that draw is not reproducible (seeded from the system's entropy), so a
    sample that stays under it keeps the vocabulary a function of the corpus.
    """
    caps = {"chars": max_chars} | ({"lines": max_lines} if max_lines is not None else {})
    lowest = _Lowest(max_docs, caps)
    for ids, texts in iter_measured(paths, batch_docs):
        scores = np.fromiter((sample_score(d) for d in ids), dtype=np.float64, count=len(ids))
        side = np.fromiter((not (train_only and split.is_val(d)) for d in ids), dtype=bool, count=len(ids))
        keep = side & (scores < lowest.cutoff)
        if keep.any():
            kept = texts.filter(pa.array(keep))
            lowest.add(scores[keep], {k: _count(kept, k) for k in caps})
    scores, sizes = lowest.trim()
    threshold = float(scores[-1]) if scores.size else -1.0
    lines = int(sizes["lines"].sum()) if "lines" in sizes else 0
    return Sample(threshold, documents=scores.size, characters=int(sizes["chars"].sum()), lines=lines)
