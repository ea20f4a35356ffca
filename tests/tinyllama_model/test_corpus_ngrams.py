"""Corpus n-grams: exact counts within documents, one mixture for scoring and generating, saved along."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from tinyllama_model import ModelConfig, TinyLlama
from tinyllama_model.checkpoint import CheckpointError
from tinyllama_model.data import pack_documents
from tinyllama_model.errors import ConfigError
from tinyllama_model.evaluation import evaluate_stream, sliding_logprobs
from tinyllama_model.generate import _Experts, generate_ids
from tinyllama_model.mixture.corpus_ngrams import CORPUS_FILE, COUNT_BUCKETS, CorpusNgrams
from tinyllama_model.mixture.doc_cache import DocCacheExpert, stream_hits
from tinyllama_model.mixture.fitting import mixed_logprobs
from tinyllama_model.tokenizer import EOS_ID

VOCAB = 40


def random_docs(n_docs: int, seed: int, vocab: int = 12) -> list[np.ndarray]:
    """Short documents over a few ids, so contexts repeat within and across them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(4, vocab, size=rng.integers(3, 30)) for _ in range(n_docs)]


def brute_force(corpus: np.ndarray, query: np.ndarray, orders: int) -> tuple[list[int], list[float]]:
    """Per target: (order, count of its context) of the longest context seen, and p(target), by dicts."""
    table: dict[tuple, Counter] = defaultdict(Counter)
    for t in range(1, len(corpus)):
        for o in range(1, min(orders, t) + 1):
            ctx = tuple(corpus[t - o : t])
            if EOS_ID not in ctx[1:]:
                table[ctx][corpus[t]] += 1
    keys, probs = [], []
    for t in range(1, len(query)):
        key, prob = -1, 0.0
        for o in range(min(orders, t), 0, -1):
            ctx = tuple(query[t - o : t])
            if EOS_ID not in ctx[1:] and ctx in table:
                n = sum(table[ctx].values())
                key, prob = (o - 1) * 10 + min(int(math.log2(n)), 9), table[ctx][query[t]] / n
                break
        keys.append(key)
        probs.append(prob)
    return keys, probs


@pytest.mark.parametrize("orders", [1, 2, 4])
def test_counts_match_a_dictionary_and_never_cross_a_document(orders):
    corpus = pack_documents(random_docs(40, seed=0), EOS_ID).astype(np.int64)
    query = pack_documents(random_docs(10, seed=1), EOS_ID).astype(np.int64)
    ngrams = CorpusNgrams(corpus, VOCAB, orders)
    bucket, prob = ngrams.stream_hits(query)
    keys, probs = brute_force(corpus, query, orders)
    assert bucket.tolist() == keys and np.allclose(prob, probs)
    assert (bucket >= 0).all() and 0 < prob.mean() < 1  # small ids: every context occurs somewhere
    for t in range(1, len(query)):  # the generation path finds the same context and probability
        found = ngrams.next_tokens(query[:t].tolist())
        b, ids, p = found
        assert b == bucket[t - 1] and math.isclose(p.sum(), 1.0)
        assert math.isclose(dict(zip(ids.tolist(), p.tolist(), strict=True)).get(query[t], 0.0), prob[t - 1])


def test_a_context_that_ends_in_eos_backs_off_to_the_document_start():
    ngrams = CorpusNgrams(np.array([EOS_ID, 5, 6, EOS_ID, 7, 8, EOS_ID]), VOCAB, orders=2)
    bucket, prob = ngrams.stream_hits(np.array([EOS_ID, 6, EOS_ID, 7]))
    # (6, EOS) -> 7 happened only across a document boundary: the first token of a document is predicted
    # from (EOS,) alone, which was followed by 5 once and 7 once
    assert bucket[-1] == 0 * 10 + 1 and prob[-1] == 0.5


@pytest.fixture(scope="module")
def model() -> TinyLlama:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=VOCAB, max_seq_len=16, multiple_of=16)
    return TinyLlama(cfg).eval()


def with_experts(model: TinyLlama, corpus: np.ndarray, doc: float | None, ngram: float) -> TinyLlama:
    extra = {"corpus_ngram_weights": np.full((4, COUNT_BUCKETS), ngram).tolist()}
    if doc is not None:
        extra["doc_cache_weights"] = np.full(DocCacheExpert().table_shape(3), doc).tolist()
    mixed = TinyLlama(ModelConfig(**{**model.config.to_dict(), **extra})).eval()
    mixed.load_state_dict(model.state_dict())
    mixed.corpus_ngrams = CorpusNgrams(corpus, VOCAB, 4)
    return mixed


