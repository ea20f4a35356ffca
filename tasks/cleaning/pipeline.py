"""The one shape of a cleaning step, and the loop that runs a list of them over the documents.

As in datatrove, a document flows through small steps in order. A step looks at one document and
keeps it (the same, or changed: the normaliser rewrites the text) or drops it with a `Drop` naming
the rule and the reason. The loop counts every step's documents in, dropped and out, and turns every
drop into a row of the rejected table, so each dropped document can be audited. The phase runs the
steps over one record batch of one shard at a time (`tasks.cleaning.shard_jobs`); a step that works
faster on many documents at once is shown the batch before its first document (`prepare`). What needs
the whole corpus (dedup) is not a step but a stage over shards (`tasks.cleaning.dedup_stages`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tasks.cleaning.filters import TextStats, text_stats
from tasks.sources.document import Document


@dataclass
class CleanDoc:
    """A raw document on its way through the steps: its text is the current text, with its statistics."""

    doc: Document
    _stats: TextStats | None = field(default=None, repr=False)

    @property
    def doc_id(self) -> str:
        return self.doc.doc_id

    @property
    def text(self) -> str:
        return self.doc.text

    @property
    def stats(self) -> TextStats:
        """Computed once, on first use, and shared by every filter after it (and by the clean row)."""
        if self._stats is None:
            self._stats = text_stats(self.doc.text)
        return self._stats

    def with_text(self, text: str) -> CleanDoc:
        return CleanDoc(dataclasses.replace(self.doc, text=text))


@dataclass(frozen=True)
class Drop:
    """Why a step dropped a document: the rule (a step's name) and a human-readable detail."""

    rule: str
    detail: str
    duplicate_of: str | None = None  # dedup: the kept document this one duplicates
    similarity: float | None = None

    def row(self, doc: CleanDoc) -> dict[str, Any]:
        """The document's row in the rejected table (its length is that of the text the step saw)."""
        return {
            "doc_id": doc.doc_id,
            "source": doc.doc.source,
            "title": doc.doc.title,
            "url": doc.doc.url,
            "n_chars": len(doc.text),
            **dataclasses.asdict(self),
        }


class Step(ABC):
    """One cleaning step. `name` is the rule of its drops and its row in the report's step table."""

    name: str
    drops: ClassVar[bool] = True  # False for a step that only rewrites text: it has no row in the table

    def prepare(self, docs: Sequence[CleanDoc]) -> None:  # noqa: B027  (a hook: most steps need nothing)
        """Called with each batch of documents (one shard's, in order) before the first call on it."""

    @abstractmethod
    def __call__(self, doc: CleanDoc) -> CleanDoc | Drop:
        """Keep the document (the same or a changed one), or drop it with the reason."""


@dataclass
class Stage:
    """One step's count of documents in, dropped and out, and the characters it passed on."""

    name: str
    drops: bool
    n_in: int = 0
    dropped: int = 0
    chars_out: int = 0

    def row(self) -> dict[str, Any]:
        return {"stage": self.name, "in": self.n_in, "dropped": self.dropped, "out": self.n_in - self.dropped}


@dataclass
class StepsRun:
    """What is left after the steps, the rejected rows in the order of their drops, and the counts."""

    kept: list[CleanDoc]
    rejected: list[dict[str, Any]]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def stage_rows(self) -> list[dict[str, Any]]:
        """The report's step table: documents in, dropped and out for each step that can drop."""
        return [s.row() for s in self.stages if s.drops]


def run_steps(steps: Sequence[Step], docs: list[CleanDoc]) -> StepsRun:
    """Apply the steps in order; a document dropped by one step is not shown to the next."""
    rejected: list[dict[str, Any]] = []
    stages: list[Stage] = []
    for step in steps:
        stage = Stage(step.name, step.drops, n_in=len(docs))
        step.prepare(docs)
        kept = []
        for doc in docs:
            verdict = step(doc)
            if isinstance(verdict, Drop):
                stage.dropped += 1
                rejected.append(verdict.row(doc))
            else:
                kept.append(verdict)
                stage.chars_out += len(verdict.text)
        docs = kept
        stages.append(stage)
    return StepsRun(docs, rejected, stages)
