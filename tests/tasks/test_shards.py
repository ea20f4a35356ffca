"""Sharded tables: names are the contract, shards roll at their size, a failed writer leaves no shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tasks.storage.artifacts import ArtifactError, publish
from tasks.storage.shards import ShardWriter, count_rows, iter_batches, shard_name, shard_tables

SCHEMA = pa.schema([pa.field("doc_id", pa.string()), pa.field("text", pa.large_string())])


def rows(n: int, width: int = 100) -> list[dict[str, str]]:
    return [{"doc_id": f"d{i:04d}", "text": f"{i} " + "x" * width} for i in range(n)]


def test_names_are_grouped_by_table_in_index_order() -> None:
    names = ["documents-00010.parquet", "manifest.json", "documents-00002.parquet", "rejected-00000.parquet"]
    assert shard_tables(names) == {
        "documents": ["documents-00002.parquet", "documents-00010.parquet"],
        "rejected": ["rejected-00000.parquet"],
    }
    assert shard_tables(["../documents-00000.parquet", "Documents-00000.parquet", "a/b-00000.parquet"]) == {}
    with pytest.raises(ValueError, match="not a shard name"):
        shard_name("Bad Table", 0)


def test_shards_roll_at_their_size_and_read_back_in_order(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "documents", SCHEMA, max_bytes=20_000, row_group_rows=16) as writer:
        writer.write_rows(rows(1000))
    assert len(writer.names) > 3 and writer.rows == 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == writer.names  # no temporary file left
    paths = [tmp_path / n for n in writer.names]
    assert count_rows(paths) == 1000
    ids = [i for batch in iter_batches(paths, ["doc_id"], batch_rows=64) for i in batch.column(0).to_pylist()]
    assert ids == [r["doc_id"] for r in rows(1000)]


def test_a_writer_that_fails_leaves_only_whole_shards(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "documents", SCHEMA, max_bytes=20_000) as w:
        w.write_rows(rows(300))
        w.write_rows(rows(10))
        raise RuntimeError("killed")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == w.names[:-1]  # the shard open at the failure never appears under its name
    assert all(not name.startswith(".") for name in left)


def test_the_manifest_lists_each_tables_shards(tmp_path: Path) -> None:
    def build(out: Path) -> dict:
        with ShardWriter(out, "documents", SCHEMA, max_bytes=5_000, row_group_rows=16) as writer:
            writer.write_table(pa.Table.from_pylist(rows(200), schema=SCHEMA))
        (out / "report.json").write_text("{}")
        return {}

    artifact = publish(tmp_path / "root", "preprocess", "f" * 20, build)
    assert list(artifact.shards) == ["documents"] and len(artifact.shards["documents"]) > 1
    assert [p.name for p in artifact.shard_paths("documents")] == artifact.shards["documents"]
    assert count_rows(artifact.shard_paths("documents")) == 200
    with pytest.raises(ArtifactError, match="no sharded table 'tokens'"):
        artifact.shard_paths("tokens")
