"""Deduplication: exact (hash of normalised text) and near (MinHash LSH over word shingles, datasketch).

Both keep the FIRST document of a group, in input order, and name it as `duplicate_of` for the others.

Near dedup hashes whole batches of documents at once with numpy; no Python loop runs per word:
  words        runs of word characters (`str.isalnum()` or "_", as regex `\\w`) of the case-folded
               text, found on its UTF-32 code points; the batch's texts are joined by spaces
  word hashes  a polynomial hash of each word's code points, sum((code + 1) * P^position) (uint64,
               wrapping) by one `np.add.reduceat`, then the MurmurHash3 64-bit finaliser
  shingles     k consecutive words of one document combined polynomially, folded to 32 bits
  signature    datasketch's "affine32" MinHash: fmix32 pre-mix, then the minimum over a document's
               shingles of a*h + b (uint32, wrapping) for each of `num_perm` (a, b) drawn exactly as
               `MinHash(seed=...)` draws them, so a signature equals datasketch's own
               `MinHash.update_batch` over the same shingle hashes (a test checks it); the per-document
               minimum is one `np.minimum.reduceat` over the batch
  index        datasketch `MinHashLSH` over `LeanMinHash`es, queried then filled one document at a
               time in input order; a candidate is a duplicate only when its estimated Jaccard
               similarity is at least the threshold (LSH bands alone let through some pairs below it)

Hashes are stable (no Python `hash()`, which is salted per process), so results are reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

SCHEME = "affine32"
# P**i (mod 2**64) for a character at position i of its word; characters past 64 share the last power.
_POWERS = np.cumprod(np.r_[np.uint64(1), np.full(63, 0x100000001B3, dtype=np.uint64)]).astype(np.uint64)
_SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)
_BATCH_CHARS = 1 << 20  # characters hashed per numpy batch (~40 MB of temporaries)
_SHINGLE_CHUNK = 1 << 12  # shingles per (num_perm, chunk) block: 2 MB, stays in cache


def dedup_key(text: str) -> str:
    """Case- and whitespace-insensitive content hash (documents equal up to those count as equal)."""
    return hashlib.sha256(" ".join(text.casefold().split()).encode()).hexdigest()


class ExactDedup:
    def __init__(self) -> None:
        self.first: dict[str, str] = {}  # content hash -> doc_id of the kept document

    def check(self, doc_id: str, text: str) -> str | None:
        """doc_id of an earlier identical document, or None (and this one is remembered)."""
        first = self.first.setdefault(dedup_key(text), doc_id)
        return None if first == doc_id else first


# --- hashing --------------------------------------------------------------------------------------
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


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes (n_words,) uint64, doc (n_words,) int64): every word of every text, in order."""
    if isinstance(texts, str):
        raise TypeError("word_hashes takes a sequence of texts, not one string")
    joined = " ".join(t.casefold() for t in texts)
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
    # Text i starts at character sum(len(t) + 1 for earlier t): the joining spaces count.
    text_starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
    doc = np.searchsorted(text_starts, starts, side="right") - 1
    return hashes, doc


