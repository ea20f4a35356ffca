"""Dynamic evaluation: a copy of the network learns from each document as it reads it, the same way when
scoring and when generating, without ever seeing a token before predicting it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tinyllama_model import ModelConfig, TinyLlama
from tinyllama_model.data import pack_documents
from tinyllama_model.errors import ConfigError
from tinyllama_model.evaluation import evaluate_stream, sliding_logprobs
from tinyllama_model.generate import generate_ids
from tinyllama_model.mixture.adaptation import (
    Adapter,
    adapted_logprobs,
    document_spans,
    fit_learning_rate,
    gradient_scales,
)
from tinyllama_model.tokenizer import EOS_ID

VOCAB = 64
CONTEXT = 16  # learning steps every 8 targets


def make_model(adapt_lr: float | None = None) -> TinyLlama:
    torch.manual_seed(0)
    shape = dict(dim=32, n_layers=2, n_heads=2, vocab_size=VOCAB, max_seq_len=CONTEXT, multiple_of=16)
    return TinyLlama(ModelConfig(**shape, adapt_lr=adapt_lr)).eval()


def repeating_docs(n_docs: int, length: int = 60, seed: int = 0) -> list[np.ndarray]:
    """Each document repeats a phrase of its own: what a network that learns as it reads picks up."""
    rng = np.random.default_rng(seed)
    return [np.resize(rng.integers(4, VOCAB, size=6), length) for _ in range(n_docs)]


def weights_of(model: TinyLlama) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_documents_open_at_an_eos_and_close_at_the_next():
    assert document_spans(np.array([EOS_ID, 5, 6, EOS_ID, 7, EOS_ID])) == [(0, 3), (3, 5)]
    assert document_spans(np.array([5, 6, EOS_ID, 7])) == [(0, 2), (2, 3)]  # no EOS at either end
    assert document_spans(np.array([EOS_ID])) == []


def test_without_learning_each_document_is_scored_as_the_static_network_scores_it_alone():
    model = make_model()
    stream = pack_documents(repeating_docs(3, length=37), EOS_ID).astype(np.int64)
    got = adapted_logprobs(model, stream, lr=0.0)
    for first, last in document_spans(stream):
        alone = sliding_logprobs(model, stream[first : last + 1], CONTEXT, stride=CONTEXT // 2)
        np.testing.assert_allclose(got[first:last], alone, atol=1e-5)


def test_learning_helps_on_a_repeating_document_is_causal_and_resets_at_each_document():
    model = make_model()
    before = weights_of(model)
    stream = pack_documents(repeating_docs(3), EOS_ID).astype(np.int64)
    static, learned = adapted_logprobs(model, stream, 0.0), adapted_logprobs(model, stream, 0.5)
    assert learned.sum() > static.sum() + 20  # the phrase becomes likely once the network has read it
    assert all(torch.equal(a, b) for a, b in zip(before, weights_of(model), strict=True))  # a copy learns
    changed = stream.copy()
    cut = len(stream) // 2
    changed[cut + 1 :] = np.random.default_rng(1).integers(4, VOCAB, size=len(stream) - cut - 1)
    np.testing.assert_array_equal(adapted_logprobs(model, changed, 0.5)[:cut], learned[:cut])
    first2, last2 = document_spans(stream)[1]
    second_alone = adapted_logprobs(model, stream[first2 : last2 + 1], 0.5)
    np.testing.assert_allclose(learned[first2:last2], second_alone, atol=1e-5)  # nothing carried over


@pytest.mark.parametrize("scaled", [False, True])
def test_generation_predicts_each_token_with_the_weights_scoring_used(scaled):
    model = make_model(adapt_lr=0.5)
    doc = np.concatenate([[EOS_ID], repeating_docs(1, length=CONTEXT - 2)[0]]).astype(np.int64)
    if scaled:  # each tensor at its own rate, read from the config as scoring reads it
        model.config.adapt_lr, model.config.adapt_scales = 1e-2, gradient_scales(model, doc)
    scored = adapted_logprobs(model, doc, model.config.adapt_lr, model.config.adapt_scales)
    adapter = Adapter.for_model(model, doc[:1])
    for t in range(1, len(doc)):  # the decode loop's path: the adapter reads token by token
        with torch.no_grad():
            logits = adapter.net(torch.from_numpy(doc[None, :t]))[0][0, -1]
        assert float(logits.log_softmax(-1)[doc[t]]) == pytest.approx(scored[t - 1], abs=1e-5)
        adapter.observe(int(doc[t]))
    assert adapter.learned == CONTEXT // 2  # one chunk learned, the partial one not


def test_generation_learns_from_the_prompt_rows_alone_equal_the_batch_and_model_only_does_not():
    model = make_model(adapt_lr=0.5)
    prompts = [[EOS_ID, *map(int, d[:40])] for d in repeating_docs(2, seed=3)]
    before = weights_of(model)
    batch = generate_ids(model, prompts, 12, temperature=0)
    assert batch == [generate_ids(model, [p], 12, temperature=0)[0] for p in prompts]
    assert all(torch.equal(a, b) for a, b in zip(before, weights_of(model), strict=True))
    # the first token comes from the weights that have read the prompt (5 chunks of 8)
    adapter = Adapter.for_model(model, prompts[0])
    with torch.no_grad():
        first = adapter.net(torch.tensor([prompts[0][-CONTEXT:]]))[0][0, -1].argmax()
    assert batch[0][0] == int(first) and adapter.learned == 40
    # 40 tokens learn 5 times more on the way, each time with a new KV cache: the same as the plain forward
    sampled = [generate_ids(model, prompts, 40, seed=0, eos_id=None, use_cache=c) for c in (True, False)]
    assert sampled[0] == sampled[1]
    assert generate_ids(model, prompts, 12, temperature=0, model_only=True) != batch


def test_evaluate_stream_scores_the_adapted_network_and_reports_the_network_alone():
    stream = pack_documents(repeating_docs(2), EOS_ID).astype(np.int64)
    plain, adapting = make_model(), make_model(adapt_lr=0.5)
    alone, out = evaluate_stream(plain, stream, n_bytes=500), evaluate_stream(adapting, stream, n_bytes=500)
    assert out["model_bpb"] == pytest.approx(alone["bpb"]) and out["bpb"] < alone["bpb"]
    expected = -adapted_logprobs(plain, stream, 0.5).sum() / np.log(2) / 500
    assert out["bpb"] == pytest.approx(expected)


def test_the_fit_picks_the_rate_that_scores_best_and_none_when_learning_hurts():
    model = make_model()
    stream = pack_documents(repeating_docs(2), EOS_ID).astype(np.int64)

    def loss_of(tokens, logprobs):
        return -float(logprobs.mean())

    lr, loss, static = fit_learning_rate(model, stream, [0.01, 0.5], loss_of)
    assert lr == 0.5 and loss < static
    noise = np.random.default_rng(2).integers(4, VOCAB, size=200)
    assert fit_learning_rate(model, noise, [50.0], loss_of)[0] is None  # a rate that wrecks the network


def test_each_tensor_steps_at_the_rate_times_one_over_its_gradients_rms():
    model = make_model()
    doc = np.concatenate([[EOS_ID], repeating_docs(1, length=CONTEXT // 2)[0]]).astype(np.int64)  # one chunk
    probe = Adapter(model, 0.0)
    probe.learn(doc, len(doc) - 1, len(doc) - 1)
    grads = {name: p.grad.clone() for name, p in probe.net.named_parameters()}
    scales = gradient_scales(model, doc)
    assert set(scales) == set(grads)
    for name, g in grads.items():
        assert scales[name] == pytest.approx(1 / float(g.square().mean().sqrt()), rel=1e-4)
    adapter = Adapter(model, 1e-3, scales)
    adapter.learn(doc, len(doc) - 1, len(doc) - 1)
    trained = dict(model.named_parameters())
    for name, p in adapter.net.named_parameters():  # each tensor moved by about 1e-3 RMS, whatever its grad
        step = (p.detach() - trained[name].detach()).square().mean().sqrt()
        assert float(step) == pytest.approx(1e-3, rel=1e-3)
    stream = pack_documents(repeating_docs(2), EOS_ID).astype(np.int64)
    adapting = TinyLlama(dataclasses.replace(model.config, adapt_lr=1e-3, adapt_scales=scales)).eval()
    adapting.load_state_dict(model.state_dict())
    expected = -adapted_logprobs(model, stream, 1e-3, scales).sum() / np.log(2) / 500
    assert evaluate_stream(adapting, stream, n_bytes=500)["bpb"] == pytest.approx(expected)
    assert expected != pytest.approx(-adapted_logprobs(model, stream, 1e-3).sum() / np.log(2) / 500)


def test_scales_that_do_not_name_the_networks_parameters_are_refused():
    with pytest.raises(ConfigError, match=r"unknown \[.layers\.9\.w.\].*delete adapt_scales"):
        Adapter(make_model(), 0.1, {"layers.9.w": 1.0})


def test_scales_are_checked_against_the_config_where_it_is_made():
    names = ModelConfig(vocab_size=VOCAB).parameter_shapes()
    ModelConfig(vocab_size=VOCAB, adapt_scales=dict.fromkeys(names, 1.0))
    many = {f"layers.{i}.w": 1.0 for i in range(100_000)}
    with pytest.raises(ConfigError, match=r"adapt_scales \(100,000 entries\) does not fit.*unknown") as err:
        ModelConfig(vocab_size=VOCAB, adapt_scales=many)  # before: accepted, and loaded
    assert len(str(err.value)) < 500  # the message names a few, it does not print the table
    with pytest.raises(ConfigError, match=r"missing \['norm\.weight'\]"):
        ModelConfig(vocab_size=VOCAB, adapt_scales={n: 1.0 for n in names if n != "norm.weight"})


@pytest.mark.parametrize("bad", [[1.0], {"w": -1.0}, {"w": float("inf")}, {"w": True}])
def test_bad_scales_are_refused_with_the_fix(bad):
    with pytest.raises(
        ConfigError, match=r"adapt_scales must map parameter names.*train\.mixture\.adapt_lrs"
    ):
        ModelConfig(vocab_size=VOCAB, adapt_scales=bad)


@pytest.mark.parametrize("bad", [0, -0.1, True, "0.05"])
def test_a_bad_rate_is_refused_with_the_fix(bad):
    with pytest.raises(ConfigError, match=r"adapt_lr=.*train\.mixture\.adapt_lrs"):
        ModelConfig(vocab_size=VOCAB, adapt_lr=bad)
