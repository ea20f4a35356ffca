"""Where a source's documents go: shards in a work folder, digested and counted as they pass.

A source never returns its documents: it hands each one to a `DocumentSink` as it reads or fetches it,
so memory holds a row group, not a corpus. `DocumentShards` is the sink the collect phase gives: it
writes `documents-NNNNN.parquet` shards through `tasks.storage.shards.ShardWriter` and, when closed,
describes them as a `ShardPart` (names, counts, the order-free content digest), small enough to come
back from a job on another machine. The phase lays the parts end to end in the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.sources.document import DOCUMENT_SCHEMA, DOCUMENTS_TABLE, ContentDigest, Document, document_row
from tasks.storage.shards import ShardWriter


class DocumentSink(Protocol):
    """What a source writes its documents to, one at a time."""

    def write(self, doc: Document) -> None: ...


@dataclass(frozen=True)
class ShardPart:
    """Shards one writer left in `folder`, in order, with what they hold."""

    folder: str
    names: tuple[str, ...]
    documents: int
    characters: int
    digest: ContentDigest

    def paths(self) -> list[Path]:
        return [Path(self.folder) / name for name in self.names]

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "names": list(self.names),
            "documents": self.documents,
            "characters": self.characters,
            "digest": self.digest.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardPart:
        return cls(
            folder=str(data["folder"]),
            names=tuple(data["names"]),
            documents=int(data["documents"]),
            characters=int(data["characters"]),
            digest=ContentDigest.from_json(data["digest"]),
        )


class DocumentShards:
    """A `DocumentSink` writing shards of at most `max_bytes` (uncompressed) into `folder`.

    Used as a context manager whose body ends with `close()`: on an error the open shard is dropped,
    never renamed into place.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writer = ShardWriter(self.folder, DOCUMENTS_TABLE, DOCUMENT_SCHEMA, max_bytes=max_bytes)
        self.digest = ContentDigest()
        self.characters = 0

    @property
    def documents(self) -> int:
        return self.digest.count

    def write(self, doc: Document) -> None:
        self._writer.write_rows([document_row(doc)])
        self.digest.add(doc)
        self.characters += len(doc.text)

    def close(self) -> ShardPart:
        names = self._writer.close()
        return ShardPart(str(self.folder), tuple(names), self.documents, self.characters, self.digest)

    def __enter__(self) -> DocumentShards:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._writer.__exit__(exc_type, exc, tb)
