"""Deduplication's hashing: exact (hash of normalised text) and near (MinHash over word shingles, LSH bands).

The stages that use these over a sharded corpus (keys and buckets on disk, partitions, the keep-first
pass) are in `tasks.cleaning.dedup_stages`.

Near dedup hashes whole batches of documents at once with numpy; no Python loop runs per word:
  words        runs of word characters (`str.isalnum()` or "_", as regex `\\w`) of the case-folded
               text, found on its UTF-32 code points; the batch's texts are joined by spaces
  word hashes  a polynomial hash of each word's code points, sum((code + 1) * P^position) (uint64,
               wrapping), read off running sums over the batch, then the MurmurHash3 64-bit finaliser
  shingles     k consecutive words of one document combined polynomially, folded to 32 bits
  signature    datasketch's "affine32" MinHash: fmix32 pre-mix, then the minimum over a document's
               shingles of a*h + b (uint32, wrapping) for each of `num_perm` (a, b) drawn exactly as
               `MinHash(seed=...)` draws them, so a signature equals datasketch's own
               `MinHash.update_batch` over the same shingle hashes (a test checks it); the per-document
               minimum is one `np.minimum.reduceat` over the batch
  bands        the signature cut into b bands of r rows, b and r chosen by datasketch's `MinHashLSH`
               rule for the threshold and weights; each band hashed to 64 bits with its band index, so
               two documents are LSH candidates when one of their band keys is equal

Hashes are stable (no Python `hash()`, which is salted per process), so results are reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np
from datasketch import MinHash, MinHashLSH

SCHEME = "affine32"
# P**i (mod 2**64) for a character at position i of its word; characters past 64 share the last power.
_P = 0x100000001B3
_POWERS = np.cumprod(np.r_[np.uint64(1), np.full(63, _P, dtype=np.uint64)]).astype(np.uint64)
_LAST_POWER = len(_POWERS) - 1
_SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)
_BATCH_CHARS = 1 << 20  # characters hashed per numpy batch (~40 MB of temporaries)
_SHINGLE_CHUNK = 1 << 12  # shingles per (num_perm, chunk) block: 2 MB, stays in cache


def dedup_key(text: str) -> str:
    """Case- and whitespace-insensitive content hash (documents equal up to those count as equal)."""
    return hashlib.sha256(" ".join(text.casefold().split()).encode()).hexdigest()


def exact_key(text: str) -> bytes:
    """`dedup_key` as its 32 raw bytes, the form the exact-dedup stage sorts and compares."""
    return bytes.fromhex(dedup_key(text))


# --- hashing --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _word_char_table() -> np.ndarray:
    """(65536,) bool: is this BMP code point a word character? (beyond the BMP: always yes)."""
    return np.array([chr(c).isalnum() or c == 0x5F for c in range(0x10000)], dtype=bool)


@lru_cache(maxsize=1)
def _word_char_table_all() -> np.ndarray:
    """(0x110000,) bool: `_word_char_table` for every code point, so one lookup serves any character."""
    return np.concatenate([_word_char_table(), np.ones(0x110000 - 0x10000, dtype=bool)])


def _inverse(odd: np.ndarray) -> np.ndarray:
    """x with x * odd == 1 (mod 2^64), by Newton's iteration: 3 correct low bits, doubled 5 times."""
    x = odd.copy()
    for _ in range(5):
        x *= np.uint64(2) - odd * x
    return x


_P_INVERSE = _inverse(np.array([_P], dtype=np.uint64))[0]
# (P^i, P^-i) for i below the longest batch so far; both tables are exact modulo 2^64
_position_power_cache: list[tuple[np.ndarray, np.ndarray]] = [(np.ones(0, dtype=np.uint64),) * 2]


