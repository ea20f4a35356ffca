"""Sharded tables: one table as many Parquet files, written as rows stream in, read a batch at a time.

A phase whose output grows with the corpus (documents, rejected documents, token rows) never holds it
whole: it writes `<table>-<NNNNN>.parquet` files of at most `max_bytes` of uncompressed Arrow data,
each renamed into place only when complete, and readers stream them with `iter_batches`. The manifest
lists every table's shards in order (`Artifact.shards`, derived from these names by `shard_tables`), so
the names are the contract between phases, the store sync and the manifest checks:

- a shard's name is `<table>-<index>.<ext>`: table in lower case, index five digits from 00000, flat in
  the artifact's folder (no sub-folders);
- the order of a table is the order of its indices, which is the order its rows were written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tinyllama_model.files import atomic_path

SHARD_NAME = re.compile(r"^(?P<table>[a-z][a-z0-9_]*)-(?P<index>\d{5})\.(?P<ext>parquet|bin|npy)$")
COMPRESSION = "zstd"


def shard_name(table: str, index: int, ext: str = "parquet") -> str:
    """The file name of shard `index` of `table`, e.g. `documents-00003.parquet`."""
    name = f"{table}-{index:05d}.{ext}"
    if not SHARD_NAME.match(name):
        raise ValueError(f"{name!r} is not a shard name (table [a-z][a-z0-9_]*, index 0-99999)")
    return name


def shard_tables(names: Iterable[str]) -> dict[str, list[str]]:
    """Group file names that are shard names by table, each list in index order; other names are left out."""
    found: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        if m := SHARD_NAME.match(name):
            found.setdefault(m["table"], []).append((int(m["index"]), name))
    return {table: [n for _, n in sorted(items)] for table, items in sorted(found.items())}


class ShardWriter:
    """Rows in, `<table>-NNNNN.parquet` files out, a new file each time one reaches `max_bytes`.

    Each shard is written under a temporary name and renamed when it is closed, so a killed writer leaves
    only whole shards. Memory holds one row group (`row_group_rows` rows) at a time, not a shard.
    """

    def __init__(
        self,
        folder: Path,
        table: str,
        schema: pa.Schema,
        *,
        max_bytes: int,
        first_index: int = 0,
        row_group_rows: int = 1024,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.folder, self.table, self.schema = Path(folder), table, schema
        self.max_bytes, self.row_group_rows = max_bytes, row_group_rows
        self.index = first_index
        self.names: list[str] = []
        self.rows = 0
        self._pending: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._atomic: Any = None
        self._bytes = 0

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._pending.append(dict(row))
            if len(self._pending) >= self.row_group_rows:
                self._flush()

    def write_table(self, table: pa.Table | pa.RecordBatch) -> None:
        """Append Arrow data with this writer's schema (the pending rows go first, to keep the order)."""
        self._flush()
        whole = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
        for batch in whole.to_batches(max_chunksize=self.row_group_rows):  # so a shard can roll inside it
            self._write(pa.Table.from_batches([batch]))

    def close(self) -> list[str]:
        """Finish the last shard; returns the names of every shard written, in order."""
        self._flush()
        self._roll()
        return self.names

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # an error: the open shard is dropped, never renamed into place
            self._writer.close()
            self._atomic.__exit__(exc_type, exc, tb)
            self._writer = None

    def _flush(self) -> None:
        if self._pending:
            columns = {name: [row.get(name) for row in self._pending] for name in self.schema.names}
            self._pending = []
            self._write(pa.Table.from_pydict(columns, schema=self.schema))

    def _write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            name = shard_name(self.table, self.index)
            self._atomic = atomic_path(self.folder / name)
            tmp = self._atomic.__enter__()
            self._writer = pq.ParquetWriter(tmp, self.schema, compression=COMPRESSION)
            self.names.append(name)
            self.index += 1
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows
        self._bytes += table.nbytes
        if self._bytes >= self.max_bytes:
            self._roll()

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._atomic.__exit__(None, None, None)
            self._writer, self._atomic, self._bytes = None, None, 0


def iter_batches(
    paths: Sequence[Path], columns: Sequence[str] | None = None, batch_rows: int = 1024
) -> Iterator[pa.RecordBatch]:
    """Every row of these shards, in order, `batch_rows` at a time: one batch in memory, not a shard."""
    for path in paths:
        with pq.ParquetFile(path) as f:
            yield from f.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)


def count_rows(paths: Sequence[Path]) -> int:
    """Rows in these shards, from their footers (nothing else is read)."""
    total = 0
    for path in paths:
        with pq.ParquetFile(path) as f:
            total += f.metadata.num_rows
    return total
