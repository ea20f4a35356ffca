"""The faster per-document cleaning functions give exactly what the plain versions gave.

Preprocess's output (kept documents, their text, rejections, dedup decisions) must not change when its
per-document work gets faster, so every rewritten function is compared, output for output, with its
former version (`tests/tasks/cleaning_reference.py`) on many seeded random strings built from the
fragments each rewrite reasons about (runs of spaces and tabs, CRLF, invisible characters, every kind
of reference marker, appendix headings at the start, the end and flattened between runs of spaces,
case-folding oddities, code) and on a real corpus when one is at hand.
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from tasks.cleaning import dedup, filters, normalize
from tests.tasks import cleaning_reference as ref

WORDS = [
    "word",
    "Café",
    "ß",
    "İstanbul",
    "ı",
    "東京",
    "naïve",
    "x_y",
    "a1",
    "\U0001f600",
    "ǅ",
    "ﬁne",
    "Ｆｕｌｌ",
]
PUNCTUATION = [".", "!", "?", "…", "...", "?!", '"', "'", "”", "’", ")", "]", ",", ";", "—", ".”", ".)"]
SPACES = [" ", "  ", "   ", "\t", " \t", "\t ", "\t\t", "\n", "\n\n", "\n\n\n", " \n", "\t\n", "\r\n", "\r"]
SPACES += [
    "\r\r\n",
    "\n \n",
    "\n\t\n",
    "\n  \n\n",
    "\u00a0",
    "\u3000",
    "\u2028",
    "\u2029",
    "\x0b",
    "\x0c",
    "\x85",
]
SPACES += ["\x1c", "\x1f", "\u180e", "\u2009", "\u205f"]
INVISIBLE = ["\u200b", "\ufeff", "\u00ad", "\u2060", "\x00", "\x07", "\x7f", "\x9f", "\u200c", "\u200d"]
MARKERS = ["[12]", "[3, 4]", "[5–7]", "[5-7]", "[5- 7]", "[12345]", "[a]", "[ab]", "[abc]", "[note 3]"]
MARKERS += ["[nb 1]", "[n2]", "[NOTE 4]", "[edit]", "[EDIT]", "[citation needed]", "[Citation Needed]"]
MARKERS += ["[when?]", "[according to whom?]", "[dubious – discuss]", "[failed verification]", "[disputed]"]
MARKERS += ["[unreliable source?]", "[", "]", "[[1]]", "[i]", "[1:2]", "[x for x in y]", "[\n1]", "[]"]
HEADINGS = ["References", "See also", "== References ==", "=== Notes ===", "Notes and references", "Notes"]
HEADINGS += ["External links", "Further reading", "Footnotes", "Citations", "Sources", "Bibliography"]
HEADINGS += ["REFERENCES", "references", "Bıbliography", "ſources", "=References=", "==See also", "Notes =="]
CODE = ["def f(x):", "    return x", "{a: b}", "<div>", "#include", "x = y + 1", "`code`", "a|b", "\\n"]
CODE += ["$", "@", "~", "^", "*", "_", "+", "==", "s[1:2][0]"]
FRAGMENTS = [WORDS, PUNCTUATION, SPACES, INVISIBLE, MARKERS, HEADINGS, CODE]
HAND_PICKED = [
    "",
    " ",
    "\n",
    "References",
    "  References  ",
    "Body.  See also",
    "Body.  See also  Item  References   External links",
    "Body.\nReferences\n1. A book.",
    "Body.\n\n== External links ==\n* site",
    "References to Turing are common. See also the notes below.",
    "\n\nNotes\n",
    "Body.  See also  Item\nReferences\nA book.",
    "Body.\nReferences\nA book.  See also  Item",
    "x  \t  y\t\tz \n\n\n\n w",
    "Paris is large.[12] It is old.[3][4] [5]",
    "a\r\nb\rc\r\n\r\nd",
    "\ufeffHello\u200b world\u00ad!",
    "    indented code\n\n\n    more",
    "The end…” Next.\n\nHeading\n\nText",
]


def random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 40)):
            parts.append(rng.choice(rng.choice(FRAGMENTS)))
            parts.append(rng.choice(["", "", " ", " ", "  ", "\n", "\n\n", "\t"]))
        texts.append("".join(parts))
    return texts


TEXTS = HAND_PICKED + random_texts(0, 3000)
APPENDIX = normalize.appendix_pattern(normalize.DEFAULT_APPENDIX_HEADINGS)


def differences(old, new, texts: list[str]) -> list[str]:
    return [t for t in texts if old(t) != new(t)]


@pytest.mark.parametrize(
    "name",
    ["nfkc", "normalize_whitespace", "strip_reference_markers"],
)
def test_normalize_pieces_equal_the_reference(name):
    texts = TEXTS + [normalize.nfkc(t) for t in TEXTS]
    assert differences(getattr(ref, name), getattr(normalize, name), texts) == []


@pytest.mark.parametrize(
    "headings",
    [normalize.DEFAULT_APPENDIX_HEADINGS, ["Notes"], ["Weird  heading", "=Eq", " lead", "x"]],
)
def test_cut_appendix_equals_the_reference(headings):
    pattern = normalize.appendix_pattern(headings)
    texts = TEXTS + [f"Body text.  {h}  more" for h in headings] + [f"{h}\nmore" for h in headings]
    texts += [f"Body.\n{h}" for h in headings] + [f"a  b  {h}" for h in headings]
    old, new = (lambda t: ref.cut_appendix(t, pattern)), (lambda t: normalize.cut_appendix(t, pattern))
    assert differences(old, new, texts) == []
    assert any(new(t) != t for t in texts)  # some headings were found and cut


def test_cut_appendix_with_any_other_pattern_is_a_plain_search():
    pattern = re.compile(r"(?<=\w) Notes")
    assert normalize.cut_appendix("Some Notes here", pattern) == "Some"
    assert (
        differences(
            lambda t: ref.cut_appendix(t, pattern), lambda t: normalize.cut_appendix(t, pattern), TEXTS
        )
        == []
    )


@pytest.mark.parametrize("wiki", [True, False])
def test_normalize_equals_the_reference(wiki):
    old = lambda t: ref.normalize(t, wikipedia_cleanup=wiki, appendix=APPENDIX)
    new = lambda t: normalize.normalize(t, wikipedia_cleanup=wiki, appendix=APPENDIX)
    assert differences(old, new, TEXTS) == []


def test_text_stats_equal_the_reference():
    texts = TEXTS + [normalize.normalize(t, wikipedia_cleanup=True, appendix=APPENDIX) for t in TEXTS]
    texts += ["x\ud800y", "a.\n\nb", "Heading\n\nText.", "#" * 50, "é" * 10 + "#"]
    assert differences(ref.text_stats, filters.text_stats, texts) == []


def assert_same_arrays(old: tuple[np.ndarray, ...], new: tuple[np.ndarray, ...]) -> None:
    assert len(old) == len(new)
    for a, b in zip(old, new, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


LONG_WORDS = ["x" * 63, "y" * 64, "z" * 65, "é" * 200 + " " + "w" * 130, "ß" * 40, "\U0001f600" * 70]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_word_and_shingle_hashes_equal_the_reference(k):
    texts = TEXTS + LONG_WORDS
    for start in range(0, len(texts), 500):
        batch = texts[start : start + 500]
        assert_same_arrays(ref.word_hashes(batch), dedup.word_hashes(batch))
        assert_same_arrays(ref.shingle_hashes(batch, k), dedup.shingle_hashes(batch, k))
    for batch in ([""], ["", ""], LONG_WORDS, [" ".join(LONG_WORDS)], ["a"], ["!!"]):
        assert_same_arrays(ref.word_hashes(batch), dedup.word_hashes(batch))
        assert_same_arrays(ref.shingle_hashes(batch, k), dedup.shingle_hashes(batch, k))


def corpus_texts(path) -> list[str]:
    """Each article as it is, and with its flattened double spaces turned back into line breaks."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r.get("content") or r.get("text") or "" for r in rows]
    return texts + [t.replace("  ", "\n") for t in texts] + [t.replace("  ", "\n\n   ") for t in texts]


def test_real_corpus_gives_the_reference_results(shared_corpus):
    raw = corpus_texts(shared_corpus)
    for wiki in (True, False):
        old = [ref.normalize(t, wikipedia_cleanup=wiki, appendix=APPENDIX) for t in raw]
        new = [normalize.normalize(t, wikipedia_cleanup=wiki, appendix=APPENDIX) for t in raw]
        assert old == new
    assert [ref.text_stats(t) for t in raw + new] == [filters.text_stats(t) for t in raw + new]
    assert_same_arrays(ref.shingle_hashes(new, 3), dedup.shingle_hashes(new, 3))


def test_word_hashes_grow_their_cached_powers_for_a_longer_batch(monkeypatch):
    monkeypatch.setattr(dedup, "_position_power_cache", [(np.ones(0, dtype=np.uint64),) * 2])
    for batch in (["a b"], TEXTS[:50], TEXTS, ["short again"]):
        assert_same_arrays(ref.word_hashes(batch), dedup.word_hashes(batch))
    powers, inverses = dedup._position_power_cache[0]
    assert len(powers) == len(inverses) >= len(" ".join(t.casefold() for t in TEXTS))
    assert (powers * inverses == 1).all()  # P^i * P^-i, modulo 2^64
