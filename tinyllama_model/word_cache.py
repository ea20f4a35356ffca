"""Encoding by words: a BPE model's ids for a text are its words' ids end to end, and words repeat.

Why this is exact. SentencePiece's BPE starts from the characters of the normalised text (a
user-defined symbol such as "\\n" is one frozen symbol) and merges adjacent symbols into vocabulary
pieces, highest score first, leftmost on ties. A merge in one stretch of text changes nothing in
another unless some vocabulary piece spans the boundary between them, so where none can, each stretch
encoded alone gives exactly the ids SentencePiece gives it inside the text (unknown pieces become bytes
one piece at a time). The trainer puts "▁" (an escaped space) only at the start of a piece or in a
whitespace-only piece, so no piece holds a "▁" right after another character: the normalised text is
cut before the first "▁" of every run, and a text's ids are the ids of its first stretch followed by
those of each "▁"-led word, which a dict remembers. `boundary_problem` checks that property on the
vocabulary; a model without it (trained with whitespace as a suffix, say) gets no cache.

Normalisation is not local (NFKC composes across characters; a dummy prefix or the removal of extra
spaces depend on the neighbours), so the model normalises whole texts and the words go through a copy
of the model whose normaliser is the identity: the same BPE sees the same characters.
"""

from __future__ import annotations

import re
import threading
from functools import reduce
from operator import iadd

import sentencepiece as spm

try:  # sentencepiece's model proto needs protobuf, which sentencepiece itself does not require
    from sentencepiece.sentencepiece_model_pb2 import ModelProto, TrainerSpec
except (ImportError, TypeError):  # no protobuf, or one too old for the generated module
    ModelProto = TrainerSpec = None  # type: ignore[assignment,misc]

SPACE = "\u2581"
_RUN = re.compile(f"({SPACE}{SPACE}+)")
_SPANS_A_CUT = re.compile(f"[^{SPACE}]{SPACE}")


def boundary_problem(proto: ModelProto) -> str | None:
    """Why words cannot be encoded apart with this model, or None when they can."""
    if proto.trainer_spec.model_type != TrainerSpec.BPE:
        return "the model is not BPE (the cut-invariance argument is made for BPE merges only)"
    for i, piece in enumerate(proto.pieces):
        if _SPANS_A_CUT.search(piece.piece):
            return f"piece {i} {piece.piece!r} has a {SPACE!r} after another character, so merges cross words"
    return None


def split_words(normalized: str) -> list[str]:
    """The text cut before the first "▁" of every run: what comes before the first cut, then each word
    without the "▁" it starts with (a run of n spaces leaves n - 1 in front of its word).

    `str.split` does the common case of single spaces; only runs of two or more need a regex.
    """
    if SPACE + SPACE not in normalized:
        return normalized.split(SPACE)
    pieces = _RUN.split(normalized)  # text, run, text, run, ..., text
    words = pieces[0].split(SPACE)
    for i in range(1, len(pieces), 2):
        after = pieces[i + 1].split(SPACE)
        after[0] = pieces[i][1:] + after[0]
        words += after
    return words


def identity_copy(proto: ModelProto) -> spm.SentencePieceProcessor:
    """The same model with a normaliser that changes nothing, to encode text the model normalised already."""
    copy = ModelProto()
    copy.CopyFrom(proto)
    spec = copy.normalizer_spec
    spec.name = "identity"
    spec.precompiled_charsmap = b""
    spec.add_dummy_prefix = False
    spec.remove_extra_whitespaces = False
    spec.escape_whitespaces = False
    return spm.SentencePieceProcessor(model_proto=copy.SerializeToString())


class WordCache:
    """Encodes batches of texts with a dict from word to ids in front of a SentencePiece BPE model.

    The dict keeps the first `max_words` distinct words it meets (no eviction: frequent words come
    early in Zipf-distributed text); a word met after that is encoded for its batch and forgotten.
    One batch at a time: a batch's forgotten words are in the dict while it is encoded.
    """

    def __init__(self, sp: spm.SentencePieceProcessor, proto: ModelProto):
        self._normalize = sp.normalize
        self._raw = identity_copy(proto)
        self._ids: dict[str, tuple[int, ...]] = {}  # word after its "▁" -> ids of "▁" + word
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def encode_batch(self, texts: list[str], num_threads: int, max_words: int) -> list[list[int]]:
        with self._lock:
            return self._encode_batch(texts, num_threads, max_words)

    def _encode_batch(self, texts: list[str], num_threads: int, max_words: int) -> list[list[int]]:
        docs = [split_words(n) for n in self._normalize(texts)]
        firsts = [words.pop(0) for words in docs]  # the text before its first word: no "▁" in front
        known = self._ids
        missing = list(set().union(*docs).difference(known))
        encoded = self._raw.encode(firsts + [SPACE + w for w in missing], num_threads=num_threads)
        n_docs = len(docs)
        room = max(0, max_words - len(known))
        known.update(zip(missing, map(tuple, encoded[n_docs:]), strict=True))
        try:
            get = known.__getitem__
            # each text's ids: its first stretch's list, extended in place by each word's tuple
            pairs = zip(encoded[:n_docs], docs, strict=True)
            return [reduce(iadd, map(get, words), first) for first, words in pairs]
        finally:
            for word in missing[room:]:
                del known[word]


def word_cache(sp: spm.SentencePieceProcessor) -> tuple[WordCache | None, str | None]:
    """A cache for this model, or None and the reason it would not be exact (or cannot be built)."""
    if ModelProto is None:
        return None, "protobuf is not installed, so the model's normaliser cannot be replaced"
    proto = ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    problem = boundary_problem(proto)
    return (None, problem) if problem else (WordCache(sp, proto), None)
