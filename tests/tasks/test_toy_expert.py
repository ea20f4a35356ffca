"""An expert added from outside the package, in this one file: registered, it is fitted by the train
phase, scored by evaluation, followed by generation and refused by `export-hf`, with no edit to
tinyllama_model/ or tasks/ (the recipe in docs/architecture.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from tasks.train import fit_mixture
from tinyllama_model import ModelConfig, TinyLlama
from tinyllama_model.checkpoint import update_model_config
from tinyllama_model.data import write_packed
from tinyllama_model.errors import ConfigError
from tinyllama_model.evaluation import evaluate_stream, sliding_logprobs
from tinyllama_model.export import export_hf
from tinyllama_model.generate import generate_ids
from tinyllama_model.mixture import registry
from tinyllama_model.mixture.config import MixtureConfig
from tinyllama_model.mixture.expert import Expert, FitInputs, Proposal, Reading, value
from tinyllama_model.mixture.fitting import mixed_logprobs
from tinyllama_model.tokenizer import EOS_ID, token_dtype

VOCAB = 64
KEY = "repeat_weights"


class RepeatExpert(Expert):
    """Predicts that the token just read comes again (one bucket: there is a token before, in the
    document)."""

    name, keys, stage = "repeat", (KEY,), "network"
    refusal = "transformers does not repeat tokens on its own"

    def wanted(self, settings: Any) -> bool:
        return True

    def fit_params(self, fit: FitInputs) -> bool:
        return True

    def params(self, model: Any) -> bool | None:
        return True if value(model.config, KEY) is not None else None

    def table_shape(self, params: Any) -> tuple[int, int]:
        return (1, 1)

    def hits(self, params: Any, reading: Reading) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(reading.tokens, dtype=np.int64)
        before, target = tokens[:-1], tokens[1:]
        return np.where(before == EOS_ID, -1, 0), (target == before).astype(np.float64)

    def follower(self, params: Any, model: Any, prompts: Sequence[Sequence[int]], *_: Any) -> _Last:
        return _Last([int(p[-1]) for p in prompts])

    def card_line(self, cfg: Mapping[str, Any]) -> str | None:
        return "- repeat: the last token again" if value(cfg, KEY) is not None else None


class _Last:
    def __init__(self, last: list[int]):
        self.last = last

    def observe(self, tokens: list[int], states: torch.Tensor | None) -> None:
        self.last = list(tokens)

    def propose(self, row: int, states: torch.Tensor | None) -> Proposal | None:
        if self.last[row] == EOS_ID:
            return None
        return Proposal(0, torch.ones(1, dtype=torch.float64), torch.tensor([self.last[row]]))


@pytest.fixture
def repeat_expert():
    expert = registry.register_expert(RepeatExpert())
    yield expert
    registry.unregister_expert(expert.name)


def stuttering_docs(n: int, seed: int) -> list[np.ndarray]:
    """Documents whose tokens come twice in a row: the repeat expert is right on every other token."""
    rng = np.random.default_rng(seed)
    return [np.repeat(rng.integers(4, VOCAB, size=rng.integers(10, 30)), 2) for _ in range(n)]


def test_an_expert_registered_from_outside_is_fitted_scored_generated_with_and_refused_by_export(
    tmp_path, repeat_expert
):
    work, model_dir = tmp_path / "work", tmp_path / "model"
    work.mkdir()
    write_packed(stuttering_docs(40, seed=0), work / "train.bin", token_dtype(VOCAB))
    write_packed(stuttering_docs(10, seed=1), work / "val.bin", token_dtype(VOCAB))
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=VOCAB, max_seq_len=16, multiple_of=16)
    TinyLlama(cfg).save_pretrained(model_dir)

    # fitted: the train phase's fit finds it in the registry and stores its weight in config.json
    stats, _ = fit_mixture(model_dir, work, MixtureConfig())
    assert stats["val_loss_sliding_repeat"] < stats["val_loss_sliding_model_alone"]
    assert 0.3 < stats["repeat_matched"] <= 1
    config = json.loads((model_dir / "config.json").read_text())
    [[weight]] = config["mixture"][KEY]
    assert weight > 0.3  # half the targets repeat: the fit trusts it

    # scored: evaluation mixes it in, as the fit did
    model = TinyLlama.from_pretrained(model_dir)
    val = np.fromfile(work / "val.bin", dtype=token_dtype(VOCAB)).astype(np.int64)
    alone = sliding_logprobs(model, val, cfg.max_seq_len)
    expected = mixed_logprobs(alone, *repeat_expert.hits(True, Reading(model, val)), [[weight]])
    result = evaluate_stream(model, val, n_bytes=1000)
    assert result["bpb"] == pytest.approx(-expected.sum() / math.log(2) / 1000)
    assert result["bpb"] < result["model_bpb"]

    # generated with: a weight near 1 makes greedy decoding repeat the prompt's last token
    model.config.mixture = {KEY: [[0.95]]}
    assert generate_ids(model, [[EOS_ID, 7]], 5, temperature=0)[0] == [7] * 5
    assert generate_ids(model, [[EOS_ID, 7]], 5, temperature=0, model_only=True)[0] != [7] * 5

    # refused by export-hf, naming the key to delete
    with pytest.raises(ConfigError, match=rf"{KEY}=set .*repeat tokens.*delete {KEY} from"):
        export_hf(model_dir, tmp_path / "hf")

    # a second fit's entries join the first's in config.json's mixture object
    update_model_config(model_dir, {"mixture": {"other_weights": [[0.1]]}})
    config = json.loads((model_dir / "config.json").read_text())
    assert config["mixture"][KEY] == [[weight]] and config["mixture"]["other_weights"] == [[0.1]]


def test_a_second_expert_of_the_same_name_or_an_unknown_place_is_refused(repeat_expert):
    with pytest.raises(ValueError, match="'repeat' is already registered"):
        registry.register_expert(RepeatExpert())
    later = RepeatExpert()
    later.name = "repeat2"
    with pytest.raises(ValueError, match="before='nowhere' names no registered expert"):
        registry.register_expert(later, before="nowhere")
    registry.register_expert(later, before="doc_cache")
    try:
        names = [e.name for e in registry.EXPERTS]
        assert names.index("repeat2") == names.index("doc_cache") - 1
    finally:
        registry.unregister_expert("repeat2")
