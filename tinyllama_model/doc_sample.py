"""A bounded sample of a split: whole documents spread evenly over it, the same every time.

Why: what follows training (the mixture's fit, calibration, adaptation, the corpus n-grams) and the
evaluate phase read a split whole, which on a corpus of billions of tokens takes hours and hundreds of GB.
They read a sample instead, and a sample of the first N tokens would be the first sources or topics
collected; documents taken at evenly spaced positions cover the split as it is. Whole documents, because
the document cache, adaptation and the neural cache start afresh at each one: a window cut from the
middle of a document would fit them to beginnings that are not there. A split within the budget is
taken whole, so results on small corpora are those of the whole split.
"""

from __future__ import annotations

import numpy as np

from tinyllama_model.tokenizer import EOS_ID

SCAN_CHUNK_TOKENS = 1 << 24  # the EOS scan compares this many tokens at a time: a 16 MB mask, not the split's


def spread_documents(lengths: np.ndarray, max_tokens: int) -> np.ndarray:
    """Indices, in order, of whole documents spread evenly over the split whose lengths sum to at most
    `max_tokens`: all of them when they fit; else, among the documents no longer than the budget, the
    middle one of each of m equal stretches, for the largest m tried that fits (from the m their mean
    length allows, down). Empty when no document fits the budget."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.sum()) <= max_tokens:
        return np.arange(len(lengths))
    candidates = np.flatnonzero(lengths <= max_tokens)  # a longer one can never be taken whole
    sizes = lengths[candidates]
    n, total = len(candidates), int(sizes.sum())
    m = min(n, n * max_tokens // max(total, 1))
    while m >= 1:
        picks = (2 * np.arange(m) + 1) * n // (2 * m)  # distinct, since m <= n
        size = int(sizes[picks].sum())
        if size <= max_tokens:
            return candidates[picks]
        m = min(m - 1, m * max_tokens // size)
    return candidates  # the loop returns by m = 1, so here there are none


def sample_stream(stream: np.ndarray, max_tokens: int, eos_id: int = EOS_ID) -> np.ndarray:
    """At most `max_tokens` of a packed stream (`EOS d1 EOS d2 ... EOS`, data.py), packed the same way:
    the stream itself when it fits; else the documents `spread_documents` picks, each with its opening EOS,
    and a closing EOS; else (one document longer than the budget) the stream's first `max_tokens`."""
    if len(stream) <= max_tokens:
        return stream
    starts = _positions_of(stream, eos_id)
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    ends = np.append(starts[1:], len(stream))
    if stream[-1] == eos_id:  # the closing EOS is no document: the sample gets its own
        starts, ends = starts[:-1], ends[:-1]
    picks = spread_documents(ends - starts, max_tokens - 1)
    if len(picks) == 0:
        return np.asarray(stream[:max_tokens])
    parts = [stream[starts[i] : ends[i]] for i in picks]
    return np.concatenate([*parts, np.array([eos_id], dtype=stream.dtype)])


def _positions_of(stream: np.ndarray, token: int) -> np.ndarray:
    """Where `token` occurs in a (memory-mapped) stream, found a chunk at a time."""
    found = [
        np.flatnonzero(stream[i : i + SCAN_CHUNK_TOKENS] == token) + i
        for i in range(0, len(stream), SCAN_CHUNK_TOKENS)
    ]
    return np.concatenate(found) if found else np.arange(0)
