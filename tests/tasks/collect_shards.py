"""A collect artifact with its `documents` table in N shards, as the sharded collect phase publishes it.

Lets the preprocess tests choose how a corpus is cut into shards (duplicates across shard borders,
one shard, many) without running a source.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from tasks.sources.document import DOCUMENT_SCHEMA, Document, content_digest
from tasks.storage.artifacts import Artifact, publish
from tasks.storage.shards import ShardWriter

ONE_SHARD = 1 << 40  # bytes: a group of documents never rolls over into a second file


def publish_collect(root: Path, docs: list[Document], n_shards: int) -> Artifact:
    """`docs` in order, cut into `n_shards` runs of near-equal length, one `documents-NNNNN.parquet` each."""
    if not 1 <= n_shards <= max(len(docs), 1):
        raise ValueError(f"cannot cut {len(docs)} documents into {n_shards} shards")
    fingerprint = hashlib.sha256(f"{content_digest(docs)}/{n_shards}".encode()).hexdigest()[:20]
    bounds = [round(k * len(docs) / n_shards) for k in range(n_shards + 1)]

    def build(staging: Path) -> dict[str, int]:
        for k in range(n_shards):
            rows = [dataclasses.asdict(d) for d in docs[bounds[k] : bounds[k + 1]]]
            with ShardWriter(staging, "documents", DOCUMENT_SCHEMA, max_bytes=ONE_SHARD, first_index=k) as w:
                w.write_rows(rows)
        return {"documents": len(docs)}

    return publish(root, "collect", fingerprint, build)


def read_rows(artifact: Artifact, table: str) -> list[dict]:
    """Every row of one sharded table of an artifact, in order."""
    return [row for path in artifact.shard_paths(table) for row in pq.read_table(path).to_pylist()]
