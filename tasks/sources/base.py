"""The one shape of a source: built from its config section, `collect(context)` gives (documents, summary).

`tasks.collect` loops over the switched-on sources and knows nothing of what each one does; a source
knows nothing of fingerprints, the data root or Prefect. What a source may need from the run comes in
a `SourceContext`: saved progress to resume from, the documents of the last artifact (so unchanged
pages are reused, not fetched again) and a logger. Its summary is a dataclass written to summary.json
under the source's name; the items that gave no document are its `failures`, listed per source in the
phase stats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tasks.sources.document import Document, read_documents
from tasks.sources.progress import ProgressLog


@dataclass(frozen=True)
class Failure:
    """An item (file, row, URL, article) that gave no document, and why."""

    title: str
    error: str


class SourceSummary:
    """Base of the per-source summary dataclasses: summary.json holds `as_dict()` under the source's name."""

    failures: Sequence[Failure]  # items that gave no document (each subclass declares it)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses


@dataclass(frozen=True)
class PreviousDocuments:
    """The documents of the last published artifact of this config, read only when a source asks."""

    path: Path | None = None

    def of_source(self, source: str) -> dict[str, Document]:
        """doc_id -> document, for the documents that `source` collected last time (empty without one)."""
        if self.path is None:
            return {}
        return {d.doc_id: d for d in read_documents(self.path) if d.source == source}


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class SourceContext:
    """What one collection run lends every source; the defaults remember nothing (no resume, no reuse)."""

    progress: ProgressLog = field(default_factory=lambda: ProgressLog(None))
    previous: PreviousDocuments = field(default_factory=PreviousDocuments)
    log: Callable[[str], None] = _quiet
    # (source name, pages done, pages planned) after each page a network source fetched: a progress bar
    pages: Callable[[str, int, int], None] = lambda _source, _done, _planned: None


class Source(Protocol):
    """A place documents come from (builtin, local, web, wikipedia, or any object of this shape)."""

    name: str  # the `source` column of its documents, and its key in summary.json
    remote: bool  # reads the network: finding nothing there may be a passing fault, so the phase retries

    def collect(self, ctx: SourceContext) -> tuple[list[Document], SourceSummary]:
        """Every document of this source, in a stable order, and what happened on the way."""
        ...
