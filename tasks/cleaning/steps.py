"""The per-document cleaning steps: normalisation, the empty check, each quality filter.

Each is a small `Step` (`tasks.cleaning.pipeline`) around the pure text-level pieces beside it
(`normalize`, `filters`), which stay usable and testable on plain strings. The rule names here are the
ones recorded in the rejected table. Exact and near dedup need the whole corpus: they are stages over
shards (`tasks.cleaning.dedup_stages`), with rules `exact_duplicate` and `near_duplicate`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
