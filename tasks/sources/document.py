"""The raw document record and its Parquet schema, shared by every source and by preprocessing.

One row per document: `doc_id` (a stable hash of source + title/url, so the same page keeps its id
across runs), `source`, `title`, `url`, `topic`, `revision_id` (Wikipedia only), `fetched_at` and
`text`. The schema is written explicitly so an empty or all-null column never changes type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

DOCUMENTS_TABLE = "documents"  # collect's output: documents-00000.parquet, ... (tasks.storage.shards)

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("url", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("revision_id", pa.int64()),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
        pa.field("text", pa.large_string(), nullable=False),
    ]
)


@dataclasses.dataclass
class Document:
    doc_id: str
    source: str
    title: str
    text: str
    url: str | None = None
    topic: str | None = None
    revision_id: int | None = None
    fetched_at: datetime = dataclasses.field(default_factory=lambda: datetime.now(timezone.utc))

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict for progress files (the timestamp as an ISO string)."""
        record = dataclasses.asdict(self)
        record["fetched_at"] = self.fetched_at.isoformat()
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Document:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in fields}
        fetched = values.get("fetched_at")
        if isinstance(fetched, str):
            values["fetched_at"] = datetime.fromisoformat(fetched)
        elif fetched is None:
            values.pop("fetched_at", None)
        return cls(**values)


def make_doc_id(source: str, key: str) -> str:
    """Stable id of a document: the same source and title/url give the same id on every run."""
    return hashlib.sha256(f"{source}\n{key}".encode()).hexdigest()[:16]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


DIGEST_MODULUS = 2**256  # the row digests are SHA-256 values, summed in their own width


def row_digest(doc: Document) -> int:
    """SHA-256 of what identifies a document's content (not when it was fetched), as an integer."""
    row = (doc.doc_id, doc.source, doc.title, doc.url or "", doc.topic or "", doc.revision_id or -1)
    line = json.dumps([*row, text_digest(doc.text)], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(line.encode("utf-8", "surrogatepass")).digest(), "big")


@dataclasses.dataclass
class ContentDigest:
    """Hash of a set of documents that does not depend on their order: the sum of their row digests.

    Addition commutes, so each job digests its own shards and the phase adds the parts up in whatever
    order the jobs finished: the same documents give the same digest however they were sharded. The
    count goes in too, so the empty set and a set whose digests sum to zero differ.
    """

    count: int = 0
    total: int = 0

    def add(self, doc: Document) -> None:
        self.count += 1
        self.total = (self.total + row_digest(doc)) % DIGEST_MODULUS

    def merge(self, other: ContentDigest) -> ContentDigest:
        return ContentDigest(self.count + other.count, (self.total + other.total) % DIGEST_MODULUS)

    def hexdigest(self) -> str:
        return hashlib.sha256(f"{self.count}:{self.total:064x}".encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "total": f"{self.total:064x}"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContentDigest:
        return cls(int(data["count"]), int(data["total"], 16))


def content_digest(docs: Iterable[Document]) -> str:
    """Hash of what was collected, ignoring when and in which order: equal content gives equal digests."""
    digest = ContentDigest()
    for doc in docs:
        digest.add(doc)
    return digest.hexdigest()


def document_row(doc: Document) -> dict[str, Any]:
    """The document as a row of DOCUMENT_SCHEMA."""
    return {name: getattr(doc, name) for name in DOCUMENT_SCHEMA.names}
