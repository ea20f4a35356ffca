"""Exact and near dedup as stages with their state on disk, so memory holds one shard or one partition.

The shape is datatrove's MinHash pipeline (signatures -> buckets -> cluster -> filter) and NeMo
Curator's: the per-shard job (`tasks.cleaning.shard_jobs.prepare_shard`) writes, for every document
that passed the filters, its position `(shard << 32) | row`, its exact key and its LSH band keys into
files of its own, each file cut into `n_parts` partitions by key (one Parquet row group per partition,
so a reader of one partition skips the others by their statistics). Then:

  exact_partition   one partition of exact keys from every shard: in each group of equal keys the first
                    position is kept, the others are written to `exact_drops-<p>` with the kept doc_id
  pair_partition    one partition of band keys from every shard: documents sharing a band key are LSH
                    candidates; each candidate pair (earlier j, later i) is verified by its estimated
                    Jaccard similarity (signatures read back from the two shards' `sig-<s>.npy`), a
                    chunk of pairs at a time, and those at or above the threshold are written to
                    `pairs-<p>`, sorted by (i, j). Time grows with the square of a bucket's size: a
                    bucket of k near-copies of one text is k(k-1)/2 pairs to verify
  keep_first        the driver merges the sorted pair files and walks them in document order: i is
                    dropped when one of its partners j is still kept, naming the most similar such j
                    (ties: the earliest). This is the in-memory index's rule exactly (a document is a
                    duplicate of an earlier KEPT one), not connected components: with A~B, B~C and A
                    not ~C, B goes and C stays. Its state is one bit per document and a merge heap
  filter pass       each shard drops its rows named in the drop files (`tasks.cleaning.shard_jobs`)

Exact duplicates are left out of the near stage as the in-memory steps did (exact dedup ran first):
equal texts have equal signatures, so they share every bucket, and within a bucket only the first
position of each exact key takes part. Band keys are 64-bit hashes of the band's values, so a bucket
is equal bands up to a hash collision (odds 2^-64 per pair and band).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.cleaning.dedup import jaccard
from tinyllama_model.files import atomic_path

ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1
DROP_ROW_GROUP = 1 << 16  # rows per row group of a drop file, so one shard's reader skips the rest
PAIR_CHUNK = 1 << 20  # candidate pairs verified at a time (a bucket's pairs grow with its size squared)
PAIR_ROWS = 1 << 13  # rows per row group and read batch of a pair file: the merge holds one per partition

EXACT_SCHEMA = pa.schema(
    [
        pa.field("part", pa.int32()),
        *(pa.field(f"k{i}", pa.uint64()) for i in range(4)),
        pa.field("pos", pa.int64()),
        pa.field("doc_id", pa.string()),
    ]
)
BUCKET_SCHEMA = pa.schema(
    [
        pa.field("part", pa.int32()),
        pa.field("band_key", pa.uint64()),
        pa.field("pos", pa.int64()),
        pa.field("exact", pa.uint64()),
    ]
)
PAIR_SCHEMA = pa.schema(
    [
        pa.field("i", pa.int64()),
        pa.field("j", pa.int64()),
        pa.field("similarity", pa.float64()),
        pa.field("duplicate_of", pa.string()),
    ]
)
DROP_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.int32()),
        pa.field("row", pa.int64()),
        pa.field("duplicate_of", pa.string()),
        pa.field("similarity", pa.float64()),
    ]
)


def sig_file(work: Path, shard: int) -> Path:
    return work / f"sig-{shard:05d}.npy"


def exact_file(work: Path, shard: int) -> Path:
    return work / f"exact-{shard:05d}.parquet"


def bucket_file(work: Path, shard: int) -> Path:
    return work / f"buckets-{shard:05d}.parquet"


def exact_drops_file(work: Path, part: int) -> Path:
    return work / f"exact_drops-{part:05d}.parquet"


def pairs_file(work: Path, part: int) -> Path:
    return work / f"pairs-{part:05d}.parquet"


def near_drops_file(work: Path) -> Path:
    return work / "near_drops.parquet"


def survivors_file(work: Path, shard: int) -> Path:
    return work / f"survivors-{shard:05d}.parquet"


def positions(shard: int, n: int) -> np.ndarray:
    return (np.int64(shard) << ROW_BITS) + np.arange(n, dtype=np.int64)


def write_partitioned(path: Path, table: pa.Table) -> None:
    """`table` sorted by its `part` column, one row group (or more) per partition, written whole or not."""
    table = table.sort_by("part")
    parts = table.column("part").to_numpy()
    bounds = np.flatnonzero(np.r_[True, parts[1:] != parts[:-1], True]) if len(parts) else [0]
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, table.schema) as writer:
        for start, end in itertools.pairwise(bounds):
            writer.write_table(table.slice(start, end - start))
        if not len(parts):
            writer.write_table(table)


def read_partition(paths: Sequence[Path], part: int, columns: list[str]) -> pa.Table:
    """One partition's rows from every shard's partitioned file (the other row groups are not read)."""
    tables = [pq.read_table(p, columns=columns, filters=[("part", "==", part)]) for p in paths]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def write_drops(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=DROP_ROW_GROUP)


def read_drops(paths: Sequence[Path], shard: int) -> dict[int, tuple[str, float]]:
    """row -> (kept doc_id, similarity) for one shard, from drop files sorted by position."""
    out: dict[int, tuple[str, float]] = {}
    for path in paths:
        t = pq.read_table(path, filters=[("shard", "==", shard)])
        for row, dup, sim in zip(
            *(t.column(c).to_pylist() for c in ("row", "duplicate_of", "similarity")), strict=True
        ):
            out[row] = (dup, sim)
    return out


# --- exact -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionJob:
    part: int
    work: str
    n_shards: int
    threshold: float = 0.0
    collapse_exact: bool = True


def exact_partition(job: PartitionJob) -> int:
    """Write `exact_drops-<part>`: every position whose key equals an earlier one's; returns how many."""
    work = Path(job.work)
    out = exact_drops_file(work, job.part)
    if out.is_file():
        return pq.ParquetFile(out).metadata.num_rows
    t = read_partition([exact_file(work, s) for s in range(job.n_shards)], job.part, EXACT_SCHEMA.names[1:])
    keys = [t.column(f"k{i}").to_numpy() for i in range(4)]
    pos = t.column("pos").to_numpy()
    order = np.lexsort((pos, *reversed(keys)))
    keys, pos = [k[order] for k in keys], pos[order]
    first = np.ones(len(pos), dtype=bool)
    if len(pos):
        first[1:] = np.any([k[1:] != k[:-1] for k in keys], axis=0)
    group_first = np.maximum.accumulate(np.where(first, np.arange(len(pos)), 0))
    dropped = np.flatnonzero(~first)
    doc_ids = t.column("doc_id").take(pa.array(order[group_first[dropped]]))
    by_pos = np.argsort(pos[dropped], kind="stable")
    drop_pos = pos[dropped][by_pos]
    write_drops(
        out,
        pa.table(
            {
                "shard": pa.array(drop_pos >> ROW_BITS, pa.int32()),
                "row": pa.array(drop_pos & ROW_MASK, pa.int64()),
                "duplicate_of": doc_ids.take(pa.array(by_pos)),
                "similarity": pa.array(np.ones(len(drop_pos))),
            },
            schema=DROP_SCHEMA,
        ),
    )
    return len(drop_pos)


