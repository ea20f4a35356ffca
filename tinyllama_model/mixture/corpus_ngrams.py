"""The training corpus's n-grams: a second expert beside the model, holding what ten minutes did not teach it.

Why: ten minutes on a CPU buy ~3.5 passes over ~1M training tokens, and a 1.3M-parameter model comes out
of them having learned the corpus's common phrases only in part. A count table over the same tokens has
every phrase exactly. Mixed in after the document cache (doc_cache.py), it predicts what followed the
last 1..4 tokens anywhere in the training corpus. This is the n-gram side of infini-gram (Liu et al.,
2024) and of interpolated n-gram/neural models, with the mixture weights fitted on the validation split:

    p(x) = (1 - u) * p_model_and_document_cache(x) + u * count(context, x) / count(context)

u depends on the order of the longest context found and on log2 of its count
(`CorpusNgramsExpert.table_shape`). Contexts never cross a document boundary: an EOS may only open one
(the start of a document is a context too).

Storage: the model directory keeps the training token stream itself (`CORPUS_FILE`, 2 bytes a token),
or on a corpus past `train.mixture.corpus_ngram_max_tokens` whole documents spread over it
(doc_sample.py), so the model does not grow with the corpus; the tables are built from it when first asked
(`CorpusNgrams.tables`), since stored they would take many times the space. A context of up to 4 tokens
packs exactly into a uint64 (16 bits a token, vocabularies up to 65,536), so lookups are exact, with no
hash collisions.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyllama_model.checkpoint import CheckpointError
from tinyllama_model.errors import ConfigError
from tinyllama_model.mixture.expert import Expert, FitInputs, Proposal, Reading
from tinyllama_model.model_config import CORPUS_COUNT_BUCKETS, CORPUS_MAX_ORDER
from tinyllama_model.tokenizer import EOS_ID

CORPUS_FILE = "corpus_tokens.npy"
# 4 tokens of 16 bits fill a uint64; buckets: floor(log2(count of the context)), 0 .. 9 (512 or more)
MAX_ORDER, COUNT_BUCKETS = CORPUS_MAX_ORDER, CORPUS_COUNT_BUCKETS
MAX_VOCAB = 1 << 16
# what the tables may take per token of the stream, an upper bound: the stream as int64, per order four
# arrays of at most one 8-byte entry per token, and the sort's temporaries (six int64 arrays at most)
TABLE_BYTES_PER_TOKEN = {"stream": 8, "per_order": 32, "build": 48}


def table_bytes(n_tokens: int, orders: int) -> int:
    """An upper bound on the memory the tables of `n_tokens` take while built and after (`tables`)."""
    b = TABLE_BYTES_PER_TOKEN
    return n_tokens * (2 + b["stream"] + b["build"] + b["per_order"] * orders)


def corpus_file_tokens(model_dir: str | Path) -> int:
    """The number of tokens in a model directory's `CORPUS_FILE`, from its header alone (nothing else of
    it is read), once the header says a 1-D uint16 array that fills the file; `CheckpointError` if not."""
    path = Path(model_dir) / CORPUS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the model's config.json has corpus_ngram_weights, which need the "
            f"training tokens beside it; copy the whole model directory, or delete that key"
        )
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"npy format version {version} (1.0 or 2.0 expected)")
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
            data_bytes = path.stat().st_size - f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path} is not a readable .npy file ({e}); restore it from the model") from e
    if len(shape) != 1 or dtype != np.dtype(np.uint16):
        raise CheckpointError(
            f"{path} holds a {dtype} array of shape {shape}; the corpus n-grams need the 1-D uint16 token "
            "stream that training wrote: restore the file from the model, or delete corpus_ngram_weights"
        )
    if data_bytes != 2 * shape[0]:
        raise CheckpointError(
            f"{path} has {data_bytes:,} bytes of data where its header announces {shape[0]:,} tokens "
            "(truncated?); restore the file from the model"
        )
    return int(shape[0])


def _contexts(stream: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed contexts, target positions) of every position t >= order whose last `order` tokens stay
    within one document: an EOS may open the context, not sit inside it."""
    s = stream.astype(np.uint64)
    t = np.arange(order, len(stream))
    packed = np.zeros(len(t), dtype=np.uint64)
    for j in range(order):  # oldest token in the highest bits
        packed = (packed << np.uint64(16)) | s[t - order + j]
    eos_before = np.concatenate([[0], np.cumsum(stream == EOS_ID)])
    inside = eos_before[t] - eos_before[t - order + 1]  # EOS among stream[t - order + 1 : t]
    keep = inside == 0
    return packed[keep], t[keep]


