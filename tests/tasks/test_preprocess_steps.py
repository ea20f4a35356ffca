"""The one step shape: a verdict per document (keep, changed, or dropped with a reason) run in order."""

from __future__ import annotations

import pytest

from tasks.cleaning.filters import MinWords
from tasks.cleaning.normalize import DEFAULT_APPENDIX_HEADINGS, appendix_pattern
from tasks.cleaning.pipeline import CleanDoc, Drop, Step, run_steps
from tasks.cleaning.steps import NonEmpty, Normalize, QualityFilter
from tasks.preprocess import PreprocessConfig, build_steps
from tasks.sources.document import Document
from tests.tasks.preprocess_oracle import ExactDuplicates, NearDedup, NearDuplicates

PROSE = "Small language models learn the statistics of text and predict the next token from the ones before."


def doc(doc_id: str, text: str, source: str = "local") -> CleanDoc:
    return CleanDoc(Document(doc_id, source, f"Title {doc_id}", text, url=f"file:///{doc_id}"))


class NoShouting(Step):
    """A new step: drops documents written in capitals."""

    name = "shouting"

    def __call__(self, d: CleanDoc) -> CleanDoc | Drop:
        return Drop(self.name, "all capitals") if d.text.isupper() else d


def test_a_new_step_plugs_in_and_its_drops_are_audited():
    docs = [doc("a", PROSE.replace(" ", "   ", 1) + "  \n\n"), doc("b", PROSE.upper()), doc("c", "\u200b \n")]
    run = run_steps([Normalize(["local"], None), NonEmpty(), NoShouting()], docs)

    assert [d.doc_id for d in run.kept] == ["a"] and run.kept[0].text == PROSE
    assert run.rejected == [
        {
            "doc_id": "c",
            "source": "local",
            "title": "Title c",
            "url": "file:///c",
            "n_chars": 0,  # the length of the text the step saw: normalised
            "rule": "empty",
            "detail": "no text left",
            "duplicate_of": None,
            "similarity": None,
        },
        {
            "doc_id": "b",
            "source": "local",
            "title": "Title b",
            "url": "file:///b",
            "n_chars": len(PROSE),
            "rule": "shouting",
            "detail": "all capitals",
            "duplicate_of": None,
            "similarity": None,
        },
    ]
    assert run.stage_rows() == [  # the normaliser only rewrites: no row of its own
        {"stage": "empty", "in": 3, "dropped": 1, "out": 2},
        {"stage": "shouting", "in": 2, "dropped": 1, "out": 1},
    ]
    assert run.stage("normalize").chars_out == 2 * len(PROSE)


def test_normalize_cleans_wikipedia_only_for_the_listed_sources():
    step = Normalize(["wikipedia"], appendix_pattern(DEFAULT_APPENDIX_HEADINGS))
    text = "Body.[1]\n\nReferences\n\n1. A book."
    assert step(doc("w", text, source="wikipedia")).text == "Body."
    assert step(doc("b", text, source="builtin")).text == text


def test_quality_filter_names_its_rule_and_reason():
    step = QualityFilter(MinWords(20))
    assert step.name == "min_words"
    kept = doc("a", PROSE + " " + PROSE)
    assert step(kept) is kept
    assert step(doc("b", "three words here")) == Drop("min_words", "3 words, not more than 20")


def test_dedup_steps_name_the_document_kept():
    exact = ExactDuplicates()
    assert isinstance(exact(doc("a", PROSE)), CleanDoc)
    assert exact(doc("b", PROSE.lower())) == Drop("exact_duplicate", "same text", "a", 1.0)

    near = NearDuplicates(NearDedup(threshold=0.7))
    docs = [doc("a", PROSE * 3), doc("b", PROSE * 3 + " indeed"), doc("c", "Entirely different words here.")]
    near.prepare(docs)
    verdicts = [near(d) for d in docs]
    assert verdicts[0] is docs[0] and verdicts[2] is docs[2]
    assert verdicts[1].rule == "near_duplicate" and verdicts[1].duplicate_of == "a"
    assert verdicts[1].detail.endswith(">= 0.7") and 0.7 <= verdicts[1].similarity <= 1


def test_near_dedup_refuses_documents_out_of_the_prepared_order():
    near = NearDuplicates(NearDedup())
    docs = [doc("a", PROSE), doc("b", PROSE + " more")]
    near.prepare(docs)
    with pytest.raises(RuntimeError, match="prepared for a"):
        near(docs[1])


def test_build_steps_follows_the_config():
    """The per-document steps; exact and near dedup follow as stages over every shard."""
    names = [s.name for s in build_steps(PreprocessConfig(long_documents="drop", near_dedup=False))]
    assert names == [
        "normalize",
        "empty",
        "min_chars",
        "max_chars",
        "min_words",
        "mean_sentence_words",
        "distinct_chars",
        "symbol_ratio",
        "repeated_lines",
    ]
