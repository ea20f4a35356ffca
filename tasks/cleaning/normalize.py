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
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}")  # runs after the first visible character of a line
_TRAILING_SPACES = re.compile(r"[ \t]+(?=\n|$)")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")
_REFERENCE_MARKER = re.compile(
    r"(?<=\S)\[(?:"
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
    """Unix newlines, no invisible characters, single spaces inside lines, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _INNER_SPACES.sub(" ", text)
    text = _TRAILING_SPACES.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip("\n").rstrip()


def strip_reference_markers(text: str) -> str:
    return _REFERENCE_MARKER.sub("", text)


def appendix_pattern(headings: Iterable[str]) -> re.Pattern[str]:
    """A heading on its own line ("References", "== References =="), or framed by runs of spaces in text
    whose newlines were flattened (as in the first version's corpus: "...end.  See also  Item...")."""
    names = "|".join(re.escape(h) for h in sorted(headings, key=len, reverse=True))
    return re.compile(
        rf"(?:^|\n)[ \t]*(?:=+[ \t]*)?(?:{names})(?:[ \t]*=+)?[ \t]*(?=\n|$)"
        rf"|(?<=\S)[ ]{{2,}}(?:{names})(?:[ ]{{2,}}|[ ]*$)",
        re.IGNORECASE,
    )


def cut_appendix(text: str, pattern: re.Pattern[str]) -> str:
    """Everything before the first appendix heading (the whole text when there is none)."""
    match = pattern.search(text)
    return text[: match.start()] if match else text


def normalize(text: str, *, wikipedia_cleanup: bool, appendix: re.Pattern[str] | None = None) -> str:
    """NFKC, then boilerplate (before whitespace, which the flattened-heading pattern relies on)."""
    text = nfkc(text)
    if wikipedia_cleanup:
        if appendix is not None:
            text = cut_appendix(text, appendix)
        text = strip_reference_markers(text)
    return normalize_whitespace(text)