# --- near: candidate pairs -------------------------------------------------------------------------
@dataclass(frozen=True)
class Buckets:
    """Buckets with two or more members: `pos[start:start + size]`, each run sorted by position."""

    pos: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    def members(self) -> np.ndarray:
        """The positions in any of these buckets (with repeats)."""
        within = np.arange(self.sizes.sum()) - np.repeat(np.cumsum(self.sizes) - self.sizes, self.sizes)
        return self.pos[np.repeat(self.starts, self.sizes) + within]


def buckets(band_key: np.ndarray, pos: np.ndarray, exact: np.ndarray, collapse: bool) -> Buckets:
    """The members of every bucket of two or more, in order of band key."""
    if collapse and len(pos):  # only the first of each exact key in a bucket: the others are exact drops
        order = np.lexsort((pos, exact, band_key))
        band_key, pos, exact = band_key[order], pos[order], exact[order]
        keep = np.r_[True, (band_key[1:] != band_key[:-1]) | (exact[1:] != exact[:-1])]
        band_key, pos = band_key[keep], pos[keep]
    order = np.lexsort((pos, band_key))
    band_key, pos = band_key[order], pos[order]
    starts = np.flatnonzero(np.r_[True, band_key[1:] != band_key[:-1]]) if len(pos) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(pos)])
    return Buckets(pos, starts[sizes > 1], sizes[sizes > 1])


