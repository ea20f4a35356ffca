"""Phase 2, preprocess: raw document shards -> clean `documents` shards, `rejected` shards, `report.json`.

Steps, in order, each dropping with a recorded rule: normalise (NFKC, whitespace, Wikipedia
boilerplate), drop what is left empty (rule `empty`), quality filters (`tasks.cleaning.filters`), exact
duplicates, near duplicates (MinHash LSH). Filters run before dedup so a good document is never dropped
as the duplicate of one that a filter rejects anyway. Then documents longer than `max_chars` are split
into parts at paragraph boundaries (or kept whole, or dropped: `long_documents`).

It runs in stages over the collect artifact's `documents` shards, with memory for one shard or one
dedup partition, never the corpus (`tasks.cleaning.shard_jobs`, `tasks.cleaning.dedup_stages`):

  1. per raw shard (mapper): the per-document steps, then exact keys, signatures and band keys on disk
  2. per partition (mapper): exact groups -> exact drops; LSH buckets -> verified candidate pairs
  3. here: the verified pairs in document order -> near drops (the earlier kept document wins)
  4. per shard (mapper): survivors minus drops, long documents split -> clean and rejected shards

Every stage writes into the work folder (`scratch_dir`) and skips what is there already, so a run
killed halfway redoes only its unfinished shards. Of each group of duplicates the first document by
shard and row is kept, as the one-pass in-memory version did.

Clean rows keep the raw schema plus `part` (0 unless split) and the text statistics the filters used
(`n_chars`, `n_words`, `n_sentences`, `mean_sentence_words`, `distinct_chars`, `symbol_ratio`,
`repeated_line_ratio`). Every dropped document is a row of the `rejected` table with its rule, a
human-readable detail and, for duplicates, the `doc_id` it duplicated and the similarity.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.cleaning import dedup_stages as ds
from tasks.cleaning.config import PreprocessConfig, build_filters, build_steps
from tasks.cleaning.report import build_report, report_markdown, stage_rows
from tasks.cleaning.shard_jobs import (
    CLEAN_SCHEMA,
    EXACT_RULE,
    NEAR_RULE,
    REJECTED_SCHEMA,
    ShardJob,
    filter_shard,
    prepare_shard,
)
from tasks.shard_map import Mapper, serial_map, task_map
from tasks.storage.artifacts import Artifact, materialize, phase_fingerprint, publish, scratch_dir, verify
from tasks.storage.cache_records import artifact_cache
from tasks.storage.shards import shard_name

__all__ = ["CLEAN_SCHEMA", "REJECTED_SCHEMA", "PreprocessConfig", "build_filters", "build_steps"]

CODE_VERSION = "2"
DOCUMENTS_TABLE, REJECTED_TABLE = "documents", "rejected"
REPORT_FILE = "report.json"


class EmptyCorpusError(ValueError):
    """Every document was dropped: the message lists the rules that dropped them."""


def dedup(cfg: PreprocessConfig, work: Path, prepared: list[dict[str, Any]], mapper: Mapper) -> None:
    """Stages 2 and 3: exact drops per partition, verified pairs per partition, then the near drops."""
    n = len(prepared)
    jobs = [
        ds.PartitionJob(p, str(work), n, threshold=cfg.threshold, collapse_exact=cfg.exact_dedup)
        for p in range(n)
    ]
    if cfg.exact_dedup:
        mapper(ds.exact_partition, jobs)
    if cfg.near_dedup:
        mapper(ds.pair_partition, jobs)
        ds.keep_first(work, n, [r["rows"] for r in prepared])


def clean_shards(cfg: PreprocessConfig, raw_shards: list[Path], work: Path, mapper: Mapper) -> dict[str, Any]:
    """Every stage over the shards; returns what assembling the artifact needs (names and counts)."""
    n = max(len(raw_shards), 1)
    jobs = [ShardJob(s, str(work), cfg, n, source=str(path)) for s, path in enumerate(raw_shards)]
    prepared = mapper(prepare_shard, jobs)
    dedup(cfg, work, prepared, mapper)
    filtered = mapper(filter_shard, jobs)
    return {"prepared": prepared, "filtered": filtered, "report": _report(cfg, prepared, filtered)}


def _report(cfg: PreprocessConfig, prepared: list[dict[str, Any]], filtered: list[dict[str, Any]]) -> dict:
    stages: list[dict[str, Any]] = []
    for result in prepared:
        if not stages:
            stages = [dict(s) for s in result["stages"]]
            continue
        for into, s in zip(stages, result["stages"], strict=True):
            into.update({k: into[k] + s[k] for k in ("in", "dropped", "chars_out")})
    rows = [
        {"stage": s["name"], "in": s["in"], "dropped": s["dropped"], "out": s["in"] - s["dropped"]}
        for s in stages
        if s["drops"]
    ]
    for rule, key, on in (
        (EXACT_RULE, "exact_dropped", cfg.exact_dedup),
        (NEAR_RULE, "near_dropped", cfg.near_dedup),
    ):
        if on:
            n_in = rows[-1]["out"] if rows else sum(r["rows"] for r in prepared)
            dropped = sum(r[key] for r in filtered)
            rows.append({"stage": rule, "in": n_in, "dropped": dropped, "out": n_in - dropped})
    return build_report(
        sources_in=_sum(r["sources_in"] for r in prepared),
        chars_in=sum(r["chars_in"] for r in prepared),
        chars_normalized=next((s["chars_out"] for s in stages if s["name"] == "normalize"), 0),
        stages=rows,
        rejected_by_rule={r["stage"]: r["dropped"] for r in rows if r["dropped"]},
        rejected_sources=_sum(r["rejected_sources"] for r in [*prepared, *filtered]),
        kept_sources=_sum(r["kept_sources"] for r in filtered),
        row_chars={int(v): c for v, c in _sum(r["row_chars"] for r in filtered).items()},
        row_words={int(v): c for v, c in _sum(r["row_words"] for r in filtered).items()},
        split_documents=sum(r["split_documents"] for r in filtered),
    )


def _sum(counts: Any) -> Counter:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return total


def _place(src: Path, dst: Path) -> None:
    """A work file into the staging folder: a hard link when both are on one file system, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def assemble(staging: Path, work: Path, done: dict[str, Any]) -> None:
    """The clean and rejected shards of every shard, renumbered into one table each, and the report."""
    found: dict[str, list[Path]] = {DOCUMENTS_TABLE: [], REJECTED_TABLE: []}
    for prep, filt in zip(done["prepared"], done["filtered"], strict=True):
        shard = prep["shard"]
        found[REJECTED_TABLE] += [work / f"filtered-{shard:05d}" / name for name in prep["rejected"]]
        final = work / f"final-{shard:05d}"
        found[DOCUMENTS_TABLE] += [final / name for name in filt["documents"]]
        found[REJECTED_TABLE] += [final / name for name in filt["rejected"]]
    for table, paths in found.items():
        for k, path in enumerate(paths):
            _place(path, staging / shard_name(table, k))
    if not found[REJECTED_TABLE]:  # the table exists even when nothing was rejected
        pq.write_table(REJECTED_SCHEMA.empty_table(), staging / shard_name(REJECTED_TABLE, 0))
    (staging / REPORT_FILE).write_text(json.dumps(done["report"], indent=2))


