"""A dump as local input (the `wikimedia/wikipedia` Parquet layout: id, url, title, text): collect streams
it into shards, one batch in memory, with a fingerprint that ignores how it was cut and in which order
the jobs ran, and resumes at job granularity."""

from __future__ import annotations

import random
import re
import shutil
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.collect import CollectConfig, run_collect
from tasks.sources.document import DOCUMENT_SCHEMA, DOCUMENTS_TABLE
from tasks.storage.shards import count_rows, iter_batches

OFFLINE = {"wikipedia": {"enabled": False}}
WORDS = [
    "tokens",
    "attention",
    "layers",
    "training",
    "corpus",
    "model",
    "weights",
    "gradient",
    "language",
    "text",
]


def write_dump(folder: Path, files: int, rows: int, words: int = 150, seed: int = 0) -> list[dict]:
    """`files` Parquet files of `rows` articles each, as the dump ships them; returns every row in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    every: list[dict] = []
    for f in range(files):
        rows_here = []
        for r in range(rows):
            n = f * rows + r
            text = f"Article {n}. " + " ".join(rng.choice(WORDS) for _ in range(words))
            rows_here.append({"id": str(n), "url": f"https://en.wikipedia.org/wiki?curid={n}",
                              "title": f"Title {n}", "text": text})  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows_here), folder / f"train-{f:05d}-of-{files:05d}.parquet")
        every += rows_here
    return every


def dump_config(folder: Path, shard_mb: float, **local) -> CollectConfig:
    return CollectConfig(
        local={"paths": [str(folder / "*.parquet")], "text_field": "text", **local},
        shard_mb=shard_mb,
        **OFFLINE,
    )


def documents(artifact) -> list[tuple[str, str, str]]:
    paths = artifact.shard_paths(DOCUMENTS_TABLE)
    return [
        (row["title"], row["url"], row["text"])
        for batch in iter_batches(paths, ["title", "url", "text"])
        for row in batch.to_pylist()
    ]


def reversed_map(fn, jobs):
    """Jobs run last to first and their results come back in that order: as finishing order may."""
    return [fn(job) for job in reversed(list(jobs))]


def test_a_dump_streams_into_many_shards_holding_one_batch_at_a_time(tmp_path):
    rows = write_dump(tmp_path / "dump", files=4, rows=3000)
    corpus = sum(len(r["text"]) for r in rows)
    assert corpus > 10_000_000  # ~13 MB of text: many batches and shards
    cfg = dump_config(tmp_path / "dump", shard_mb=1.0)

    tracemalloc.start()  # Python's heap, where documents held in a list would land as strings
    try:
        artifact = run_collect(cfg, tmp_path / "root")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    names = artifact.shards[DOCUMENTS_TABLE]
    assert len(names) >= 10 and names[0] == "documents-00000.parquet"
    assert all(
        pq.read_schema(p).equals(DOCUMENT_SCHEMA, check_metadata=False)
        for p in artifact.shard_paths(DOCUMENTS_TABLE)
    )
    assert count_rows(artifact.shard_paths(DOCUMENTS_TABLE)) == artifact.stats["documents"] == len(rows)
    assert documents(artifact) == [(r["title"], r["url"], r["text"]) for r in rows]  # titles and urls mapped
    assert peak < corpus / 3, f"peak {peak:,} bytes of Python objects for a corpus of {corpus:,}"


def test_the_fingerprint_ignores_shard_size_and_job_order(tmp_path):
    rows = write_dump(tmp_path / "dump", files=3, rows=400)
    one = run_collect(dump_config(tmp_path / "dump", shard_mb=64), tmp_path / "a")
    cut = run_collect(dump_config(tmp_path / "dump", shard_mb=0.1), tmp_path / "b", mapper=reversed_map)
    assert len(one.shards[DOCUMENTS_TABLE]) == 1 and len(cut.shards[DOCUMENTS_TABLE]) == 3  # a job a file
    assert sorted(documents(cut)) == sorted(documents(one)) and documents(cut) != documents(one)
    assert cut.fingerprint == one.fingerprint
    assert cut.stats["content_digest"] == one.stats["content_digest"]

    rows[5]["text"] += " one more word"
    pq.write_table(pa.Table.from_pylist(rows[:400]), tmp_path / "dump" / "train-00000-of-00003.parquet")
    edited = run_collect(dump_config(tmp_path / "dump", shard_mb=0.1), tmp_path / "b")
    assert edited.fingerprint != one.fingerprint


def test_a_corrupt_shard_among_good_ones_is_a_recorded_failure(tmp_path):
    rows = write_dump(tmp_path / "dump", files=3, rows=300)
    (tmp_path / "dump" / "train-00003-garbage.parquet").write_bytes(b"PAR1 not parquet at all")
    damaged = tmp_path / "dump" / "train-00004-damaged.parquet"
    more = write_dump(tmp_path / "more", files=1, rows=2500, words=20, seed=1)
    pq.write_table(pa.Table.from_pylist(more), damaged, compression="zstd", row_group_size=2048)
    chunk = pq.read_metadata(damaged).row_group(1).column(3)  # the text of rows 2048-2499
    data = bytearray(damaged.read_bytes())
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    size = chunk.total_compressed_size
    data[start : start + size] = random.Random(1).randbytes(size)
    damaged.write_bytes(bytes(data))

    artifact = run_collect(dump_config(tmp_path / "dump", shard_mb=0.2, url_field="nothing"), tmp_path / "r")
    errors = {f["title"].rsplit("/", 1)[1]: f["error"] for f in artifact.stats["failures"]}
    assert set(errors) == {"train-00003-garbage.parquet", "train-00004-damaged.parquet"}
    assert "not a readable Parquet" in errors["train-00003-garbage.parquet"]
    kept = int(re.search(r"damaged after row (\d+)", errors["train-00004-damaged.parquet"])[1])
    assert 0 < kept <= 2048
    assert artifact.stats["documents"] == len(rows) + kept  # the damaged file's rows before the damage
    assert all(url.startswith("file://") for _, url, _ in documents(artifact))  # no url column: the file's


def test_a_killed_collection_redoes_only_its_unfinished_jobs(tmp_path):
    write_dump(tmp_path / "dump", files=4, rows=200)
    cfg = dump_config(tmp_path / "dump", shard_mb=0.1)
    reference = run_collect(cfg, tmp_path / "reference")
    done: list[str] = []

    def killed_after_two(fn, jobs):
        for job in jobs[:2]:
            done.append(fn(job).part.folder)
        raise KeyboardInterrupt("worker killed")

    with pytest.raises(KeyboardInterrupt):
        run_collect(cfg, tmp_path / "root", mapper=killed_after_two)
    assert all((Path(folder) / "result.json").is_file() for folder in done)

    ran: list[bool] = []

    def watching(fn, jobs):
        results = []
        for job in jobs:
            before = {p: p.stat().st_mtime_ns for p in Path(job.folder).glob("*")}
            results.append(fn(job))
            ran.append(before != {p: p.stat().st_mtime_ns for p in Path(job.folder).glob("*")})
        return results

    artifact = run_collect(cfg, tmp_path / "root", mapper=watching)
    assert len(ran) > 3 and ran[:2] == [False, False] and all(ran[2:])  # the two finished jobs reused
    assert artifact.fingerprint == reference.fingerprint
    assert documents(artifact) == documents(reference)


def test_a_finished_job_whose_shard_went_missing_is_done_again(tmp_path):
    write_dump(tmp_path / "dump", files=2, rows=200)
    cfg = dump_config(tmp_path / "dump", shard_mb=0.1)
    reference = run_collect(cfg, tmp_path / "reference")
    finished: list = []

    def killed_after_one(fn, jobs):
        finished.append(fn(jobs[0]))
        raise KeyboardInterrupt("worker killed")

    with pytest.raises(KeyboardInterrupt):
        run_collect(cfg, tmp_path / "root", mapper=killed_after_one)
    finished[0].part.paths()[0].unlink()  # result.json stays, naming a shard that is gone

    artifact = run_collect(cfg, tmp_path / "root")
    assert artifact.fingerprint == reference.fingerprint
    assert documents(artifact) == documents(reference)


def doc_ids(artifact) -> list[str]:
    return [d for batch in iter_batches(artifact.shard_paths(DOCUMENTS_TABLE), ["doc_id"]) for d in
            batch.column("doc_id").to_pylist()]  # fmt: skip


def test_an_id_field_keeps_document_ids_when_the_dump_moves(tmp_path):
    """The split hashes doc_id: with `id_field` it no longer depends on where the files lie."""
    write_dump(tmp_path / "here", files=2, rows=30)
    shutil.copytree(tmp_path / "here", tmp_path / "moved")
    by_id = [doc_ids(run_collect(dump_config(tmp_path / f, 1.0, id_field="id"), tmp_path / f"r-{f}"))
             for f in ("here", "moved")]  # fmt: skip
    assert by_id[0] == by_id[1] and len(set(by_id[0])) == 60
    by_place = [
        doc_ids(run_collect(dump_config(tmp_path / f, 1.0), tmp_path / f"p-{f}")) for f in ("here", "moved")
    ]
    assert not set(by_place[0]) & set(by_place[1])  # file and position: the ids move with the files
    no_such = run_collect(dump_config(tmp_path / "here", 1.0, id_field="nothing"), tmp_path / "n")
    assert doc_ids(no_such) == by_place[0]  # rows without the field keep file and position