def _position_powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """((>= n,) P^i, (>= n,) P^-i) mod 2^64, kept for the next batch (a quarter longer: grown seldom)."""
    powers, inverses = _position_power_cache[0]
    if len(powers) < n:
        powers, inverses = (np.full(n + n // 4, base, dtype=np.uint64) for base in (_P, _P_INVERSE))
        for table in (powers, inverses):
            table[0] = 1
            np.cumprod(table, out=table)
        _position_power_cache[0] = (powers, inverses)  # whole before it is shared, for threads meanwhile
    return powers, inverses


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
    """(hashes (n_words,) uint64, doc (n_words,) int64): every word of every text, in order.

    A word's sum of (code + 1) * P^position is read off running sums over the whole batch: with
    G[i] = (code[i] + 1) * P^i and C its prefix sum, the word [s, e) sums to (C[e] - C[s]) * P^-s, as
    P is odd and so invertible modulo 2^64. Characters past the 63rd of a word share P^63, a term added
    apart for the few longer words.
    """
    if isinstance(texts, str):
        raise TypeError("word_hashes takes a sequence of texts, not one string")
    folded = [t.casefold() for t in texts]  # may change a text's length ("ß" -> "ss")
    joined = " ".join(folded)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)  # (N,)
    n = len(codes)
    is_word = np.zeros(n + 2, dtype=bool)  # (N + 2,) padded with a non-word character at either end
    np.take(_word_char_table_all(), codes, out=is_word[1:-1])
    bounds = np.flatnonzero(is_word[1:] != is_word[:-1])  # starts and ends (exclusive) of words, in turn
    starts, ends = bounds[0::2], bounds[1::2]  # (n_words,) each
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    terms = codes.astype(np.uint64)
    terms += np.uint64(1)
    powers, inverses = _position_powers(n)
    terms *= powers[:n]
    running = np.zeros(n + 1, dtype=np.uint64)  # (N + 1,) running[i] = sum of terms before i
    np.cumsum(terms, out=running[1:])
    head = np.minimum(ends, starts + _LAST_POWER)  # end of the characters with a power of their own
    hashes = (running[head] - running[starts]) * inverses[starts]
    if (long := np.flatnonzero(ends > head)).size:
        plain = np.zeros(n + 1, dtype=np.uint64)  # running sums of code + 1, for the shared power
        np.cumsum(codes + np.uint64(1), out=plain[1:])
        hashes[long] += (plain[ends[long]] - plain[head[long]]) * _POWERS[_LAST_POWER]
    # Text i starts at character sum(len(t) + 1 for earlier folded t): the joining spaces count.
    text_starts = np.cumsum([0] + [len(t) + 1 for t in folded[:-1]])
    doc = np.searchsorted(text_starts, starts, side="right") - 1
    return _fmix64(hashes), doc


def shingle_hashes(texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes (n,) uint32, doc (n,) int64) of every k-word shingle that lies inside one text.

    A text with fewer than k words (but some) is one shingle of all its words.
    """
    return shingles(*word_hashes(texts), len(texts), k)


def shingles(w: np.ndarray, doc: np.ndarray, n_texts: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`shingle_hashes` from the texts' word hashes `w` and the text `doc` each word belongs to."""
    out_h, out_doc = [], []
    if len(w) >= k:
        n = len(w) - k + 1
        h = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            h = h * _SHINGLE_MULT + w[j : j + n]
        inside = doc[:n] == doc[k - 1 : k - 1 + n]  # the shingle does not cross into the next text
        out_h.append(h[inside])
        out_doc.append(doc[:n][inside])
    counts = np.bincount(doc, minlength=n_texts)
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


def signatures(texts: Sequence[str], hasher: MinHasher, shingle_size: int) -> Iterator[np.ndarray]:
    """(num_perm,) signature of each text, computed in numpy batches of ~1M characters."""
    batch: list[str] = []
    size = 0
    for text in [*texts, None]:
        if text is not None:
            batch.append(text)
            size += len(text)
        if batch and (text is None or size >= _BATCH_CHARS):
            hashes, doc = shingle_hashes(batch, shingle_size)
            yield from hasher.signatures(hashes, doc, len(batch))
            batch, size = [], 0


def lsh_bands(threshold: float, num_perm: int, recall_weight: float) -> tuple[int, int]:
    """(bands, rows per band) as datasketch's `MinHashLSH` picks them for these settings.

    Every candidate is verified by its estimated similarity, so extra candidates only cost time: the
    weights favour recall (with equal weights a pair right at the threshold is found less than half the
    time).
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(1.0 - recall_weight, recall_weight))
    return lsh.b, lsh.r


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: a hash of each band of each signature, salted with the band's index."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    for b in range(bands):
        h = np.full(len(sigs), b + 1, dtype=np.uint64)
        for value in sigs[:, b * rows : (b + 1) * rows].T.astype(np.uint64):
            h = _fmix64(h * _SHINGLE_MULT + value)
        keys[:, b] = h
    return keys


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows, as `LeanMinHash.jaccard` computes it."""
    return np.count_nonzero(a == b, axis=-1) / np.float64(a.shape[-1])