def run_preprocess(
    cfg: PreprocessConfig, raw: Artifact, root: str | Path, *, mapper: Mapper = serial_map
) -> Artifact:
    if raw.phase != "collect" or DOCUMENTS_TABLE not in raw.shards:
        raise ValueError(
            f"preprocess needs a collect artifact with a sharded {DOCUMENTS_TABLE!r} table; got {raw.phase} "
            f"at {raw.path} with tables {sorted(raw.shards) or 'none'} (collect again with this code)"
        )
    raw = materialize(raw)
    fingerprint = phase_fingerprint("preprocess", CODE_VERSION, cfg=cfg, raw=raw)

    def build(staging: Path) -> dict[str, Any]:
        verify(raw)
        work = scratch_dir(root, "preprocess", fingerprint)
        done = clean_shards(cfg, raw.shard_paths(DOCUMENTS_TABLE), work, mapper)
        r = done["report"]
        if not r["rows_out"]:
            raise EmptyCorpusError(
                f"preprocess dropped all {r['documents_in']} documents "
                f"(by rule: {r['rejected_by_rule']}); loosen the preprocess bounds "
                f"or collect more text. The raw documents are untouched at {raw.path}."
            )
        assemble(staging, work, done)
        return {
            "documents_in": r["documents_in"],
            "documents_kept": r["documents_kept"],
            "rows": r["rows_out"],
            "rejected": r["rejected"],
            "rejected_by_rule": r["rejected_by_rule"],
            "characters": r["characters"]["out"],
        }

    return publish(root, "preprocess", fingerprint, build)


def load_report(artifact: Artifact) -> dict[str, Any]:
    return json.loads(artifact.file(REPORT_FILE).read_text())


# --- Prefect ----------------------------------------------------------------------------------------
@task(
    name="preprocess",
    **artifact_cache("preprocess", CODE_VERSION),
)
def preprocess(cfg: PreprocessConfig, raw: Artifact, root: str) -> Artifact:
    """The phase with its per-shard jobs as task runs on the flow's task runner (Dask workers on Dask)."""
    artifact = run_preprocess(cfg, raw, root, mapper=task_map)
    report = load_report(artifact)
    get_run_logger().info(
        "preprocess: %d in, %d kept, %d rejected",
        report["documents_in"],
        report["documents_kept"],
        report["rejected"],
    )
    create_table_artifact(stage_rows(report), key="preprocess-steps", description="Documents in/out per step")
    create_markdown_artifact(
        report_markdown(report), key="preprocess-report", description="Preprocess report"
    )
    return artifact
