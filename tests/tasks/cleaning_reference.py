"""The per-document cleaning functions as they were before they were made faster, kept only as a reference.

Copied verbatim from `tasks.cleaning.normalize`, `filters` and `dedup` (the regex and numpy versions
the rewrites must match output for output); `test_cleaning_identity.py` checks the live functions
against these on adversarial strings and on a real corpus. The pipeline never imports this module.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from tasks.cleaning.dedup import shingles
from tasks.cleaning.filters import TextStats

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


def cut_appendix(text: str, pattern: re.Pattern[str]) -> str:
    """Everything before the first appendix heading (the whole text when there is none)."""
    match = pattern.search(text)
    return text[: match.start()] if match else text


def normalize(text: str, *, wikipedia_cleanup: bool, appendix: re.Pattern[str] | None = None) -> str:
    text = nfkc(text)
    if wikipedia_cleanup:
        if appendix is not None:
            text = cut_appendix(text, appendix)
        text = strip_reference_markers(text)
    return normalize_whitespace(text)


# A sentence ends at terminal punctuation (plus closing quotes/brackets) before whitespace, or at a
# paragraph break not preceded by one (a heading, a list item, a code block).
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)|(?<![.!?…\"'”’)\]])\n[ \t]*\n")
# Characters that prose rarely needs: markup, code and template debris.
_SYMBOLS = re.compile(r"[#{}<>|\\^~@$*=+_`]")


def text_stats(text: str) -> TextStats:
    n_chars = len(text)
    n_words = len(text.split())
    n_sentences = max(len(_SENTENCE_END.findall(text)) + (0 if _ends_sentence(text) else 1), 1)
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    repeated = (len(lines) - len(set(lines))) / len(lines) if lines else 0.0
    return TextStats(
        n_chars=n_chars,
        n_words=n_words,
        n_sentences=n_sentences,
        mean_sentence_words=n_words / n_sentences,
        distinct_chars=len(set(text)),
        symbol_ratio=len(_SYMBOLS.findall(text)) / n_chars if n_chars else 0.0,
        repeated_line_ratio=repeated,
    )


def _ends_sentence(text: str) -> bool:
    """True when the last sentence was already counted by its punctuation (or there is no text)."""
    tail = text.rstrip()
    return not tail or tail.rstrip("\"'”’)]")[-1:] in (".", "!", "?", "…")


@lru_cache(maxsize=1)
def _word_char_table() -> np.ndarray:
    """(65536,) bool: is this BMP code point a word character? (beyond the BMP: always yes)."""
    return np.array([chr(c).isalnum() or c == 0x5F for c in range(0x10000)], dtype=bool)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


_POWERS = np.cumprod(np.r_[np.uint64(1), np.full(63, 0x100000001B3, dtype=np.uint64)]).astype(np.uint64)


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes (n_words,) uint64, doc (n_words,) int64): every word of every text, in order."""
    if isinstance(texts, str):
        raise TypeError("word_hashes takes a sequence of texts, not one string")
    folded = [t.casefold() for t in texts]  # may change a text's length ("ß" -> "ss")
    joined = " ".join(folded)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)  # (N,)
    is_word = np.where(codes < 0x10000, _word_char_table()[np.minimum(codes, 0xFFFF)], True)  # (N,)
    edges = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)  # (n_words,) first character of each word
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    # Position of every character inside its word: index minus the index of the last word start.
    last_start = np.zeros(len(codes), dtype=np.int32)
    last_start[starts] = starts
    pos = np.arange(len(codes), dtype=np.int32) - np.maximum.accumulate(last_start)  # (N,)
    terms = (codes.astype(np.uint64) + np.uint64(1)) * _POWERS[np.minimum(pos, len(_POWERS) - 1)]
    terms[~is_word] = 0  # separators add nothing, so each sum below covers exactly one word
    hashes = _fmix64(np.add.reduceat(terms, starts))  # (n_words,) sum of (code + 1) * P^pos
    # Text i starts at character sum(len(t) + 1 for earlier folded t): the joining spaces count.
    text_starts = np.cumsum([0] + [len(t) + 1 for t in folded[:-1]])
    doc = np.searchsorted(text_starts, starts, side="right") - 1
    return hashes, doc


def shingle_hashes(texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The live shingling (unchanged) over these reference word hashes."""
    return shingles(*word_hashes(texts), len(texts), k)
