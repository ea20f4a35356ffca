"""The reference: preprocessing as it was before it ran in stages over shards, whole corpus in memory.

Kept as the oracle the staged phase is checked against (same kept documents, same rejections): the
document steps run over every document, then exact dedup (a dict of content hashes) and near dedup
(datasketch `MinHashLSH` over `LeanMinHash`es, queried then filled one document at a time in input
order, so a document is dropped only when it matches an earlier KEPT one). Tests and
`benchmarks/bench_dedup.py` use it; the pipeline never does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from tasks.cleaning.config import PreprocessConfig, build_steps
from tasks.cleaning.dedup import MinHasher, dedup_key, signatures
from tasks.cleaning.filters import text_stats
from tasks.cleaning.pipeline import CleanDoc, Drop, Step, run_steps
from tasks.cleaning.split import split_text
from tasks.sources.document import Document


class ExactDedup:
    def __init__(self) -> None:
        self.first: dict[str, str] = {}  # content hash -> doc_id of the kept document

    def check(self, doc_id: str, text: str) -> str | None:
        """doc_id of an earlier identical document, or None (and this one is remembered)."""
        first = self.first.setdefault(dedup_key(text), doc_id)
        return None if first == doc_id else first


class NearDedup:
    """Near-duplicate detector: documents are checked once each, in the order in which to keep them."""

    def __init__(
        self,
        threshold: float = 0.7,
        num_perm: int = 128,
        shingle_size: int = 3,
        seed: int = 1,
        recall_weight: float = 0.9,
    ) -> None:
        self.threshold, self.shingle_size = threshold, shingle_size
        self.hasher = MinHasher(num_perm, seed)
        weights = (1.0 - recall_weight, recall_weight)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
        self.kept: dict[str, LeanMinHash] = {}

    def signatures(self, texts: Sequence[str]) -> Iterator[np.ndarray]:
        return signatures(texts, self.hasher, self.shingle_size)

    def check_signature(self, doc_id: str, signature: np.ndarray) -> tuple[str, float] | None:
        """(doc_id of the kept near-duplicate, estimated Jaccard) or None, and then this one is kept."""
        m = LeanMinHash(seed=self.hasher.seed, hashvalues=signature, scheme="affine32")
        best: tuple[str, float] | None = None
        for candidate in self.lsh.query(m):
            similarity = m.jaccard(self.kept[candidate])
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (candidate, similarity)
        if best is None:
            self.lsh.insert(doc_id, m)
            self.kept[doc_id] = m
        return best

    def check(self, doc_id: str, text: str) -> tuple[str, float] | None:
        return self.check_signature(doc_id, next(self.signatures([text])))

    def run(self, docs: Sequence[tuple[str, str]]) -> dict[str, tuple[str, float]]:
        """doc_id -> (kept doc_id, similarity) for every near-duplicate among (doc_id, text) pairs."""
        found = {}
        for (doc_id, _), signature in zip(docs, self.signatures([t for _, t in docs]), strict=True):
            match = self.check_signature(doc_id, signature)
            if match is not None:
                found[doc_id] = match
        return found


class ExactDuplicates(Step):
    name = "exact_duplicate"

    def __init__(self) -> None:
        self.seen = ExactDedup()

    def __call__(self, doc: CleanDoc) -> CleanDoc | Drop:
        first = self.seen.check(doc.doc_id, doc.text)
        if first is None:
            return doc
        return Drop(self.name, "same text", duplicate_of=first, similarity=1.0)


class NearDuplicates(Step):
    name = "near_duplicate"

    def __init__(self, dedup: NearDedup) -> None:
        self.dedup = dedup
        self._signatures: Iterator[tuple[str, np.ndarray]] = iter(())

    def prepare(self, docs: Sequence[CleanDoc]) -> None:
        ids = [d.doc_id for d in docs]
        self._signatures = zip(ids, self.dedup.signatures([d.text for d in docs]), strict=True)

    def __call__(self, doc: CleanDoc) -> CleanDoc | Drop:
        doc_id, signature = next(self._signatures)
        if doc_id != doc.doc_id:
            raise RuntimeError(f"near dedup prepared for {doc_id} but asked about {doc.doc_id}")
        match = self.dedup.check_signature(doc.doc_id, signature)
        if match is None:
            return doc
        kept, similarity = match
        return Drop(
            self.name,
            f"estimated Jaccard {similarity:.2f} >= {self.dedup.threshold}",
            duplicate_of=kept,
            similarity=round(similarity, 4),
        )


def oracle_steps(cfg: PreprocessConfig) -> list[Step]:
    steps = build_steps(cfg)
    if cfg.exact_dedup:
        steps.append(ExactDuplicates())
    if cfg.near_dedup:
        near = NearDedup(
            cfg.threshold, cfg.num_perm, cfg.shingle_size, cfg.minhash_seed, cfg.lsh_recall_weight
        )
        steps.append(NearDuplicates(near))
    return steps


@dataclass
class OracleResult:
    rows: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    rejected_by_rule: dict[str, int]
    chars_normalized: int


def clean_documents(raw: list[Document], cfg: PreprocessConfig) -> OracleResult:
    """The whole preprocessing over in-memory documents: clean rows, rejected rows, step counts."""
    run = run_steps(oracle_steps(cfg), [CleanDoc(d) for d in raw])
    rows = []
    for doc in run.kept:
        parts = split_text(doc.text, cfg.max_chars) if cfg.long_documents == "split" else [doc.text]
        for k, part in enumerate(parts):
            part_stats = doc.stats if len(parts) == 1 else text_stats(part)
            rows.append({**asdict(doc.doc), "text": part, "part": k, **part_stats.as_dict()})
    by_rule = dict(Counter(r["rule"] for r in run.rejected))
    return OracleResult(rows, run.rejected, run.stage_rows(), by_rule, run.stage("normalize").chars_out)
