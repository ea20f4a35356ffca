"""The preprocess config section and the per-document steps it chooses.

Its own module so the per-shard jobs (`tasks.cleaning.shard_jobs`) can carry it to a worker without
importing the phase module that runs them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tasks.cleaning.filters import (
    Filter,
    MaxChars,
    MaxRepeatedLines,
    MaxSymbolRatio,
    MeanSentenceWords,
    MinChars,
    MinDistinctChars,
    MinWords,
)
from tasks.cleaning.normalize import DEFAULT_APPENDIX_HEADINGS, appendix_pattern
from tasks.cleaning.pipeline import Step
from tasks.cleaning.steps import NonEmpty, Normalize, QualityFilter
from tinyllama_model.config_fields import operational


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
    shard_mb: float = Field(
        256.0,
        gt=0,
        description="Uncompressed megabytes of Arrow data per shard of the clean and rejected tables.",
        json_schema_extra=operational(),
    )

    @model_validator(mode="after")
    def _bounds(self) -> PreprocessConfig:
        if self.min_mean_sentence_words > self.max_mean_sentence_words:
            raise ValueError("preprocess.min_mean_sentence_words is above max_mean_sentence_words")
        if self.min_chars > self.max_chars:
            raise ValueError("preprocess.min_chars is above max_chars")
        return self


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
    """The per-document steps in order: normalise, the empty check, the quality filters.

    Exact and near dedup follow them as stages over the whole corpus (`tasks.cleaning.dedup_stages`).
    """
    appendix = appendix_pattern(cfg.appendix_headings) if cfg.appendix_headings else None
    steps: list[Step] = [
        Normalize(cfg.wikipedia_cleanup_sources, appendix),
        NonEmpty(),
        *(QualityFilter(rule) for rule in build_filters(cfg)),
    ]
    return steps
