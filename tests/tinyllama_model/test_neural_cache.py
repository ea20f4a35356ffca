"""The neural cache: earlier states of a document vote for the token that followed them, only from the
same document, the same way when scoring and when generating."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tinyllama_model.generate as generate
from tinyllama_model import ModelConfig, TinyLlama
from tinyllama_model.data import pack_documents
from tinyllama_model.errors import ConfigError
from tinyllama_model.evaluation import evaluate_stream, mixture_logprobs, sliding_logprobs
from tinyllama_model.export import check_llama_expressible
from tinyllama_model.mixture import neural_cache
from tinyllama_model.mixture.adaptation import document_pass
from tinyllama_model.mixture.neural_cache import SIMILARITY_EDGES, NeuralCache, stream_hits
from tinyllama_model.model_config import NEURAL_CACHE_BUCKETS
from tinyllama_model.tokenizer import EOS_ID

VOCAB, CONTEXT = 64, 16
WEIGHTS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def make_model(**experts) -> TinyLlama:
    torch.manual_seed(0)
    shape = dict(dim=32, n_layers=2, n_heads=2, vocab_size=VOCAB, max_seq_len=CONTEXT, multiple_of=16)
    return TinyLlama(ModelConfig(**shape, **experts)).eval()


def repeating_docs(n_docs: int, length: int = 60, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.resize(rng.integers(4, VOCAB, size=6), length) for _ in range(n_docs)]


def test_one_weight_per_bucket_of_similarity():
    assert len(SIMILARITY_EDGES) + 1 == NEURAL_CACHE_BUCKETS == len(WEIGHTS)
    assert list(SIMILARITY_EDGES) == sorted(SIMILARITY_EDGES)


def test_hits_read_only_earlier_positions_of_the_same_document():
    model = make_model()
    stream = pack_documents(repeating_docs(3), EOS_ID).astype(np.int64)
    _, states = document_pass(model, stream, None)
    bucket, prob = stream_hits(stream, states, theta=15.0)
    starts = np.flatnonzero(stream[:-1] == EOS_ID)  # each document's first target: nothing earlier
    assert (bucket[starts] == -1).all() and (prob[starts] == 0).all()
    assert ((bucket >= 0) | np.isin(np.arange(len(bucket)), starts)).all()
    assert ((prob >= 0) & (prob <= 1)).all() and bucket.max() < NEURAL_CACHE_BUCKETS
    cut = len(stream) // 2
    changed = stream.copy()
    changed[cut + 1 :] = np.random.default_rng(1).integers(4, VOCAB, size=len(stream) - cut - 1)
    _, changed_states = document_pass(model, changed, None)
    bucket2, prob2 = stream_hits(changed, changed_states, theta=15.0)
    np.testing.assert_array_equal(bucket2[:cut], bucket[:cut])
    np.testing.assert_allclose(prob2[:cut], prob[:cut], atol=1e-12)
    # a phrase that repeats: the same situation recurs, and the cache names what followed it
    assert prob[bucket >= 0].mean() > 0.3


def test_scoring_a_long_document_in_blocks_changes_nothing(monkeypatch):
    model = make_model()
    stream = pack_documents(repeating_docs(2, length=50), EOS_ID).astype(np.int64)
    _, states = document_pass(model, stream, None)
    whole = stream_hits(stream, states, theta=15.0)
    monkeypatch.setattr(neural_cache, "QUERY_BLOCK", 7)  # 50-token documents: 8 blocks each
    blocks = stream_hits(stream, states, theta=15.0)
    np.testing.assert_array_equal(blocks[0], whole[0])
    np.testing.assert_allclose(blocks[1], whole[1], atol=1e-6)  # the same sums, other matmul shapes


def test_a_hotter_cache_trusts_its_best_match_more():
    model = make_model()
    stream = pack_documents(repeating_docs(1), EOS_ID).astype(np.int64)
    _, states = document_pass(model, stream, None)
    cool, hot = (stream_hits(stream, states, theta)[1] for theta in (1.0, 50.0))
    assert hot[10:].mean() > cool[10:].mean()


def test_the_cache_fed_token_by_token_predicts_what_scoring_scores():
    model = make_model()
    stream = pack_documents(repeating_docs(2, length=80), EOS_ID).astype(np.int64)
    _, states = document_pass(model, stream, None)
    bucket, prob = stream_hits(stream, states, theta=15.0)
    cache = NeuralCache(model.config.dim, VOCAB)
    cache.observe(None, int(stream[0]))
    for t in range(1, len(stream)):
        state = torch.from_numpy(states[t - 1])
        hit = cache.predict(state, 15.0)
        if hit is None:
            assert bucket[t - 1] == -1
        else:
            b, q = hit
            assert b == bucket[t - 1] and float(q.sum()) == pytest.approx(1.0)
            assert float(q[stream[t]]) == pytest.approx(prob[t - 1], abs=1e-6)
        cache.observe(state, int(stream[t]))


@pytest.mark.parametrize("adapt_lr", [None, 0.5])
def test_generation_predicts_with_the_mixture_scoring_scores(monkeypatch, adapt_lr):
    """Every generated token's log-probability under the decode loop's mixture equals what scoring gives
    it on the same text: learning at the half window, the share of the unadapted network, the document
    cache and the neural cache (the text stays within one window, where both read the same context)."""
    experts = dict(
        adapt_lr=adapt_lr,
        unadapted_share=0.3,
        doc_cache_weights=[[[0.2] * 4, [0.4] * 4]],
        neural_cache_theta=15.0,
        neural_cache_weights=WEIGHTS,
    )
    model = make_model(**experts)
    mixtures: list[torch.Tensor] = []
    mix = generate._Experts.mix
    monkeypatch.setattr(generate._Experts, "mix", lambda *a: mixtures.append(mix(*a)) or mixtures[-1])
    prompt = [EOS_ID, *map(int, repeating_docs(1)[0][:3])]
    out = generate.generate_ids(model, [prompt], CONTEXT - len(prompt), seed=1, eos_id=None)[0]
    stream = np.array(prompt + out, dtype=np.int64)
    assert len(stream) == CONTEXT and len(mixtures) == len(out) and EOS_ID not in out  # one document
    adapted, states = document_pass(model, stream, adapt_lr)
    static = sliding_logprobs(model, stream, CONTEXT)
    scored = mixture_logprobs(model, stream, adapted, static=static, states=states)
    generated = [float(m[0, t]) for m, t in zip(mixtures, out, strict=True)]
    np.testing.assert_allclose(generated, scored[len(prompt) - 1 :], atol=1e-5)
    assert not np.allclose(scored, adapted)  # the experts changed the prediction


def test_evaluate_stream_scores_the_mixture_and_reports_the_network_alone():
    model = make_model(neural_cache_theta=15.0, neural_cache_weights=WEIGHTS)
    stream = pack_documents(repeating_docs(2), EOS_ID).astype(np.int64)
    result = evaluate_stream(model, stream, 500)
    assert result["bpb"] < result["model_bpb"]  # the phrases repeat: the cache helps
    with pytest.raises(ValueError, match="document_pass"):
        mixture_logprobs(model, stream, sliding_logprobs(model, stream, CONTEXT))


@pytest.mark.parametrize(
    "bad",
    [
        dict(neural_cache_theta=15.0),
        dict(neural_cache_weights=WEIGHTS),
        dict(neural_cache_theta=0.0, neural_cache_weights=WEIGHTS),
        dict(neural_cache_theta=15.0, neural_cache_weights=WEIGHTS[:3]),
        dict(neural_cache_theta=15.0, neural_cache_weights=[1.5] * 7),
        dict(unadapted_share=1.0),
    ],
)
def test_a_malformed_neural_cache_or_share_is_refused_with_the_fix(bad):
    with pytest.raises(ConfigError, match="null"):
        make_model(**bad)


def test_export_refuses_a_neural_cache_naming_both_keys():
    model = make_model(neural_cache_theta=15.0, neural_cache_weights=WEIGHTS)
    with pytest.raises(ConfigError, match="neural_cache_theta and neural_cache_weights"):
        check_llama_expressible(model.config)