def shingle_hashes(texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes (n,) uint32, doc (n,) int64) of every k-word shingle that lies inside one text.

    A text with fewer than k words (but some) is one shingle of all its words.
    """
    w, doc = word_hashes(texts)
    out_h, out_doc = [], []
    if len(w) >= k:
        n = len(w) - k + 1
        h = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            h = h * _SHINGLE_MULT + w[j : j + n]
        inside = doc[:n] == doc[k - 1 : k - 1 + n]  # the shingle does not cross into the next text
        out_h.append(h[inside])
        out_doc.append(doc[:n][inside])
    counts = np.bincount(doc, minlength=len(texts))
    for i in np.flatnonzero((counts > 0) & (counts < k)):
        h = np.zeros(1, dtype=np.uint64)
        for x in w[doc == i]:
            h = h * _SHINGLE_MULT + x
        out_h.append(h)
        out_doc.append(np.array([i]))
    if not out_h:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
    h, d = np.concatenate(out_h), np.concatenate(out_doc)
    order = np.argsort(d, kind="stable")
    h, d = h[order], d[order]
    return (h ^ (h >> np.uint64(32))).astype(np.uint32), d


class MinHasher:
    """Signatures equal to datasketch `MinHash(num_perm, seed, scheme="affine32")` over the same hashes."""

    def __init__(self, num_perm: int = 128, seed: int = 1) -> None:
        self.num_perm, self.seed = num_perm, seed
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
        self.a = np.asarray(a, dtype=np.uint32)[:, None]  # (P, 1)
        self.b = np.asarray(b, dtype=np.uint32)[:, None]  # (P, 1)

    def signatures(self, hashes: np.ndarray, doc: np.ndarray, n_docs: int) -> np.ndarray:
        """(n_docs, P) uint32: per document, the minimum permuted hash of its shingles (`doc` sorted).

        A document without shingles keeps the all-max signature of an empty set.
        """
        sig = np.full((self.num_perm, n_docs), np.iinfo(np.uint32).max, dtype=np.uint32)  # (P, D)
        mixed = _fmix32(hashes.astype(np.uint32))
        for start in range(0, len(mixed), _SHINGLE_CHUNK):
            hv = mixed[None, start : start + _SHINGLE_CHUNK]  # (1, n)
            d = doc[start : start + _SHINGLE_CHUNK]  # (n,) sorted
            permuted = self.a * hv + self.b  # (P, n), wrapping uint32 arithmetic
            first = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])  # where each document's run starts
            ids = d[first]
            # Reduce along the contiguous axis; a document cut by a chunk edge is merged by the minimum.
            sig[:, ids] = np.minimum(sig[:, ids], np.minimum.reduceat(permuted, first, axis=1))
        return np.ascontiguousarray(sig.T)

    def lean(self, signature: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)


class NearDedup:
    """Near-duplicate detector: documents are checked once each, in the order in which to keep them."""

    def __init__(
        self,
        threshold: float = 0.7,
        num_perm: int = 128,
        shingle_size: int = 3,
        seed: int = 1,
        recall_weight: float = 0.9,
    ) -> None:
        self.threshold, self.shingle_size = threshold, shingle_size
        self.hasher = MinHasher(num_perm, seed)
        # datasketch picks the bands to balance missed pairs against extra candidates. Every candidate
        # is verified by its estimated similarity, so extra candidates only cost time: favour recall.
        # (With equal weights a pair right at the threshold is found less than half the time.)
        weights = (1.0 - recall_weight, recall_weight)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
        self.kept: dict[str, LeanMinHash] = {}

    def signatures(self, texts: Sequence[str]) -> Iterator[np.ndarray]:
        """(num_perm,) signature of each text, computed in numpy batches of ~2M characters."""
        batch: list[str] = []
        size = 0
        for text in [*texts, None]:
            if text is not None:
                batch.append(text)
                size += len(text)
            if batch and (text is None or size >= _BATCH_CHARS):
                hashes, doc = shingle_hashes(batch, self.shingle_size)
                yield from self.hasher.signatures(hashes, doc, len(batch))
                batch, size = [], 0

    def check_signature(self, doc_id: str, signature: np.ndarray) -> tuple[str, float] | None:
        """(doc_id of the kept near-duplicate, estimated Jaccard) or None, and then this one is kept."""
        m = self.hasher.lean(signature)
        best: tuple[str, float] | None = None
        for candidate in self.lsh.query(m):
            similarity = m.jaccard(self.kept[candidate])
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (candidate, similarity)
        if best is None:
            self.lsh.insert(doc_id, m)
            self.kept[doc_id] = m
        return best

    def check(self, doc_id: str, text: str) -> tuple[str, float] | None:
        return self.check_signature(doc_id, next(self.signatures([text])))

    def run(self, docs: Sequence[tuple[str, str]]) -> dict[str, tuple[str, float]]:
        """doc_id -> (kept doc_id, similarity) for every near-duplicate among (doc_id, text) pairs."""
        found = {}
        for (doc_id, _), signature in zip(docs, self.signatures([t for _, t in docs]), strict=True):
            match = self.check_signature(doc_id, signature)
            if match is not None:
                found[doc_id] = match
        return found
