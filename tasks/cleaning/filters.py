"""Quality filters as small composable pieces, each returning keep (True) or (False, reason).

As in datatrove, a filter is a named callable and the first one that says no names the rule recorded
for the dropped document. Filters look at `TextStats`, computed once per document with C-speed string,
regex and numpy operations (no Python loop over characters), so a few hundred MB of text stays cheap.

The defaults are the first version's bounds (100 to 50,000 characters, more than 20 words, a mean
sentence of 3 to 100 words, at least 10 distinct characters) plus two from the Gopher rules: the share
of symbol characters typical of code dumps and markup debris, and the share of lines that repeat an
earlier line (menus, boilerplate, generated lists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

# A sentence ends at terminal punctuation (plus closing quotes/brackets) before whitespace, or at a
# paragraph break not preceded by one (a heading, a list item, a code block). The two kinds share no
# character, so they are counted apart, each with a pattern whose first character the regex engine can
# skip ahead to.
_SENTENCE_END = re.compile(r"[.!?…][.!?…]*[\"'”’)\]]*(?=\s|$)")
_PARAGRAPH_END = re.compile(r"\n(?<![.!?…\"'”’)\]]\n)[ \t]*\n")
# Characters that prose rarely needs: markup, code and template debris (all ASCII, so counted as bytes
# of the UTF-8 text, where no byte of a longer character can equal one of them).
_SYMBOLS = b"#{}<>|\\^~@$*=+_`"


@dataclass(frozen=True)
class TextStats:
    n_chars: int
    n_words: int
    n_sentences: int
    mean_sentence_words: float
    distinct_chars: int
    symbol_ratio: float
    repeated_line_ratio: float

    def as_dict(self) -> dict[str, float | int]:
        return dict(vars(self))  # the fields are scalars: `dataclasses.asdict`'s deep copy only costs time


def text_stats(text: str) -> TextStats:
    n_chars = len(text)
    utf8 = text.encode("utf-8", "surrogatepass")  # a lone surrogate (never in a shard) would not encode
    codes = _code_units(text, utf8)
    n_words = len(text.split()) if codes is None else _count_words(codes)
    n_ends = len(_SENTENCE_END.findall(text)) + (len(_PARAGRAPH_END.findall(text)) if "\n" in text else 0)
    n_sentences = max(n_ends + (0 if _ends_sentence(text) else 1), 1)
    lines = [line for line in map(str.strip, text.splitlines()) if line]
    repeated = (len(lines) - len(set(lines))) / len(lines) if lines else 0.0
    return TextStats(
        n_chars=n_chars,
        n_words=n_words,
        n_sentences=n_sentences,
        mean_sentence_words=n_words / n_sentences,
        distinct_chars=len(set(text)) if codes is None else _count_distinct(codes),
        symbol_ratio=(len(utf8) - len(utf8.translate(None, _SYMBOLS))) / n_chars if n_chars else 0.0,
        repeated_line_ratio=repeated,
    )


# Word and distinct-character counts by numpy over a text's code points (faster than `str.split` and
# a set of characters), for the texts whose code points fit 16 bits: nearly all.
def _code_units(text: str, utf8: bytes) -> np.ndarray | None:
    """The text's code points as uint8 (ASCII) or uint16 (within the BMP), else None."""
    if text.isascii():
        return np.frombuffer(utf8, dtype=np.uint8)
    utf16 = text.encode("utf-16-le", "surrogatepass")
    if len(utf16) != 2 * len(text):  # a character beyond the BMP takes two code units
        return None
    return np.frombuffer(utf16, dtype=np.uint16)


@lru_cache(maxsize=1)
def _is_space() -> np.ndarray:
    """(65536,) bool: the BMP's whitespace as `str.split()` sees it."""
    return np.array([chr(c).isspace() for c in range(1 << 16)], dtype=bool)


def _count_words(codes: np.ndarray) -> int:
    """len(text.split()): the visible characters that start the text or follow whitespace."""
    if len(codes) == 0:
        return 0
    space = _is_space()[codes]
    return int(not space[0]) + int(np.count_nonzero(space[:-1] > space[1:]))


def _count_distinct(codes: np.ndarray) -> int:
    seen = np.zeros(128 if codes.dtype == np.uint8 else 1 << 16, dtype=bool)
    seen[codes] = True
    return int(np.count_nonzero(seen))


def _ends_sentence(text: str) -> bool:
    """True when the last sentence was already counted by its punctuation (or there is no text)."""
    tail = text.rstrip()
    return not tail or tail.rstrip("\"'”’)]")[-1:] in (".", "!", "?", "…")


Verdict = bool | tuple[bool, str]


class Filter(Protocol):
    name: str

    def __call__(self, stats: TextStats) -> Verdict: ...


@dataclass(frozen=True)
class MinChars:
    minimum: int
    name: str = "min_chars"

    def __call__(self, s: TextStats) -> Verdict:
        return s.n_chars >= self.minimum or (False, f"{s.n_chars} characters < {self.minimum}")


@dataclass(frozen=True)
class MaxChars:
    maximum: int
    name: str = "max_chars"

    def __call__(self, s: TextStats) -> Verdict:
        return s.n_chars <= self.maximum or (False, f"{s.n_chars} characters > {self.maximum}")


@dataclass(frozen=True)
class MinWords:
    more_than: int
    name: str = "min_words"

    def __call__(self, s: TextStats) -> Verdict:
        return s.n_words > self.more_than or (False, f"{s.n_words} words, not more than {self.more_than}")


@dataclass(frozen=True)
class MeanSentenceWords:
    low: float
    high: float
    name: str = "mean_sentence_words"

    def __call__(self, s: TextStats) -> Verdict:
        m = s.mean_sentence_words
        return self.low <= m <= self.high or (
            False,
            f"{m:.1f} words per sentence, outside {self.low}-{self.high}",
        )


@dataclass(frozen=True)
class MinDistinctChars:
    minimum: int
    name: str = "distinct_chars"

    def __call__(self, s: TextStats) -> Verdict:
        return s.distinct_chars >= self.minimum or (False, f"{s.distinct_chars} distinct characters")


@dataclass(frozen=True)
class MaxSymbolRatio:
    maximum: float
    name: str = "symbol_ratio"

    def __call__(self, s: TextStats) -> Verdict:
        return s.symbol_ratio <= self.maximum or (False, f"{s.symbol_ratio:.3f} symbols per character")


@dataclass(frozen=True)
class MaxRepeatedLines:
    maximum: float
    name: str = "repeated_lines"

    def __call__(self, s: TextStats) -> Verdict:
        return s.repeated_line_ratio <= self.maximum or (
            False,
            f"{s.repeated_line_ratio:.2f} of lines repeat an earlier line",
        )


def first_rejection(filters: list[Filter], stats: TextStats) -> tuple[str, str] | None:
    """(rule, reason) of the first filter that drops the document, or None when all keep it."""
    for f in filters:
        verdict = f(stats)
        if verdict is True:
            continue
        reason = verdict[1] if isinstance(verdict, tuple) else "rejected"
        return f.name, reason
    return None
