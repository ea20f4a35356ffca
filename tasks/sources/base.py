"""The one shape of a source: built from its config section, `collect(context, out)` writes its documents
to `out` one at a time and returns its summary.

`tasks.collect` loops over the switched-on sources and knows nothing of what each one does; a source
knows nothing of fingerprints, the data root or Prefect. What a source may need from the run comes in
a `SourceContext`: saved progress to resume from, the documents of the last artifact (so unchanged
pages are reused, not fetched again) and a logger. Its summary is a dataclass written to summary.json
under the source's name; the items that gave no document are its `failures`, listed per source in the
phase stats.

A source whose input can be split up front (files on disk) may also be a `ShardedSource`: it plans
small picklable jobs, each read by a module-level function that writes its own shards, so the phase
runs them through its mapper (on Dask workers in the data flow) and a finished job is not done again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow.compute as pc

from tasks.sources.document import DOCUMENT_SCHEMA, Document
from tasks.sources.progress import ProgressLog
from tasks.sources.sink import DocumentSink, ShardPart
from tasks.storage.shards import iter_batches


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


class PreviousDocuments:
    """The document shards of the last published artifact of this config, streamed when a source asks.

    `shards` is the list of shard paths, or a function giving it: the phase passes a function, so the
    last artifact is found and checked only when a source reads it (a corpus of local files never does).
    """

    def __init__(self, shards: Sequence[Path] | Callable[[], Sequence[Path]] = ()) -> None:
        self._shards = shards

    @cached_property
    def paths(self) -> tuple[Path, ...]:
        return tuple(self._shards() if callable(self._shards) else self._shards)

    def _batches(self, source: str, columns: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
        for batch in iter_batches(self.paths, ["source", *[c for c in columns if c != "source"]]):
            yield batch.filter(pc.equal(batch["source"], source)).to_pylist()

    def revisions(self, source: str) -> dict[str, int | None]:
        """doc_id -> revision id of what `source` collected last time (empty without a last artifact)."""
        return {
            row["doc_id"]: row["revision_id"]
            for rows in self._batches(source, ["doc_id", "revision_id"])
            for row in rows
        }

    def documents(self, source: str, doc_ids: Container[str]) -> Iterator[Document]:
        """The documents of `source` whose id is in `doc_ids`, in the order they were stored."""
        for rows in self._batches(source, DOCUMENT_SCHEMA.names):
            yield from (Document.from_record(row) for row in rows if row["doc_id"] in doc_ids)


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

    def collect(self, ctx: SourceContext, out: DocumentSink) -> SourceSummary:
        """Write every document of this source to `out`, each doc_id once, in a stable order; say what
        happened on the way."""
        ...


class JobResult(Protocol):
    """What one job of a sharded source returns: its shards, and what it could not read."""

    part: ShardPart


@runtime_checkable
class ShardedSource(Protocol):
    """A source read as independent jobs; the phase runs `mapper(source.job, source.plan(...))`."""

    name: str
    remote: bool

    def plan(self, folder: Path, max_bytes: int) -> Sequence[Any]:
        """Small picklable jobs, each writing about one shard of `max_bytes` below `folder`."""
        ...

    @property
    def job(self) -> Callable[[Any], JobResult]:
        """The module-level function that runs one job (and returns a finished job's result again)."""
        ...

    def summarize(self, results: Sequence[Any]) -> SourceSummary:
        """The source's summary from every job's result."""
        ...
