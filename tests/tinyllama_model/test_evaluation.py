"""Evaluation: every target scored exactly once, with the context the sliding window promises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinyllama_model import ModelConfig, TinyLlama
from tinyllama_model.evaluation import (
    bits_per_byte,
    evaluate_stream,
    sliding_logprobs,
    sliding_nll,
    sliding_windows,
    summarize,
    tempered_logprobs,
    windows_nll,
)


@pytest.fixture(scope="module")
def model() -> TinyLlama:
    torch.manual_seed(0)
    m = TinyLlama(ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=64, max_seq_len=16, multiple_of=16))
    return m.eval()


@pytest.fixture(scope="module")
def stream() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 64, size=75).astype(np.uint16)


@pytest.mark.parametrize("n", [2, 3, 16, 17, 18, 40, 101])
@pytest.mark.parametrize(("context", "stride"), [(16, 16), (16, 8), (16, 5), (16, 1), (4, 3)])
def test_sliding_windows_score_each_target_once(n, context, stride):
    scored = []
    for begin, end, first in sliding_windows(n, context, stride):
        assert 0 <= begin < end <= n - 1 and end - begin <= context
        assert begin + 1 <= first <= end
        assert first - begin - 1 >= 0
        # after the first window, every scored target has at least context - stride tokens before it
        if begin > 0:
            assert first - 1 - begin >= context - stride
        scored += range(first, end + 1)
    assert scored == list(range(1, n))


def _brute_force_nll(model: TinyLlama, tokens: np.ndarray, context: int) -> float:
    """Each target p predicted from tokens[max(0, p - context) : p], one forward pass per target."""
    total = 0.0
    t = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        for p in range(1, len(t)):
            x = t[max(0, p - context) : p][None]
            logits, _ = model(x)
            total += float(F.cross_entropy(logits[0, -1:], t[p : p + 1]))
    return total


def test_stride_one_gives_every_target_the_full_context(model, stream):
    nll, count = sliding_nll(model, stream, context=16, stride=1, batch_size=7)
    assert count == len(stream) - 1
    assert nll == pytest.approx(_brute_force_nll(model, stream, 16), rel=1e-5)


def test_a_short_stream_is_one_causal_window(model):
    tokens = np.arange(4, 14, dtype=np.uint16)
    nll, count = sliding_nll(model, tokens, context=16)
    x = torch.from_numpy(tokens.astype(np.int64))[None]
    with torch.no_grad():
        _, loss = model(x[:, :-1], x[:, 1:])
    assert count == 9 and nll == pytest.approx(float(loss) * 9, rel=1e-5)


def test_tempered_logprobs_divide_the_logits_before_the_softmax(model, stream):
    rows = tempered_logprobs(model, stream, 16, (1.0, 0.5, 2.0), stride=4, batch_size=3)
    assert rows.shape == (3, len(stream) - 1)
    assert np.array_equal(rows[0], sliding_logprobs(model, stream, 16, stride=4, batch_size=3))
    tokens = torch.from_numpy(stream[:12].astype(np.int64))  # one window: every target, full left context
    with torch.no_grad():
        logits = model(tokens[None, :-1])[0][0]
    for row, temperature in zip(rows, (1.0, 0.5, 2.0), strict=True):
        expected = F.log_softmax(logits / temperature, -1).gather(1, tokens[1:, None])[:, 0]
        np.testing.assert_allclose(row[:11], expected.numpy(), rtol=1e-5)
    assert not np.allclose(rows[1], rows[2])


def test_larger_strides_only_lose_context_never_targets(model, stream):
    counts = {s: sliding_nll(model, stream, context=16, stride=s)[1] for s in (1, 4, 16)}
    assert set(counts.values()) == {len(stream) - 1}


def test_windows_nll_sums_the_fixed_windows(model, stream):
    starts = np.array([0, 16, 32])
    nll, count = windows_nll(model, stream, starts, 16, batch_size=2)
    t = torch.from_numpy(stream.astype(np.int64))
    x = torch.stack([t[s : s + 16] for s in starts])
    y = torch.stack([t[s + 1 : s + 17] for s in starts])
    with torch.no_grad():
        _, loss = model(x, y)
    assert count == 48 and nll == pytest.approx(float(loss) * 48, rel=1e-5)


def test_bits_per_byte_and_perplexity():
    assert bits_per_byte(math.log(2) * 100, 100) == pytest.approx(1.0)
    s = summarize(nll_nats=20.0, n_tokens=10, n_bytes=40)
    assert s["loss"] == 2.0 and s["perplexity"] == pytest.approx(math.exp(2.0))
    assert s["bpb"] == pytest.approx(20.0 / math.log(2) / 40)
    assert summarize(1.0, 1, None)["bpb"] is None


def test_evaluate_stream_restores_training_mode(model, stream):
    model.train()
    out = evaluate_stream(model, stream, n_bytes=300)
    assert model.training
    assert out["tokens"] == len(stream) - 1 and out["bytes"] == 300
    # an untrained model is close to uniform over its 64 ids
    assert out["loss"] == pytest.approx(math.log(64), rel=0.1)
    model.eval()


def test_nothing_to_predict_is_an_error(model):
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        evaluate_stream(model, np.array([1], dtype=np.uint16), n_bytes=1)