class CorpusNgrams:
    """Counts of every n-gram (orders 1..`orders`) of a token stream, queried by context."""

    def __init__(self, tokens: np.ndarray, vocab_size: int, orders: int):
        if vocab_size > MAX_VOCAB or not 1 <= orders <= MAX_ORDER:
            raise ValueError(f"corpus n-grams need vocab_size <= {MAX_VOCAB} and orders in 1..{MAX_ORDER}")
        self.vocab, self.orders = vocab_size, orders
        self.tokens = np.asanyarray(tokens, dtype=np.uint16)  # what `save` writes (a memmap stays one)

    @functools.cached_property
    def tables(self) -> list[tuple[np.ndarray, ...]]:
        """Per order: sorted contexts, their counts, sorted (context id, next) pairs, their counts.

        Built on first use, not at load: loading a model to export, register or inspect it needs none.
        """
        stream = self.tokens.astype(np.int64)
        tables = []
        for order in range(1, self.orders + 1):
            packed, t = _contexts(stream, order)
            contexts, ids, totals = np.unique(packed, return_inverse=True, return_counts=True)
            pairs, counts = np.unique(ids * self.vocab + stream[t], return_counts=True)
            tables.append((contexts, totals, pairs, counts))
        return tables

    @classmethod
    def load(cls, model_dir: str | Path, vocab_size: int, orders: int) -> CorpusNgrams:
        """The tokens beside a model, memory-mapped (read as the tables are built), checked first: a 1-D
        uint16 array (`corpus_file_tokens`) of ids below `vocab_size`."""
        corpus_file_tokens(model_dir)
        path = Path(model_dir) / CORPUS_FILE
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        top = int(tokens.max()) if len(tokens) else 0
        if top >= vocab_size:
            raise CheckpointError(
                f"{path} holds token id {top:,}, outside the model's vocabulary of {vocab_size:,} ids: it "
                "belongs to another model; restore the file from this one, or delete corpus_ngram_weights"
            )
        return cls(tokens, vocab_size, orders)

    def save(self, model_dir: str | Path) -> None:
        """Write the tokens beside the model, atomically (a reader sees the old file or the new one)."""
        path = Path(model_dir) / CORPUS_FILE
        with open(path.with_suffix(".tmp"), "wb") as f:
            np.save(f, self.tokens)
        path.with_suffix(".tmp").replace(path)

    def stream_hits(self, stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per target position t (1 .. len-1, index t - 1): bucket (-1: no context found) and the corpus's
        probability of stream[t] after the longest context found."""
        stream = np.asarray(stream, dtype=np.int64)
        bucket = np.full(max(len(stream) - 1, 0), -1, dtype=np.int64)
        prob = np.zeros(len(bucket))
        for order in range(1, self.orders + 1):  # a longer context found overwrites a shorter one
            contexts, totals, pairs, counts = self.tables[order - 1]
            packed, t = _contexts(stream, order)
            if len(contexts) == 0 or len(packed) == 0:
                continue  # a corpus too short for this order, or a stream too short to ask
            i = np.minimum(np.searchsorted(contexts, packed), len(contexts) - 1)
            found = contexts[i] == packed
            i, t = i[found], t[found]
            pair = i * self.vocab + stream[t]
            j = np.minimum(np.searchsorted(pairs, pair), len(pairs) - 1)
            seen = np.where(pairs[j] == pair, counts[j], 0)
            bucket[t - 1] = self._bucket(order, totals[i])
            prob[t - 1] = seen / totals[i]
        return bucket, prob

    def next_tokens(self, recent: Sequence[int]) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(bucket, ids, probabilities) of what followed the longest context that ends `recent`, or None."""
        tail = np.asarray(recent[-self.orders :], dtype=np.int64)
        for order in range(len(tail), 0, -1):
            context = tail[-order:]
            if EOS_ID in context[1:]:
                continue
            contexts, totals, pairs, counts = self.tables[order - 1]
            packed = np.uint64(0)
            for token in context:
                packed = (packed << np.uint64(16)) | np.uint64(token)
            i = int(np.searchsorted(contexts, packed))
            if i < len(contexts) and contexts[i] == packed:
                lo, hi = np.searchsorted(pairs, [i * self.vocab, (i + 1) * self.vocab])
                ids = pairs[lo:hi] - i * self.vocab
                return int(self._bucket(order, totals[i])), ids, counts[lo:hi] / totals[i]
        return None

    @staticmethod
    def _bucket(order: int, totals: np.ndarray | int) -> np.ndarray:
        return (order - 1) * COUNT_BUCKETS + np.minimum(np.log2(totals).astype(np.int64), COUNT_BUCKETS - 1)


class CorpusNgramsExpert(Expert):
    """The corpus n-grams in the registry: built from the training split
    (`train.mixture.corpus_ngram_orders`), fitted with calibration; their tokens ship beside config.json."""

    name, keys, stage = "corpus_ngrams", ("corpus_ngram_weights",), "network"
    refusal = "transformers has no n-gram expert"

    def wanted(self, settings: Any) -> bool:
        return bool(settings.corpus_ngram_orders)

    def check(self, settings: Any, model_cfg: Any) -> None:
        if model_cfg.vocab_size > MAX_VOCAB:
            raise ConfigError(
                f"train.mixture.corpus_ngram_orders={settings.corpus_ngram_orders} needs a vocabulary of at "
                f"most {MAX_VOCAB:,} ids (16 bits a token), and the tokenizer has {model_cfg.vocab_size:,}; "
                "set train.mixture.corpus_ngram_orders=0 or a smaller tokenizer.vocab_size"
            )

    def fit_params(self, fit: FitInputs) -> CorpusNgrams | None:
        if fit.model.corpus_ngrams is not None:
            return fit.model.corpus_ngrams
        orders, vocab = fit.settings.corpus_ngram_orders, fit.model.config.vocab_size
        if not orders:
            return None
        return CorpusNgrams(fit.sample("train", fit.settings.corpus_ngram_max_tokens), vocab, orders)

    def params(self, model: Any) -> CorpusNgrams | None:
        return getattr(model, "corpus_ngrams", None)

    def table_shape(self, corpus: CorpusNgrams) -> tuple[int, int]:
        """Weights are indexed [order - 1][min(floor(log2(count)), 9)]."""
        return (corpus.orders, COUNT_BUCKETS)

    def hits(self, corpus: CorpusNgrams, reading: Reading) -> tuple[np.ndarray, np.ndarray]:
        return corpus.stream_hits(reading.tokens)

    def save(self, corpus: CorpusNgrams, model_dir: Path) -> dict[str, Any]:
        corpus.save(model_dir)
        return {"corpus_ngram_tokens": len(corpus.tokens)}

    def follower(
        self, corpus: CorpusNgrams, model: Any, prompts: Sequence[Sequence[int]], *_: Any
    ) -> _Histories:
        return _Histories(corpus, prompts)

    def card_line(self, cfg: Mapping[str, Any]) -> str | None:
        if not cfg.get("corpus_ngram_weights"):
            return None
        return (
            f"- corpus n-grams: what followed the last 1-{len(cfg['corpus_ngram_weights'])} tokens "
            "in the training corpus, mixed in after the cache; the training tokens ship beside the "
            "weights (`tinyllama_model/mixture/corpus_ngrams.py`)"
        )


class _Histories:
    """Each row's tokens so far, for the corpus's lookup of what followed their last 1..4."""

    def __init__(self, corpus: CorpusNgrams, prompts: Sequence[Sequence[int]]):
        self.corpus, self.histories = corpus, [[int(t) for t in p] for p in prompts]

    def observe(self, tokens: list[int], states: torch.Tensor | None) -> None:
        for history, t in zip(self.histories, tokens, strict=True):
            history.append(t)

    def propose(self, row: int, states: torch.Tensor | None) -> Proposal | None:
        hit = self.corpus.next_tokens(self.histories[row])
        if hit is None:
            return None
        bucket, ids, q = hit
        return Proposal(bucket, torch.from_numpy(q), torch.from_numpy(ids))
