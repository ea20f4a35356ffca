"""Long documents split at paragraph boundaries instead of dropped.

The first version dropped every article over 50,000 characters: the longest, often the best, Wikipedia
articles. Here a long document becomes ceil(n / max_chars) parts of similar size, cut between
paragraphs (between sentences, then between words, only for a single paragraph longer than a part).
The parts keep their document's `doc_id` and are numbered by `part`, so anything keyed on `doc_id`
(such as the train/validation split) keeps all parts of one article on the same side.
"""

from __future__ import annotations

import itertools
import math
import re

_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+")


def split_text(text: str, max_chars: int) -> list[str]:
    """Parts of at most `max_chars` characters, of balanced size, cut at the coarsest boundary possible."""
    if len(text) <= max_chars:
        return [text]
    pieces = _pieces(text, max_chars)
    # ends[j]: characters from the text start to the end of piece j, separators included.
    ends = list(itertools.accumulate(len(sep) + len(piece) for piece, sep in pieces))
    ends[:] = [e - len(pieces[0][1]) for e in ends]  # the first piece has no separator before it

    def length(first: int, last: int) -> int:  # of a part made of pieces first..last
        before = ends[first - 1] + len(pieces[first][1]) if first else 0
        return ends[last] - before

    parts, first = [], 0
    while length(first, len(pieces) - 1) > max_chars:
        remaining = length(first, len(pieces) - 1)
        goal = remaining / math.ceil(remaining / max_chars)  # re-balanced for what is left
        fitting = [j for j in range(first, len(pieces)) if length(first, j) <= max_chars]
        last = min(fitting, key=lambda j: abs(length(first, j) - goal))
        parts.append(_join(pieces[first : last + 1]))
        first = last + 1
    parts.append(_join(pieces[first:]))
    return parts


def _join(pieces: list[tuple[str, str]]) -> str:
    return pieces[0][0] + "".join(sep + piece for piece, sep in pieces[1:])


def _pieces(text: str, max_chars: int) -> list[tuple[str, str]]:
    """(piece, separator before it) with every piece <= max_chars: paragraphs, else sentences, else words."""
    out: list[tuple[str, str]] = []
    for paragraph in text.split("\n\n"):
        if len(paragraph) <= max_chars:
            out.append((paragraph, "\n\n"))
            continue
        first = True
        for sentence in _SENTENCE_BREAK.split(paragraph):
            for chunk in _hard_wrap(sentence, max_chars):
                out.append((chunk, "\n\n" if first else " "))
                first = False
    return out


def _hard_wrap(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    chunks, current = [], ""
    for word in sentence.split(" "):
        while len(word) > max_chars:  # a "word" longer than a part: cut it
            if current:
                chunks.append(current)
                current = ""
            chunks.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            chunks.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        chunks.append(current)
    return chunks
