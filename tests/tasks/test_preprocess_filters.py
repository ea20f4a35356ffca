"""Quality filters: each a small piece that keeps, or drops with a reason."""

from __future__ import annotations

import pytest

from tasks.cleaning.filters import (
    MaxChars,
    MaxRepeatedLines,
    MaxSymbolRatio,
    MeanSentenceWords,
    MinChars,
    MinDistinctChars,
    MinWords,
    first_rejection,
    text_stats,
)
from tasks.cleaning.split import split_text

PROSE = (
    "Language models learn the statistics of text. They predict the next token from the previous ones. "
    "Small models train in minutes on a laptop, which makes them good for teaching.\n\n"
    "A second paragraph follows here. It has two sentences."
)


def test_stats_of_prose():
    s = text_stats(PROSE)
    assert s.n_chars == len(PROSE)
    assert s.n_words == len(PROSE.split())
    assert s.n_sentences == 5
    assert s.mean_sentence_words == pytest.approx(s.n_words / 5)
    assert s.symbol_ratio == 0.0 and s.repeated_line_ratio == 0.0


def test_headings_and_list_items_end_sentences():
    s = text_stats("History\n\nIt began in 1956.\n\nFirst item\n\nSecond item")
    assert s.n_sentences == 4


@pytest.mark.parametrize(
    "rule, text, keep",
    [
        (MinChars(100), PROSE, True),
        (MinChars(100), "Too short.", False),
        (MaxChars(100), PROSE, False),
        (MinWords(20), PROSE, True),
        (MinWords(20), "one two three " * 6, False),
        (MeanSentenceWords(3, 100), PROSE, True),
        (MeanSentenceWords(3, 100), "Yes. No. Ok. Hi. " * 10, False),
        (MeanSentenceWords(3, 100), "word " * 300, False),
        (MinDistinctChars(10), PROSE, True),
        (MinDistinctChars(10), "ab ab ab ba " * 20, False),
        (MaxSymbolRatio(0.1), PROSE, True),
        (MaxSymbolRatio(0.1), "{{#if:x|<b>y</b>|z}} = $a * b_c; " * 10, False),
        (MaxRepeatedLines(0.3), PROSE, True),
        (MaxRepeatedLines(0.3), "Home\nAbout\nContact\n" * 5 + "One real line.", False),
    ],
)
def test_each_filter_keeps_or_gives_a_reason(rule, text, keep):
    verdict = rule(text_stats(text))
    if keep:
        assert verdict is True
    else:
        assert verdict[0] is False and verdict[1]


def test_first_rejection_names_the_first_failing_rule():
    filters = [MinChars(10), MinWords(20), MaxSymbolRatio(0.01)]
    assert first_rejection(filters, text_stats(PROSE)) is None
    rule, reason = first_rejection(filters, text_stats("{{x}} y z w"))
    assert rule == "min_words" and "4 words" in reason


def test_split_long_text_at_paragraphs_into_balanced_parts():
    paragraphs = [f"Paragraph {i} " + "word " * (50 + i) for i in range(40)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    parts = split_text(text, 3000)
    assert all(len(p) <= 3000 for p in parts)
    assert len(parts) <= -(-len(text) // 3000) + 1
    assert min(len(p) for p in parts) > 1000  # balanced: no tiny tail part
    assert "\n\n".join(parts) == text  # cut only between paragraphs


def test_split_a_single_huge_paragraph_at_sentences_then_words():
    text = ("A sentence of several words. " * 200).strip() + " " + "x" * 2500
    parts = split_text(text, 1000)
    assert all(len(p) <= 1000 for p in parts)
    assert "".join(parts).replace(" ", "").replace("\n", "") == text.replace(" ", "")
