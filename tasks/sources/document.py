"""The raw document record and its Parquet schema, shared by every source and by preprocessing.

One row per document: `doc_id` (a stable hash of source + title/url, so the same page keeps its id
across runs), `source`, `title`, `url`, `topic`, `revision_id` (Wikipedia only), `fetched_at` and
`text`. The schema is written explicitly so an empty or all-null column never changes type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DOCUMENTS_FILE = "documents.parquet"

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


def content_digest(docs: Iterable[Document]) -> str:
    """Hash of what was collected, ignoring when: equal content on two runs gives equal digests."""
    h = hashlib.sha256()
    rows = sorted(
        (d.doc_id, d.source, d.title, d.url or "", d.topic or "", d.revision_id or -1, text_digest(d.text))
        for d in docs
    )
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def write_table(path: Path, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> int:
    """Write rows (dicts) with an explicit schema; returns the row count."""
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    table = pa.Table.from_pydict(columns, schema=schema)
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def write_documents(path: Path, docs: Sequence[Document]) -> int:
    return write_table(path, [dataclasses.asdict(d) for d in docs], DOCUMENT_SCHEMA)


def read_documents(path: Path) -> list[Document]:
    table = pq.read_table(path, columns=DOCUMENT_SCHEMA.names)
    return [Document.from_record(row) for row in table.to_pylist()]
