"""The cleaning steps: normalisation, the empty check, each quality filter, exact and near dedup.

Each is a small `Step` (`tasks.cleaning.pipeline`) around the pure text-level pieces beside it
(`normalize`, `filters`, `dedup`), which stay usable and testable on plain strings. The rule names
here are the ones recorded in the rejected table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np

from tasks.cleaning.dedup import ExactDedup, NearDedup
from tasks.cleaning.filters import Filter, first_rejection
from tasks.cleaning.normalize import normalize
from tasks.cleaning.pipeline import CleanDoc, Drop, Step


class Normalize(Step):
    """NFKC and whitespace for every document; Wikipedia clean-up only for the sources listed.

    Rewrites the text and never drops: a document left without text is `NonEmpty`'s to drop.
    """

    name = "normalize"
    drops = False

    def __init__(self, wikipedia_cleanup_sources: Sequence[str], appendix: re.Pattern[str] | None) -> None:
        self.cleanup = frozenset(wikipedia_cleanup_sources)
        self.appendix = appendix

    def __call__(self, doc: CleanDoc) -> CleanDoc:
        cleanup = doc.doc.source in self.cleanup
        return doc.with_text(normalize(doc.text, wikipedia_cleanup=cleanup, appendix=self.appendix))


class NonEmpty(Step):
    name = "empty"

    def __call__(self, doc: CleanDoc) -> CleanDoc | Drop:
        return doc if doc.text.strip() else Drop(self.name, "no text left")


class QualityFilter(Step):
    """One quality filter (a datatrove-style keep-or-(False, reason) verdict on the text statistics)."""

    def __init__(self, rule: Filter) -> None:
        self.rule = rule
        self.name = rule.name

    def __call__(self, doc: CleanDoc) -> CleanDoc | Drop:
        rejection = first_rejection([self.rule], doc.stats)
        return doc if rejection is None else Drop(*rejection)


class ExactDuplicates(Step):
    """Drops a document whose text equals an earlier kept one's (up to case and spacing)."""

    name = "exact_duplicate"

    def __init__(self) -> None:
        self.seen = ExactDedup()

    def __call__(self, doc: CleanDoc) -> CleanDoc | Drop:
        first = self.seen.check(doc.doc_id, doc.text)
        if first is None:
            return doc
        return Drop(self.name, "same text", duplicate_of=first, similarity=1.0)


class NearDuplicates(Step):
    """Drops a near-duplicate (MinHash LSH) of an earlier kept document.

    `prepare` starts the batched signature computation (numpy, batch by batch as the calls consume it);
    each call then takes the next signature, so the calls must come in the order prepared.
    """

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
