"""Generation: the KV cache changes nothing but speed, and every sampling option does what it says."""

from __future__ import annotations

import pytest
import torch

from tests.factories import TINY_VOCAB, train_tiny_tokenizer
from tinyllama_model.generate import (
    Sampling,
    generate_ids,
    generate_tensor,
    generate_text,
    sample_next,
    stream_ids,
    stream_text,
)
from tinyllama_model.model import ModelConfig, TinyLlama
from tinyllama_model.tokenizer import BOS_ID, PAD_ID, Tokenizer

WINDOW = 16  # tiny context so that tests cross the window boundary quickly


def make(seed: int = 0, **overrides) -> TinyLlama:
    base = dict(dim=32, n_layers=2, n_heads=4, vocab_size=TINY_VOCAB, max_seq_len=WINDOW, multiple_of=16)
    torch.manual_seed(seed)
    # float64: the cached and uncached paths sum in different orders, and in float32 one CPU's kernels
    # may round a near-tie to another argmax than another CPU's; in double no realistic gap flips
    model = TinyLlama(ModelConfig(**{**base, **overrides})).eval().double()
    # random weights at init give near-uniform, near-tied logits; sharpen them so argmax is well defined
    with torch.no_grad():
        model.output.weight.mul_(50.0)
    return model


@pytest.fixture(scope="module")
def model() -> TinyLlama:
    return make()


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def prompt(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, TINY_VOCAB, (n,), generator=g).tolist()


GREEDY = dict(temperature=0.0, eos_id=None)


# -- the cache changes nothing ------------------------------------------------------------------------


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_cached_greedy_equals_uncached_across_the_window(n_kv_heads):
    m = make(n_kv_heads=n_kv_heads)
    p = prompt(5)
    n = 3 * WINDOW  # slides the window several times
    cached = generate_ids(m, [p], n, **GREEDY)[0]
    uncached = generate_ids(m, [p], n, use_cache=False, **GREEDY)[0]
    assert len(cached) == n
    assert cached == uncached
    assert len(set(cached)) > 5  # a real continuation, not one repeated token


def test_cached_equals_uncached_for_a_padded_batch_across_the_window(model):
    prompts = [prompt(3, 1), prompt(9, 2), prompt(6, 3)]
    cached = generate_ids(model, prompts, 2 * WINDOW, **GREEDY)
    uncached = generate_ids(model, prompts, 2 * WINDOW, use_cache=False, **GREEDY)
    assert cached == uncached


def test_cached_sampling_equals_uncached_with_a_seed(model):
    kw = dict(temperature=0.9, top_k=50, top_p=0.9, seed=7, eos_id=None)
    p = prompt(4)
    assert generate_ids(model, [p], 40, **kw) == generate_ids(model, [p], 40, use_cache=False, **kw)


def test_batch_equals_each_prompt_alone(model):
    prompts = [prompt(2, 4), prompt(7, 5), prompt(4, 6)]
    n = WINDOW - 7  # the longest row fills the window exactly: no slide
    batch = generate_ids(model, prompts, n, **GREEDY)
    alone = [generate_ids(model, [p], n, **GREEDY)[0] for p in prompts]
    assert batch == alone


# -- sampling options -------------------------------------------------------------------------------


def test_seed_reproducible_and_global_rng_untouched(model):
    p, kw = prompt(3), dict(temperature=1.0, eos_id=None)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate_ids(model, [p], 30, seed=1, **kw)
    b = generate_ids(model, [p], 30, seed=1, **kw)
    c = generate_ids(model, [p], 30, seed=2, **kw)
    generate_ids(model, [p], 5, seed=None, **kw)
    assert a == b and a != c
    assert torch.equal(torch.get_rng_state(), state)


def test_top_k_one_is_greedy(model):
    p = prompt(6)
    greedy = generate_ids(model, [p], 25, **GREEDY)
    assert generate_ids(model, [p], 25, temperature=1.5, top_k=1, seed=3, eos_id=None) == greedy
    assert generate_ids(model, [p], 25, temperature=1.5, top_p=1e-6, seed=3, eos_id=None) == greedy