def pair_chunks(b: Buckets, chunk: int = PAIR_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(later i, earlier j) of every pair inside each bucket, about `chunk` pairs at a time.

    A bucket of k documents has k(k-1)/2 pairs (any earlier member may be the kept one). Buckets of one
    size go together while their pairs fit a chunk; a larger one is cut by its earlier member, so
    memory holds one chunk of candidates, never a bucket's square.
    """
    for size in np.unique(b.sizes):
        starts, per_bucket = b.starts[b.sizes == size], size * (size - 1) // 2
        if per_bucket <= chunk:
            a, later = np.triu_indices(size, 1)
            step = max(1, chunk // per_bucket)
            for first in range(0, len(starts), step):
                members = b.pos[starts[first : first + step, None] + np.arange(size)]  # (buckets, size)
                yield members[:, later].ravel(), members[:, a].ravel()
            continue
        for start in starts:
            members = b.pos[start : start + size]
            for a in range(size - 1):
                yield members[a + 1 :], np.full(size - 1 - a, members[a], dtype=np.int64)


def candidate_pairs(band_key: np.ndarray, pos: np.ndarray, exact: np.ndarray, collapse: bool) -> np.ndarray:
    """(n, 2) unique (later i, earlier j) position pairs that share a band key, sorted by (i, j)."""
    found = [np.stack(c, axis=1) for c in pair_chunks(buckets(band_key, pos, exact, collapse))]
    return np.unique(np.concatenate([np.zeros((0, 2), np.int64), *found]), axis=0)


def _signatures_and_ids(work: Path, wanted: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Signatures and doc_ids of sorted positions, read shard by shard (one shard's columns at a time)."""
    sigs, ids = [], []
    shards = wanted >> ROW_BITS
    for shard in np.unique(shards):
        rows = wanted[shards == shard] & ROW_MASK
        sigs.append(np.asarray(np.load(sig_file(work, int(shard)), mmap_mode="r")[rows]))
        column = pq.read_table(survivors_file(work, int(shard)), columns=["doc_id"]).column("doc_id")
        ids.extend(column.take(pa.array(rows)).to_pylist())
    return (np.concatenate(sigs) if sigs else np.zeros((0, 0), np.uint32)), ids


def pair_partition(job: PartitionJob) -> int:
    """Write `pairs-<part>`: candidate pairs of this partition's buckets at or above the threshold."""
    work = Path(job.work)
    out = pairs_file(work, job.part)
    if out.is_file():
        return pq.ParquetFile(out).metadata.num_rows
    paths = [bucket_file(work, s) for s in range(job.n_shards)]
    t = read_partition(paths, job.part, ["band_key", "pos", "exact"])
    groups = buckets(*(t.column(c).to_numpy() for c in ("band_key", "pos", "exact")), job.collapse_exact)
    del t
    wanted = np.unique(groups.members())
    sigs, ids = _signatures_and_ids(work, wanted)
    found = [np.zeros((0, 2), np.int64)]
    for i, j in pair_chunks(groups):  # verified chunk by chunk: only the close pairs are kept
        similarity = jaccard(sigs[np.searchsorted(wanted, i)], sigs[np.searchsorted(wanted, j)])
        found.append(np.stack([i, j], axis=1)[similarity >= job.threshold])
    pairs = np.unique(np.concatenate(found), axis=0)  # a pair that shares several bands, once
    i_at, j_at = np.searchsorted(wanted, pairs[:, 0]), np.searchsorted(wanted, pairs[:, 1])
    similarity = jaccard(sigs[i_at], sigs[j_at]) if len(pairs) else np.zeros(0)
    table = pa.table(
        {
            "i": pa.array(pairs[:, 0], pa.int64()),
            "j": pa.array(pairs[:, 1], pa.int64()),
            "similarity": pa.array(similarity, pa.float64()),
            "duplicate_of": pa.array([ids[k] for k in j_at], pa.string()),
        },
        schema=PAIR_SCHEMA,
    )
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, row_group_size=PAIR_ROWS)
    return table.num_rows


# --- near: keep the first ---------------------------------------------------------------------------
def _pairs(path: Path) -> Iterator[tuple[int, int, float, str]]:
    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=PAIR_ROWS, columns=PAIR_SCHEMA.names):
            yield from zip(*(batch.column(c).to_pylist() for c in PAIR_SCHEMA.names), strict=True)


def keep_first(work: Path, n_parts: int, rows_per_shard: Sequence[int]) -> int:
    """Write `near_drops`: walk the verified pairs in document order, keeping the earlier document.

    Returns how many were dropped. State: one flag per document that passed the filters.
    """
    out = near_drops_file(work)
    if out.is_file():
        return pq.ParquetFile(out).metadata.num_rows
    offsets = np.r_[0, np.cumsum(rows_per_shard)].astype(np.int64)
    dropped = np.zeros(int(offsets[-1]), dtype=bool)

    def index(p: int) -> int:
        return int(offsets[p >> ROW_BITS]) + (p & ROW_MASK)

    merged = heapq.merge(*(_pairs(pairs_file(work, p)) for p in range(n_parts)))
    rows: list[tuple[int, int, str, float]] = []
    n = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, DROP_SCHEMA) as writer:
        for i, group in itertools.groupby(merged, key=lambda pair: pair[0]):
            best: tuple[float, str] | None = None
            for _, j, similarity, dup in group:  # in order of j: a tie keeps the earliest
                if not dropped[index(j)] and (best is None or similarity > best[0]):
                    best = (similarity, dup)
            if best is not None:
                dropped[index(i)] = True
                rows.append((i >> ROW_BITS, i & ROW_MASK, best[1], best[0]))
            if len(rows) >= DROP_ROW_GROUP:
                writer.write_table(_drop_rows(rows))
                n, rows = n + len(rows), []
        writer.write_table(_drop_rows(rows))
    return n + len(rows)


def _drop_rows(rows: list[tuple[int, int, str, float]]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    return pa.table(dict(zip(DROP_SCHEMA.names, map(list, columns), strict=True)), schema=DROP_SCHEMA)
