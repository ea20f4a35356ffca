"""Phase 2, preprocess: raw documents -> clean `documents.parquet`, `rejected.parquet`, `report.json`.

Steps, in order (`tasks.cleaning.steps`, run by `tasks.cleaning.pipeline`), each dropping with a
recorded rule: normalise (NFKC, whitespace, Wikipedia boilerplate), drop what is left empty (rule
`empty`), quality filters (`tasks.cleaning.filters`), exact duplicates, near duplicates (MinHash LSH).
Filters run before dedup so a good document is never dropped as the duplicate of one that a filter
rejects anyway. Then documents longer than `max_chars` are split into parts at paragraph boundaries
(or kept whole, or dropped: `long_documents`).

Clean rows keep the raw schema plus `part` (0 unless split) and the text statistics the filters used
(`n_chars`, `n_words`, `n_sentences`, `mean_sentence_words`, `distinct_chars`, `symbol_ratio`,
`repeated_line_ratio`). Every dropped document is a row of `rejected.parquet` with its rule, a
human-readable detail and, for duplicates, the `doc_id` it duplicated and the similarity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field, model_validator

from tasks.cleaning.dedup import NearDedup
from tasks.cleaning.filters import (
    Filter,
    MaxChars,
    MaxRepeatedLines,
    MaxSymbolRatio,
    MeanSentenceWords,
    MinChars,
    MinDistinctChars,
    MinWords,
    text_stats,
)
from tasks.cleaning.normalize import DEFAULT_APPENDIX_HEADINGS, appendix_pattern
from tasks.cleaning.pipeline import CleanDoc, Step, run_steps
from tasks.cleaning.report import build_report, report_markdown, stage_rows
from tasks.cleaning.split import split_text
from tasks.cleaning.steps import ExactDuplicates, NearDuplicates, NonEmpty, Normalize, QualityFilter
from tasks.shard_map import Mapper, serial_map, task_map
from tasks.sources.document import DOCUMENT_SCHEMA, DOCUMENTS_FILE, Document, read_documents, write_table
from tasks.storage.artifacts import Artifact, materialize, phase_fingerprint, publish, verify
from tasks.storage.cache_records import artifact_cache

CODE_VERSION = "1"
REJECTED_FILE = "rejected.parquet"
REPORT_FILE = "report.json"

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


class PreprocessConfig(BaseModel):
    """How raw documents are cleaned, deduplicated and filtered."""

    wikipedia_cleanup_sources: list[str] = Field(
        default_factory=lambda: ["wikipedia", "web", "local"],
        description="Sources whose text gets Wikipedia clean-up (reference markers like [12], appendix "
        "sections). Not 'builtin': in Python docs '[i]' is an index, not a footnote.",
    )
    appendix_headings: list[str] = Field(
        default_factory=lambda: list(DEFAULT_APPENDIX_HEADINGS),
        description="Section headings that start a Wikipedia appendix; it and all after it are removed.",
    )
    exact_dedup: bool = Field(True, description="Drop documents whose normalised text equals an earlier one.")
    near_dedup: bool = Field(True, description="Drop near-duplicates of earlier documents (MinHash LSH).")
    shingle_size: int = Field(3, ge=1, le=10, description="Words per shingle for near dedup.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: finer, slower).")
    threshold: float = Field(
        0.7,
        gt=0,
        lt=1,
        description="Jaccard similarity of shingle sets at or above which a document is a duplicate.",
    )
    minhash_seed: int = Field(1, description="Seed of the MinHash permutations.")
    lsh_recall_weight: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="Weight of missed duplicates against extra candidates when choosing LSH bands "
        "(candidates are verified, so extra ones only cost time).",
    )
    min_chars: int = Field(100, ge=0, description="Fewest characters a document may have.")
    max_chars: int = Field(50_000, ge=1000, description="Longest document row; see `long_documents`.")
    long_documents: Literal["split", "keep", "drop"] = Field(
        "split",
        description="Documents over max_chars: 'split' into parts at paragraph boundaries (same doc_id, "
        "numbered `part`), 'keep' whole, or 'drop' (the first version's behaviour).",
    )
    min_words: int = Field(20, ge=0, description="A document needs MORE than this many words.")
    min_mean_sentence_words: float = Field(3.0, ge=0, description="Lowest mean words per sentence.")
    max_mean_sentence_words: float = Field(100.0, gt=0, description="Highest mean words per sentence.")
    min_distinct_chars: int = Field(10, ge=0, description="Fewest distinct characters (catches 'aaaa...').")
    max_symbol_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Highest share of markup/code symbols (# { } < > | = * _ ...) in the text.",
    )
    max_repeated_line_ratio: float = Field(
        0.3, ge=0, le=1, description="Highest share of non-empty lines that repeat an earlier line."
    )

    @model_validator(mode="after")
    def _bounds(self) -> PreprocessConfig:
        if self.min_mean_sentence_words > self.max_mean_sentence_words:
            raise ValueError("preprocess.min_mean_sentence_words is above max_mean_sentence_words")
        if self.min_chars > self.max_chars:
            raise ValueError("preprocess.min_chars is above max_chars")
        return self


class EmptyCorpusError(ValueError):
    """Every document was dropped: the message lists the rules that dropped them."""


def build_filters(cfg: PreprocessConfig) -> list[Filter]:
    filters: list[Filter] = [
        MinChars(cfg.min_chars),
        MinWords(cfg.min_words),
        MeanSentenceWords(cfg.min_mean_sentence_words, cfg.max_mean_sentence_words),
        MinDistinctChars(cfg.min_distinct_chars),
        MaxSymbolRatio(cfg.max_symbol_ratio),
        MaxRepeatedLines(cfg.max_repeated_line_ratio),
    ]
    if cfg.long_documents == "drop":
        filters.insert(1, MaxChars(cfg.max_chars))
    return filters


def build_steps(cfg: PreprocessConfig) -> list[Step]:
    """The steps in order, fresh (the dedup steps remember what they kept): see the module docstring."""
    appendix = appendix_pattern(cfg.appendix_headings) if cfg.appendix_headings else None
    steps: list[Step] = [
        Normalize(cfg.wikipedia_cleanup_sources, appendix),
        NonEmpty(),
        *(QualityFilter(rule) for rule in build_filters(cfg)),
    ]
    if cfg.exact_dedup:
        steps.append(ExactDuplicates())
    if cfg.near_dedup:
        near = NearDedup(
            cfg.threshold, cfg.num_perm, cfg.shingle_size, cfg.minhash_seed, cfg.lsh_recall_weight
        )
        steps.append(NearDuplicates(near))
    return steps


@dataclass
class CleanResult:
    rows: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    report: dict[str, Any]


def clean_documents(raw: list[Document], cfg: PreprocessConfig) -> CleanResult:
    """The whole preprocessing over in-memory documents (no I/O): rows to keep, rejections, report."""
    run = run_steps(build_steps(cfg), [CleanDoc(d) for d in raw])
    rows, split_docs = clean_rows(run.kept, cfg)
    report = build_report(
        sources_in=[d.source for d in raw],
        chars_in=sum(len(d.text) for d in raw),
        chars_normalized=run.stage(Normalize.name).chars_out,
        stages=run.stage_rows(),
        rejected_rules=[r["rule"] for r in run.rejected],
        rejected_sources=[r["source"] for r in run.rejected],
        kept_sources=[r["source"] for r in rows],
        row_chars=[r["n_chars"] for r in rows],
        row_words=[r["n_words"] for r in rows],
        split_documents=split_docs,
    )
    return CleanResult(rows, run.rejected, report)


def clean_rows(kept: list[CleanDoc], cfg: PreprocessConfig) -> tuple[list[dict[str, Any]], int]:
    """Rows of the clean table (long documents split into parts per `long_documents`), and how many split."""
    rows, split_docs = [], 0
    for doc in kept:
        parts = split_text(doc.text, cfg.max_chars) if cfg.long_documents == "split" else [doc.text]
        split_docs += len(parts) > 1
        for k, part in enumerate(parts):
            part_stats = doc.stats if len(parts) == 1 else text_stats(part)
            rows.append({**asdict(doc.doc), "text": part, "part": k, **part_stats.as_dict()})
    return rows, split_docs


def run_preprocess(
    cfg: PreprocessConfig,
    raw: Artifact,
    root: str | Path,
    *,
    mapper: Mapper = serial_map,  # encode branch: unused
) -> Artifact:
    if raw.phase != "collect" or DOCUMENTS_FILE not in raw.files:
        raise ValueError(
            f"preprocess needs a collect artifact with {DOCUMENTS_FILE}; got {raw.phase} at {raw.path}"
        )
    raw = materialize(raw)
    fingerprint = phase_fingerprint("preprocess", CODE_VERSION, cfg=cfg, raw=raw)

    def build(staging: Path) -> dict[str, Any]:
        verify(raw)
        result = clean_documents(read_documents(raw.file(DOCUMENTS_FILE)), cfg)
        if not result.rows:
            raise EmptyCorpusError(
                f"preprocess dropped all {result.report['documents_in']} documents "
                f"(by rule: {result.report['rejected_by_rule']}); loosen the preprocess bounds "
                f"or collect more text. The raw documents are untouched at {raw.path}."
            )
        write_table(staging / DOCUMENTS_FILE, result.rows, CLEAN_SCHEMA)
        write_table(staging / REJECTED_FILE, result.rejected, REJECTED_SCHEMA)
        (staging / REPORT_FILE).write_text(json.dumps(result.report, indent=2))
        r = result.report
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
