"""Normalisation keeps meaning: punctuation and Unicode survive, boilerplate and invisible junk go."""

from __future__ import annotations

import pytest

from tasks.cleaning.normalize import (
    DEFAULT_APPENDIX_HEADINGS,
    appendix_pattern,
    normalize,
    normalize_whitespace,
    strip_reference_markers,
)

APPENDIX = appendix_pattern(DEFAULT_APPENDIX_HEADINGS)


def clean(text: str, wiki: bool = True) -> str:
    return normalize(text, wikipedia_cleanup=wiki, appendix=APPENDIX)


def test_punctuation_and_letters_survive():
    text = "Human-level AI — state-of-the-art “models” aren’t naïve; 1990–2000, café, Zürich, 東京, Ελληνικά!"
    assert clean(text) == text


def test_nfkc_folds_compatibility_forms_only():
    assert clean("ﬁne ﬂow，Ｆｕｌｌｗｉｄｔｈ\u00a0space") == "fine flow,Fullwidth space"


def test_whitespace_collapsed_but_paragraphs_and_indentation_kept():
    raw = "First  line\t\twith   gaps.  \r\nSecond line.\r\n\r\n\r\n    indented code\n\n\n\nEnd.\u200b\ufeff"
    assert normalize_whitespace(raw) == "First line with gaps.\nSecond line.\n\n    indented code\n\nEnd."


def test_zero_width_joiners_needed_by_scripts_stay():
    assert normalize_whitespace("می\u200cخواهم") == "می\u200cخواهم"


@pytest.mark.parametrize(
    "marked, plain",
    [
        ("Paris is large.[12] It is old.[3][4]", "Paris is large. It is old."),
        ("A claim[citation needed] and another[when?].", "A claim and another."),
        ("Note[a] and range[5–7] and note[note 3].", "Note and range and note."),
        ("History[edit]", "History"),
    ],
)
def test_reference_markers_are_removed(marked, plain):
    assert strip_reference_markers(marked) == plain


def test_brackets_that_are_not_markers_stay():
    assert (
        strip_reference_markers("a list [1, 2, 3] and [x for x in y]")
        == "a list [1, 2, 3] and [x for x in y]"
    )


def test_appendix_sections_cut_on_their_own_line():
    text = "Intro.\n\nHistory\n\nBody text.\n\nSee also\n\nOther article\n\nReferences\n\n1. A book."
    assert clean(text) == "Intro.\n\nHistory\n\nBody text."
    assert clean("Body.\n== External links ==\n* site") == "Body."


def test_appendix_sections_cut_in_flattened_text():
    # The first version's corpus lost its newlines; headings survive framed by runs of spaces.
    text = "The body ends here.  See also  Applications of AI Machine learning  References   External links"
    assert clean(text) == "The body ends here."


def test_a_sentence_mentioning_references_is_not_a_heading():
    text = "References to the work of Turing are common. See also the notes below."
    assert clean(text) == text


def test_builtin_docs_keep_indexes():
    assert clean("Use a[i] and s[1:2][0].", wiki=False) == "Use a[i] and s[1:2][0]."