def test_scoring_and_generation_mix_the_same_experts_in_the_same_order(model):
    corpus = pack_documents(random_docs(40, seed=0), EOS_ID).astype(np.int64)
    stream = pack_documents(random_docs(3, seed=2), EOS_ID).astype(np.int64)[:17]  # one 16-token window
    mixed = with_experts(model, corpus, doc=0.3, ngram=0.4)
    lp = sliding_logprobs(model, stream, context=16)
    doc_mixed = mixed_logprobs(lp, *stream_hits(stream, 3), mixed.config.doc_cache_weights)
    scored = mixed_logprobs(
        doc_mixed, *mixed.corpus_ngrams.stream_hits(stream), mixed.config.corpus_ngram_weights
    )
    out = evaluate_stream(mixed, stream, n_bytes=100)
    assert out["bpb"] == pytest.approx(-scored.sum() / math.log(2) / 100)
    assert out["model_bpb"] == pytest.approx(-lp.sum() / math.log(2) / 100) and out["bpb"] < out["model_bpb"]
    experts = _Experts(mixed, [stream[:1].tolist()], adapter=None)
    with torch.no_grad():
        logits = model(torch.from_numpy(stream[None, :-1]))[0][0]
    for t in range(1, len(stream)):
        step = experts.mix(logits[t - 1 : t].clone(), None)[0]
        assert float(step.exp().sum()) == pytest.approx(1.0, abs=1e-5)
        assert float(step[stream[t]]) == pytest.approx(scored[t - 1], abs=1e-5)
        experts.observe([int(stream[t])], None)


def test_generation_follows_the_corpus_and_model_only_leaves_it_out(model):
    corpus = pack_documents([np.array([10, 11, 12, 13, 14, 15, 16, 17])] * 3, EOS_ID)
    mixed = with_experts(model, corpus, doc=None, ngram=0.95)
    greedy = dict(temperature=0.0, eos_id=None)
    assert generate_ids(mixed, [[10, 11]], 6, **greedy)[0] == [12, 13, 14, 15, 16, 17]
    alone = generate_ids(mixed, [[10, 11]], 6, model_only=True, **greedy)
    assert alone == generate_ids(model, [[10, 11]], 6, **greedy) and alone[0] != [12, 13, 14, 15, 16, 17]


def test_the_tokens_are_saved_with_the_model_and_their_absence_is_explained(tmp_path, model):
    corpus = pack_documents(random_docs(5, seed=3), EOS_ID)
    with_experts(model, corpus, doc=0.2, ngram=0.2).save_pretrained(tmp_path / "m")
    loaded = TinyLlama.from_pretrained(tmp_path / "m")
    assert np.array_equal(loaded.corpus_ngrams.tokens, corpus) and loaded.corpus_ngrams.orders == 4
    (tmp_path / "m" / CORPUS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"corpus_tokens\.npy is missing.*delete that key"):
        TinyLlama.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("table", [[], [[0.1] * 9], [[0.1] * 10] * 5, [[1.0] * 10], "x"])
def test_a_malformed_weight_table_is_refused_with_the_fix(table):
    with pytest.raises(ConfigError, match=r"corpus_ngram_weights=.*train\.mixture\.corpus_ngram_orders"):
        ModelConfig(corpus_ngram_weights=table)


def test_a_corpus_or_stream_shorter_than_the_order_finds_nothing_longer():
    ngrams = CorpusNgrams(np.array([EOS_ID, 5]), VOCAB, orders=4)
    bucket, prob = ngrams.stream_hits(np.array([EOS_ID, 5, 6]))
    assert bucket.tolist() == [0, -1] and prob.tolist() == [1.0, 0.0]  # (EOS,) -> 5 once; (5,) never
    assert ngrams.stream_hits(np.array([EOS_ID]))[0].size == 0


def test_vocabularies_past_16_bits_are_refused():
    with pytest.raises(ValueError, match="vocab_size <= 65536"):
        CorpusNgrams(np.array([EOS_ID, 5]), 70_000, 2)


# -- corpus_tokens.npy, checked before it is used -----------------------------------------------------


@pytest.fixture
def saved(tmp_path, model):
    corpus = pack_documents(random_docs(5, seed=3), EOS_ID)
    return with_experts(model, corpus, doc=None, ngram=0.2).save_pretrained(tmp_path / "m"), corpus


def test_the_tokens_are_memory_mapped_not_read(saved):
    directory, corpus = saved
    tokens = TinyLlama.from_pretrained(directory).corpus_ngrams.tokens
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16  # before: np.load read it whole
    assert np.array_equal(tokens, corpus)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.arange(4, 30, dtype=np.int64), r"holds a int64 array of shape \(26,\).*1-D uint16"),
        (np.full((3, 4), 5, dtype=np.uint16), r"holds a uint16 array of shape \(3, 4\)"),
        (np.array([EOS_ID, 5, VOCAB], dtype=np.uint16), rf"token id {VOCAB}, outside the model's vocabulary"),
    ],
)
def test_a_corpus_file_that_is_not_this_models_token_stream_is_refused(saved, array, reason):
    directory, _ = saved
    np.save(directory / CORPUS_FILE, array)
    with pytest.raises(CheckpointError, match=reason):  # before: loaded, then failed or mis-counted later
        TinyLlama.from_pretrained(directory)


def test_a_truncated_corpus_file_is_refused(saved):
    directory, _ = saved
    path = directory / CORPUS_FILE
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CheckpointError, match=r"announces \d+ tokens \(truncated\?\)"):
        TinyLlama.from_pretrained(directory)


def test_the_corpus_files_tables_count_in_the_memory_check_before_it_is_read(saved):
    directory, _ = saved
    path, tokens = directory / CORPUS_FILE, 10**11  # 200 GB of tokens: terabytes of tables
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, dtype=np.uint16))
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (tokens,)})
        f.truncate(f.tell() + 2 * tokens)  # sparse: no disk is used, and nothing may read it
    with pytest.raises(CheckpointError, match=r"needs [\d,.]+ GiB to load, more than this machine"):
        TinyLlama.from_pretrained(directory)
