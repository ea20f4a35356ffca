"""Text normalisation that keeps meaning: Unicode NFKC, tidy whitespace, Wikipedia boilerplate out.

What survives on purpose: hyphens and dashes ("human-level", "state-of-the-art", "1990–2000"), curly
quotes, apostrophes, accented and non-Latin letters, paragraph breaks and leading indentation (code
in documentation). The first version of this pipeline deleted every non-ASCII and punctuation
character and produced "humanlevel" and "stateoftheart"; nothing here deletes a character class.

What goes: control and invisible characters (zero-width space, BOM, soft hyphen; ZWJ/ZWNJ stay, some
scripts need them), runs of spaces inside a line, runs of blank lines, and (for the sources listed in
the config, since "[i]" is an index in Python docs) Wikipedia reference markers like "[12]",
"[a]", "[citation needed]", "[edit]", and the trailing appendix sections ("See also", "References",
"External links", "Further reading", "Notes", ...) with everything after the first of them.
"""

from __future__ import annotations

import re
import unicodedata
import weakref
from collections.abc import Iterable

DEFAULT_APPENDIX_HEADINGS = (
    "See also",
    "References",
    "External links",
    "Further reading",
    "Notes",
    "Notes and references",
    "Footnotes",
    "Citations",
    "Sources",
    "Bibliography",
)

_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff]")
# Runs of 2+ spaces or tabs after the first visible character of a line, as `(?<=\S)[ \t]{2,}`; the
# patterns start with literal characters so that the regex engine can skip ahead to them.
_INNER_SPACES = re.compile(r"[ \t](?<=\S[ \t])[ \t]+")
_INNER_SPACES_NO_TABS = re.compile(r"  (?<=\S  ) *")  # the same for a text without tabs, scanned faster
_TRAILING_SPACES = re.compile(r"[ \t]+(?=\n|$)")
_SPACE_BEFORE_NEWLINE = re.compile(r"\n(?<=[ \t]\n)")  # is there any trailing space to remove?
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")
_REFERENCE_MARKER = re.compile(
    r"\[(?<=\S\[)(?:"  # a bracket after a visible character, the bracket first so it can be scanned for
    r"\d{1,4}(?:[,–-]\s?\d{1,4})*"  # [12], [3, 4], [5–7]
    r"|[a-z]{1,2}"  # explanatory notes [a], [b]
    r"|(?:note|nb|n)\s?\d+"  # [note 3], [nb 1]
    r"|edit"  # "[edit]" links of scraped pages
    r"|[^\[\]\n]{2,40}?\bneeded|[^\[\]\n]{2,30}?\?"  # [citation needed], [when?], [according to whom?]
    r"|(?:dubious|failed verification|disputed|unreliable source)[^\[\]\n]{0,30}"
    r")\]",
    re.IGNORECASE,
)


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def normalize_whitespace(text: str) -> str:
    """Unix newlines, no invisible characters, single spaces inside lines, at most one blank line.

    Each rewrite that cannot apply (told by a substring test, far cheaper than a regex scan) is skipped.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = (_INNER_SPACES if "\t" in text else _INNER_SPACES_NO_TABS).sub(" ", text)
    if _SPACE_BEFORE_NEWLINE.search(text):  # (spaces ending the text go with the last rstrip anyway)
        text = _TRAILING_SPACES.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip("\n").rstrip()


def strip_reference_markers(text: str) -> str:
    return _REFERENCE_MARKER.sub("", text) if "[" in text else text


def appendix_pattern(headings: Iterable[str]) -> re.Pattern[str]:
    """A heading on its own line ("References", "== References =="), or framed by runs of spaces in text
    whose newlines were flattened (as in the first version's corpus: "...end.  See also  Item...")."""
    names = "|".join(re.escape(h) for h in sorted(headings, key=len, reverse=True))
    pattern = re.compile(
        rf"(?:^|\n)[ \t]*(?:=+[ \t]*)?(?:{names})(?:[ \t]*=+)?[ \t]*(?=\n|$)"
        rf"|(?<=\S)[ ]{{2,}}(?:{names})(?:[ ]{{2,}}|[ ]*$)",
        re.IGNORECASE,
    )
    _APPENDIX_PATTERNS.add(pattern)
    return pattern


_APPENDIX_PATTERNS: weakref.WeakSet[re.Pattern[str]] = weakref.WeakSet()  # made by appendix_pattern
_SPACE_RUN = re.compile(" +")


def cut_appendix(text: str, pattern: re.Pattern[str]) -> str:
    """Everything before the first appendix heading (the whole text when there is none)."""
    match = _first_heading(text, pattern) if pattern in _APPENDIX_PATTERNS else pattern.search(text)
    return text[: match.start()] if match else text


def _first_heading(text: str, pattern: re.Pattern[str]) -> re.Match[str] | None:
    """`pattern.search(text)` for a pattern of `appendix_pattern`, trying only where a match can start.

    Such a match starts at the text's start, at a newline, or at the first of two spaces after a visible
    character; `pattern.match` at each of those (it sees the characters before, as `search` does) is
    far cheaper than `search`, whose leading alternation and lookbehind it cannot skip ahead to. The
    earliest start that matches among both kinds of candidates is the one `search` finds.
    """
    line = pattern.match(text)
    i = text.find("\n")
    while line is None and i >= 0:
        line = pattern.match(text, i)
        i = text.find("\n", i + 1)
    flat = None
    i = text.find("  ", 1)
    while flat is None and i >= 0 and (line is None or i < line.start()):
        flat = pattern.match(text, i)
        i = text.find("  ", _SPACE_RUN.match(text, i).end())  # the next run: inside one, no match starts
    return line if flat is None else flat  # flat was only looked for before line, so it is the earlier


def normalize(text: str, *, wikipedia_cleanup: bool, appendix: re.Pattern[str] | None = None) -> str:
    """NFKC, then boilerplate (before whitespace, which the flattened-heading pattern relies on)."""
    text = nfkc(text)
    if wikipedia_cleanup:
        if appendix is not None:
            text = cut_appendix(text, appendix)
        text = strip_reference_markers(text)
    return normalize_whitespace(text)