def test_sample_next_top_k_and_top_p_supports():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)

    def support(**kw) -> set[int]:
        s = Sampling(**kw)
        return {int(sample_next(logits, s, g)) for _ in range(300)}

    assert support(temperature=1.0) == {0, 1, 2, 3}
    assert support(temperature=1.0, top_k=2) == {0, 1}
    assert support(temperature=1.0, top_p=0.7) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert support(temperature=1.0, top_p=0.85) == {0, 1, 2}
    assert support(temperature=1.0, top_p=0.5) == {0}
    assert support(temperature=0.0) == {0}


def test_sample_next_repetition_penalty():
    logits = torch.tensor([[2.0, 1.9, -1.0, -1.1]])
    seen = torch.tensor([[True, False, True, False]])
    s = Sampling(temperature=0.0, repetition_penalty=2.0)
    assert int(sample_next(logits, s, None, seen)) == 1  # 2.0 / 2 = 1.0 < 1.9
    assert int(sample_next(logits, Sampling(temperature=0.0), None, seen)) == 0
    s = Sampling(temperature=0.0, repetition_penalty=2.0)
    only_negatives = torch.tensor([[-1.0, -1.5, -3.0, -3.0]])
    assert int(sample_next(only_negatives, s, None, torch.tensor([[True, False, False, False]]))) == 1


def test_repetition_penalty_changes_generation(model):
    p = prompt(4)
    plain = generate_ids(model, [p], 30, **GREEDY)[0]
    penalised = generate_ids(model, [p], 30, repetition_penalty=1e6, **GREEDY)[0]
    assert plain != penalised
    # with an enormous penalty, every positive-logit choice is new until the positive ones run out
    assert len(set(penalised[:10])) == 10


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_bad_sampling_options(model, kw, message):
    with pytest.raises(ValueError, match=message):
        generate_ids(model, [prompt(3)], 3, **kw)


