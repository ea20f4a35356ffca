"""The torch.compile'd one-token decode step (`TinyLlama.compile_decode`): the eager tokens, few graphs."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from tinyllama_model import ModelConfig, TinyLlama
from tinyllama_model.generate import generate_ids
from tinyllama_model.hardware import compile_blocker
from tinyllama_model.tokenizer import EOS_ID

pytestmark = pytest.mark.skipif(
    compile_blocker(torch.device("cpu")) is not None, reason="torch.compile needs a C++ compiler here"
)
CONTEXT = 24


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from nothing, so its counters count its own graphs, whatever ran before."""
    torch._dynamo.reset()
    counters.clear()


def make_model(seed: int, adapt_lr: float | None = None) -> TinyLlama:
    torch.manual_seed(seed)
    shape = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=CONTEXT)
    return TinyLlama(ModelConfig(**shape, multiple_of=16, adapt_lr=adapt_lr)).eval()


def both_ways(model: TinyLlama, prompts: list[list[int]], n: int) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy continuations with the eager step, then the compiled one."""
    eager = generate_ids(model, prompts, n, temperature=0, eos_id=None)
    model.compile_decode = True
    try:
        compiled = generate_ids(model, prompts, n, temperature=0, eos_id=None)
    finally:
        model.compile_decode = False
    return eager, compiled


def test_compiled_steps_give_the_eager_tokens_past_the_window_in_padded_batches_with_few_graphs():
    prompts = [[EOS_ID, 5, 9, 17, 33], [EOS_ID, 40, 2, 7, 11, 50, 61, 12, 8]]  # padded, then slides twice
    eager, compiled = both_ways(make_model(0), prompts, 3 * CONTEXT)
    assert compiled == eager
    assert counters["stats"]["calls_captured"] > 0  # the compiled step ran, not the eager one
    # one graph per kind of cache (padded or not), whatever the position: the last slot of a window too
    assert counters["stats"]["unique_graphs"] <= 2
    graphs = counters["stats"]["unique_graphs"]
    # another model, other weights, other prompts of one length: the same graphs serve it
    eager, compiled = both_ways(make_model(1), [[EOS_ID, 3, 8], [EOS_ID, 4, 9]], 2 * CONTEXT)
    assert compiled == eager
    assert counters["stats"]["unique_graphs"] == graphs
    eager, compiled = both_ways(make_model(1), prompts[:1], 2 * CONTEXT)  # a row alone: batch 1 is its own
    assert compiled == eager


def test_an_adapting_model_decodes_its_learning_copy_with_the_compiled_step():
    model = make_model(2, adapt_lr=0.5)
    prompt = [EOS_ID, *[4 + (i * 7) % 50 for i in range(30)]]
    eager, compiled = both_ways(model, [prompt], 20)
    assert compiled == eager
    assert counters["stats"]["calls_captured"] > 0
