"""The preprocess phase's per-shard jobs: what one raw shard needs, with one shard's worth of memory.

Each job is a module-level function of a small picklable `ShardJob` (the mapper may run it on a Dask
worker), writes its files into the phase's work folder and returns counts. A job whose `<stage>-<shard>.json`
is in the work folder already finished: it returns that result (`resumed`) without doing the work again.

  prepare_shard  a raw shard, a batch at a time, through the per-document steps (normalise, empty,
                 quality filters); writes the survivors (`survivors-<s>`), the filter rejections, and
                 the dedup inputs: exact keys, MinHash signatures, LSH band keys (`dedup_stages`)
  filter_shard   the survivors of a shard minus the exact and near duplicates the dedup stages named;
                 long documents split; writes the clean and rejected rows of this shard as table shards
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.cleaning import dedup_stages as ds
from tasks.cleaning.config import PreprocessConfig, build_steps
from tasks.cleaning.dedup import MinHasher, band_keys, exact_key, lsh_bands, signatures
from tasks.cleaning.filters import text_stats
from tasks.cleaning.pipeline import CleanDoc, Stage, run_steps
from tasks.cleaning.split import split_text
from tasks.sources.document import DOCUMENT_SCHEMA, Document
from tasks.storage.shards import ShardWriter, iter_batches
from tinyllama_model.files import atomic_path, atomic_write

CLEAN_SCHEMA = pa.schema(
    [
        *DOCUMENT_SCHEMA,
        pa.field("part", pa.int32(), nullable=False),
        pa.field("n_chars", pa.int64()),
        pa.field("n_words", pa.int64()),
        pa.field("n_sentences", pa.int64()),
        pa.field("mean_sentence_words", pa.float64()),
        pa.field("distinct_chars", pa.int64()),
        pa.field("symbol_ratio", pa.float64()),
        pa.field("repeated_line_ratio", pa.float64()),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("title", pa.string()),
        pa.field("url", pa.string()),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("similarity", pa.float64()),
        pa.field("n_chars", pa.int64()),
    ]
)
EXACT_RULE, NEAR_RULE = "exact_duplicate", "near_duplicate"


@dataclass(frozen=True)
class ShardJob:
    shard: int
    work: str
    cfg: PreprocessConfig
    n_parts: int  # partitions of the dedup stages
    source: str = ""  # the raw shard (prepare_shard only)


def _done(work: Path, stage: str, shard: int) -> Path:
    return work / f"{stage}-{shard:05d}.json"


def _finished(path: Path) -> dict[str, Any] | None:
    return {**json.loads(path.read_text()), "resumed": True} if path.is_file() else None


def _shard_bytes(cfg: PreprocessConfig) -> int:
    return int(cfg.shard_mb * 2**20)


# --- prepare ---------------------------------------------------------------------------------------
def _add_stages(total: list[dict[str, Any]], stages: list[Stage]) -> None:
    if not total:
        total.extend(
            {"name": s.name, "drops": s.drops, "in": 0, "dropped": 0, "chars_out": 0} for s in stages
        )
    for into, s in zip(total, stages, strict=True):
        into["in"] += s.n_in
        into["dropped"] += s.dropped
        into["chars_out"] += s.chars_out


def prepare_shard(job: ShardJob) -> dict[str, Any]:
    """Per-document steps over one raw shard, then its dedup inputs; returns the counts for the report."""
    work, cfg = Path(job.work), job.cfg
    done = _done(work, "prepare", job.shard)
    if (result := _finished(done)) is not None:
        return result
    steps = build_steps(cfg)
    stages: list[dict[str, Any]] = []
    sources_in, rejected_sources, chars_in = Counter(), Counter(), 0
    keys: list[bytes] = []
    sigs: list[np.ndarray] = []
    hasher = MinHasher(cfg.num_perm, cfg.minhash_seed) if cfg.near_dedup else None
    rejected_dir = work / f"filtered-{job.shard:05d}"
    shutil.rmtree(rejected_dir, ignore_errors=True)
    survivors_path = ds.survivors_file(work, job.shard)
    with (
        atomic_path(survivors_path) as tmp,
        pq.ParquetWriter(tmp, CLEAN_SCHEMA) as survivors,
        ShardWriter(rejected_dir, "rejected", REJECTED_SCHEMA, max_bytes=_shard_bytes(cfg)) as rejected,
    ):
        for batch in iter_batches([Path(job.source)], DOCUMENT_SCHEMA.names):
            docs = [_document(r) for r in batch.to_pylist()]
            sources_in.update(d.source for d in docs)
            chars_in += sum(len(d.text) for d in docs)
            run = run_steps(steps, [CleanDoc(d) for d in docs])
            _add_stages(stages, run.stages)
            rejected.write_rows(run.rejected)
            rejected_sources.update(r["source"] for r in run.rejected)
            rows = [{**vars(d.doc), "part": 0, **d.stats.as_dict()} for d in run.kept]
            survivors.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA))
            keys.extend(exact_key(d.text) for d in run.kept)
            if hasher is not None:
                sigs.extend(signatures([d.text for d in run.kept], hasher, cfg.shingle_size))
    _write_dedup_inputs(job, keys, sigs, _ids(survivors_path))
    result = {
        "shard": job.shard,
        "rows": len(keys),
        "stages": stages,
        "sources_in": dict(sources_in),
        "rejected_sources": dict(rejected_sources),
        "chars_in": chars_in,
        "rejected": rejected.names,
    }
    atomic_write(done, json.dumps(result))
    return {**result, "resumed": False}


def _document(row: dict[str, Any]) -> Document:
    """A raw row as a Document (its columns are the dataclass's fields; a null time takes the default)."""
    if row.get("fetched_at") is None:
        row.pop("fetched_at", None)
    return Document(**row)


def _ids(path: Path) -> list[str]:
    return pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()


def _write_dedup_inputs(job: ShardJob, keys: list[bytes], sigs: list[np.ndarray], ids: list[str]) -> None:
    """Exact keys and LSH band keys of this shard's survivors, partitioned; its signatures."""
    work, cfg = Path(job.work), job.cfg
    pos = ds.positions(job.shard, len(keys))
    k = np.frombuffer(b"".join(keys), dtype="<u8").reshape(-1, 4)
    if cfg.exact_dedup:
        columns = {"part": (k[:, 0] % job.n_parts).astype(np.int32)}
        columns |= {f"k{i}": k[:, i] for i in range(4)}
        table = pa.table(
            {**columns, "pos": pos, "doc_id": pa.array(ids, pa.string())}, schema=ds.EXACT_SCHEMA
        )
        ds.write_partitioned(ds.exact_file(work, job.shard), table)
    if cfg.near_dedup:
        sig = np.stack(sigs) if sigs else np.zeros((0, cfg.num_perm), dtype=np.uint32)
        with atomic_path(ds.sig_file(work, job.shard)) as tmp, open(tmp, "wb") as f:
            np.save(f, sig)
        bands, rows = lsh_bands(cfg.threshold, cfg.num_perm, cfg.lsh_recall_weight)
        band_key = band_keys(sig, bands, rows).ravel()  # (n * bands,), document-major
        table = pa.table(
            {
                "part": (band_key % np.uint64(job.n_parts)).astype(np.int32),
                "band_key": band_key,
                "pos": np.repeat(pos, bands),
                "exact": np.repeat(k[:, 0], bands),
            },
            schema=ds.BUCKET_SCHEMA,
        )
        ds.write_partitioned(ds.bucket_file(work, job.shard), table)


# --- filter ----------------------------------------------------------------------------------------
def _duplicate(rec: dict[str, Any], rule: str, detail: str, of: str, similarity: float) -> dict[str, Any]:
    keep = ("doc_id", "source", "title", "url")
    found = {"rule": rule, "detail": detail, "duplicate_of": of, "similarity": similarity}
    return {**{k: rec[k] for k in keep}, **found, "n_chars": len(rec["text"])}


def _parts(rec: dict[str, Any], cfg: PreprocessConfig) -> list[dict[str, Any]]:
    texts = split_text(rec["text"], cfg.max_chars) if cfg.long_documents == "split" else [rec["text"]]
    if len(texts) == 1:
        return [rec]
    return [{**rec, "text": t, "part": k, **text_stats(t).as_dict()} for k, t in enumerate(texts)]


def filter_shard(job: ShardJob) -> dict[str, Any]:
    """One shard's survivors without its duplicates, long ones split: its clean and rejected shards."""
    work, cfg = Path(job.work), job.cfg
    done = _done(work, "filter", job.shard)
    if (result := _finished(done)) is not None:
        return result
    out = work / f"final-{job.shard:05d}"
    shutil.rmtree(out, ignore_errors=True)
    exact_files = [ds.exact_drops_file(work, p) for p in range(job.n_parts)] if cfg.exact_dedup else []
    exact = ds.read_drops(exact_files, job.shard)
    near = ds.read_drops([ds.near_drops_file(work)], job.shard) if cfg.near_dedup else {}
    kept_sources, rejected_sources, row_chars, row_words = Counter(), Counter(), Counter(), Counter()
    split_documents, row = 0, 0
    max_bytes = _shard_bytes(cfg)
    with (
        ShardWriter(out, "documents", CLEAN_SCHEMA, max_bytes=max_bytes) as clean,
        ShardWriter(out, "rejected", REJECTED_SCHEMA, max_bytes=max_bytes) as rejected,
    ):
        for batch in iter_batches([ds.survivors_file(work, job.shard)], CLEAN_SCHEMA.names):
            for rec in batch.to_pylist():
                if row in exact:
                    rejected.write_rows([_duplicate(rec, EXACT_RULE, "same text", exact[row][0], 1.0)])
                elif row in near:
                    of, sim = near[row]
                    detail = f"estimated Jaccard {sim:.2f} >= {cfg.threshold}"
                    rejected.write_rows([_duplicate(rec, NEAR_RULE, detail, of, round(sim, 4))])
                else:
                    parts = _parts(rec, cfg)
                    split_documents += len(parts) > 1
                    clean.write_rows(parts)
                    kept_sources[rec["source"]] += len(parts)
                    row_chars.update(p["n_chars"] for p in parts)
                    row_words.update(p["n_words"] for p in parts)
                if row in exact or row in near:
                    rejected_sources[rec["source"]] += 1
                row += 1
    result = {
        "shard": job.shard,
        "exact_dropped": len(exact),
        "near_dropped": len(near),
        "documents": clean.names,
        "rejected": rejected.names,
        "kept_sources": dict(kept_sources),
        "rejected_sources": dict(rejected_sources),
        "row_chars": {str(v): c for v, c in row_chars.items()},
        "row_words": {str(v): c for v, c in row_words.items()},
        "split_documents": split_documents,
    }
    atomic_write(done, json.dumps(result))
    return {**result, "resumed": False}