def test_bad_prompts(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate_ids(model, [[]], 3)
    with pytest.raises(ValueError, match="at least one token"):
        generate_ids(model, [], 3)
    with pytest.raises(ValueError, match="vocab_size"):
        generate_ids(model, [[TINY_VOCAB]], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(model, [[5]], -1)
    assert generate_ids(model, [[5], [6, 7]], 0) == [[], []]


# -- stopping, cropping, streaming ------------------------------------------------------------------


def _eos_candidate(seq: list[int], k: int) -> int:
    """The id at position k of a greedy run, chosen so that it does not occur before k."""
    while seq[k] in seq[:k]:
        k += 1
    return k


def test_stops_at_eos_and_trims_rows(model):
    p0, p1 = prompt(4, 10), prompt(4, 11)
    free = generate_ids(model, [p0, p1], 12, **GREEDY)
    k = _eos_candidate(free[0], 3)
    eos = free[0][k]
    assert eos not in free[1], "pick another prompt: row 1 would stop too"
    out = generate_ids(model, [p0, p1], 12, temperature=0.0, eos_id=eos)
    assert out == [free[0][:k], free[1]]  # row 0 stops before EOS, row 1 runs to the end

    tensor = generate_tensor(model, torch.tensor([p0, p1]), 12, temperature=0.0, eos_id=eos)
    assert tensor.shape == (2, 4 + 12)
    assert tensor[0, 4 : 4 + k + 1].tolist() == [*free[0][:k], eos]  # the tensor keeps the EOS ...
    assert (tensor[0, 4 + k + 1 :] == PAD_ID).all()  # ... and pads after it


def test_generation_ends_when_every_row_stopped(model):
    p = prompt(4, 10)
    free = generate_ids(model, [p], 12, **GREEDY)[0]
    k = _eos_candidate(free, 2)
    tensor = generate_tensor(model, torch.tensor([p]), 12, temperature=0.0, eos_id=free[k])
    assert tensor.shape == (1, 4 + k + 1)


def test_model_generate_delegates(model):
    idx = torch.tensor([prompt(5)])
    assert torch.equal(
        model.generate(idx, 10, temperature=0.0, eos_id=None), generate_tensor(model, idx, 10, **GREEDY)
    )
    assert model.generate(idx, 10, temperature=0.0, eos_id=None)[0, :5].tolist() == idx[0].tolist()


def test_long_prompt_keeps_its_last_window(model):
    long = prompt(3 * WINDOW + 5)
    out = generate_ids(model, [long], 8, **GREEDY)[0]
    assert out == generate_ids(model, [long[-WINDOW:]], 8, **GREEDY)[0]
    assert out == generate_ids(model, [long], 8, use_cache=False, **GREEDY)[0]


def test_streaming_equals_batch(model):
    p = prompt(5)
    for kw in (GREEDY, dict(temperature=0.8, top_k=40, seed=5, eos_id=None)):
        streamed = list(stream_ids(model, p, 2 * WINDOW, **kw))
        assert streamed == generate_ids(model, [p], 2 * WINDOW, **kw)[0]


def test_stream_yields_before_finishing(model):
    it = stream_ids(model, prompt(3), 10_000, **GREEDY)
    first = [next(it) for _ in range(3)]  # a lazy iterator: no need to run 10k steps first
    assert len(first) == 3
    it.close()


def test_training_mode_restored(model):
    model.train()
    try:
        generate_ids(model, [prompt(3)], 3)
        assert model.training
    finally:
        model.eval()


# -- text helpers -----------------------------------------------------------------------------------


def test_text_helpers(model, tok):
    prompts = ["The transformer is", "Rotary position\n", ""]
    n = WINDOW - max(len(tok.encode(p)) for p in prompts)  # no slide: a row alone equals its batch row
    kw = dict(max_new_tokens=n, temperature=0.0)
    texts = generate_text(model, tok, prompts, **kw)
    ids = generate_ids(model, [tok.encode(p) or [1] for p in prompts], n, temperature=0.0)
    assert texts == [tok.decode(row) for row in ids]  # prompts go in without BOS; "" starts a document
    assert all(BOS_ID not in tok.encode(p) for p in prompts)
    for p, text in zip(prompts, texts, strict=True):
        assert "".join(stream_text(model, tok, p, **kw)) == text
    sampled = dict(max_new_tokens=40, temperature=1.0, top_p=0.9, seed=11)
    streamed = "".join(stream_text(model, tok, prompts[0], **sampled))
    assert streamed == generate_text(model, tok, prompts[:1], **sampled)[0]


def test_stream_text_flushes_a_trailing_partial_character(model, tok):
    # a random model emits many byte-fallback pieces; find seeds whose output ends mid-character
    endings = 0
    for seed in range(40):
        kw = dict(max_new_tokens=4, temperature=1.0, seed=seed)
        text = generate_text(model, tok, ["a"], **kw)[0]
        assert "".join(stream_text(model, tok, "a", **kw)) == text
        endings += text.endswith("\ufffd")
    assert endings > 0


# -- the prompt a model accepts ----------------------------------------------------------------------


MAX_PROMPT_TOKENS = 16_384  # generate.MAX_PROMPT_TOKENS, spelled out: the bound a client is told


def test_a_prompt_past_the_bound_is_refused_before_anything_reads_it(model, tok):
    with pytest.raises(ValueError, match=rf"a prompt of {MAX_PROMPT_TOKENS + 1:,} tokens is longer than"):
        generate_ids(model, [[5], [6] * (MAX_PROMPT_TOKENS + 1)], 2, **GREEDY)
    with pytest.raises(ValueError, match="shorten it"):
        next(stream_text(model, tok, "The for statement " * MAX_PROMPT_TOKENS, 2, **GREEDY))
    assert (
        len(generate_ids(model, [[6] * MAX_PROMPT_TOKENS], 2, **GREEDY)[0]) == 2
    )  # the bound itself is fine
