"""The train phase: what it publishes, the vocabulary override, caching, and resuming a failed attempt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tasks.storage.artifacts import verify
from tasks.tokenizer import read_split, run_encode, run_tokenizer
from tasks.train import MetricsTail, check_experts, fit_mixture, pack_split, run_train
from tests.tasks.test_tokenizer_task import SMALL, doc_texts, write_clean
from tinyllama_model import ModelConfig, TinyLlama
from tinyllama_model.data import CorpusTooSmallError, write_packed
from tinyllama_model.errors import ConfigError
from tinyllama_model.evaluation import tempered_logprobs
from tinyllama_model.mixture.config import MOVED, MixtureConfig
from tinyllama_model.mixture.doc_cache import DocCacheExpert, stream_hits
from tinyllama_model.mixture.fitting import fit_weights, mixed_logprobs
from tinyllama_model.tokenizer import Tokenizer, token_dtype
from tinyllama_model.training.run_layout import METRICS_FILE
from tinyllama_model.training.run_state import truncate_metrics
from tinyllama_model.training.train_config import TrainConfig

MODEL = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=12_000, max_seq_len=32, multiple_of=16)


def train_config(**overrides) -> TrainConfig:
    base = dict(
        batch_size=4,
        lr=5e-3,
        warmup_steps=2,
        max_steps=20,
        max_minutes=None,
        eval_every=10,
        checkpoint_every=10,
        eval_tokens=1024,
        peak_flops=1e10,
        num_threads=1,
    )
    mixture = {k: overrides.pop(k) for k in list(overrides) if k in MOVED}  # the train.mixture section
    return TrainConfig(**{**base, **overrides}, mixture=MixtureConfig(**mixture))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    clean = write_clean(root / "clean", doc_texts(30))
    tok = run_tokenizer(SMALL, clean, root)
    return tok, run_encode(SMALL, clean, tok, root)


class Crash(Exception):
    pass


def test_train_publishes_the_best_model_with_its_tokenizer(tmp_path, inputs):
    tok, enc = inputs
    rows: list[dict] = []
    art = run_train(MODEL, train_config(), enc, tok, tmp_path, on_metrics=rows.append)
    verify(art)

    model = TinyLlama.from_pretrained(art.file("model"))
    assert model.config.vocab_size == Tokenizer(art.file("model")).vocab_size == 400  # from the tokenizer
    assert art.stats["vocab_size"] == 400
    for key in ("best_val_bpb", "final_val_bpb", "steps", "tokens", "wall_time_s", "mfu", "num_params"):
        assert art.stats[key] is not None, key
    assert art.stats["steps"] == 20 and art.stats["best_val_bpb"] < 8
    lines = [json.loads(line) for line in art.file("metrics.jsonl").read_text().splitlines()]
    assert lines == rows and any("val_bpb" in r for r in lines)
    assert not (tmp_path / "train" / f".work-{art.fingerprint}").exists()  # scratch removed once published

    calls: list[dict] = []
    assert run_train(MODEL, train_config(), enc, tok, tmp_path, on_metrics=calls.append) == art
    assert calls == []  # cached: nothing retrained


REFIT_STEPS = ("network", "unadapted_share", "doc_cache", "corpus_ngrams", "neural_cache", "jointly")


def test_the_experts_are_fitted_on_the_validation_split_and_shipped_with_the_model(tmp_path, inputs):
    tok, enc = inputs
    cfg = train_config(
        doc_cache_orders=2, corpus_ngram_orders=3, adapt_lrs=(3e-4, 3e-3), neural_cache_theta=15
    )
    art = run_train(MODEL, cfg, enc, tok, tmp_path)
    config = json.loads(art.file("model").joinpath("config.json").read_text())["mixture"]  # all fitted
    model = TinyLlama.from_pretrained(art.file("model"))
    assert (
        model.config.doc_cache_weights == config["doc_cache_weights"]
        and len(config["doc_cache_weights"]) == 2
    )
    assert len(config["corpus_ngram_weights"]) == 3 and model.corpus_ngrams.orders == 3
    train_tokens = sum(len(t) + 1 for _, t, _ in read_split(enc, "train")) + 1  # EOS-joined
    assert len(model.corpus_ngrams.tokens) == train_tokens
    stats = art.stats
    assert 0 < stats["doc_cache_matched"] <= 1 and 0 < stats["corpus_ngrams_matched"] <= 1
    # each fitted on that split, so each step never scores it worse than the one before
    alone, cached = stats["val_loss_sliding_model_alone"], stats["val_loss_sliding_doc_cache"]
    assert stats["val_loss_sliding_corpus_ngrams"] <= cached <= alone
    # a 20-step network has much to learn from each document: one of the rates wins, chosen with both
    # experts mixed in, and written where every use of the model reads it
    assert stats["adapt_lr"] in (3e-4, 3e-3) and model.config.adapt_lr == stats["adapt_lr"]
    assert stats["val_loss_adapt_fit_adapted"] < stats["val_loss_adapt_fit_unadapted"]
    names = {name for name, _ in model.named_parameters()}
    assert set(model.config.adapt_scales) == names and all(s > 0 for s in model.config.adapt_scales.values())
    # then the mixture again on the adapted network: its unadapted self, the caches, the neural cache last,
    # then every weight once more with the others fixed
    refit = [stats[f"val_loss_refit_{k}"] for k in REFIT_STEPS]
    assert refit == sorted(refit, reverse=True) and refit[-1] < refit[0]
    assert model.config.neural_cache_theta == 15 and len(model.config.neural_cache_weights) == 7
    assert model.config.unadapted_share == config["unadapted_share"] is not None
    plain = run_train(MODEL, train_config(), enc, tok, tmp_path)
    assert plain.fingerprint != art.fingerprint and "doc_cache_matched" not in plain.stats
    assert "adapt_lr" not in plain.stats
    plain_config = TinyLlama.from_pretrained(plain.file("model")).config
    assert plain_config.adapt_lr is None and plain_config.adapt_scales is None
    assert plain_config.neural_cache_theta is None and plain_config.unadapted_share is None
    assert not (plain.file("model") / "corpus_tokens.npy").exists()


def test_what_follows_training_reads_a_bounded_sample_and_ships_a_bounded_corpus(tmp_path):
    vocab, rng = 64, np.random.default_rng(0)
    model = ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=vocab, max_seq_len=16, multiple_of=16)
    cfg = train_config(
        doc_cache_orders=2, corpus_ngram_orders=2, fit_max_tokens=600, corpus_ngram_max_tokens=1_000
    )
    shipped = []
    for n_docs in (100, 400):  # 3,500 and 14,000 training tokens: both past the cap, one 4x the other
        docs = [rng.integers(4, vocab, size=rng.integers(10, 60)) for _ in range(n_docs)]
        work, model_dir = tmp_path / f"work{n_docs}", tmp_path / f"model{n_docs}"
        work.mkdir()
        write_packed(docs, work / "train.bin", token_dtype(vocab))
        write_packed(docs[::2], work / "val.bin", token_dtype(vocab))
        TinyLlama(model).save_pretrained(model_dir)
        stats, _ = fit_mixture(model_dir, work, cfg.mixture)
        assert stats["fit_val_tokens"] <= 600 and stats["corpus_ngram_tokens"] <= 1_000
        shipped.append((model_dir / "corpus_tokens.npy").stat().st_size)
        loaded = TinyLlama.from_pretrained(model_dir)  # the fitted weights were written where it reads them
        assert len(loaded.config.doc_cache_weights) == 2 and len(loaded.corpus_ngrams.tokens) <= 1_000
    assert all(500 * 2 < size <= 1_000 * 2 + 128 for size in shipped)  # before: 7 kB and 28 kB


def test_calibration_folds_the_temperature_that_scores_the_split_best_into_the_weights(tmp_path, inputs):
    tok, enc = inputs
    temperatures = (0.25, 0.4, 0.6, 0.8, 1.25)
    calibrated = train_config(doc_cache_orders=2, calibration_temperatures=temperatures)
    art = run_train(MODEL, calibrated, enc, tok, tmp_path)
    plain = run_train(MODEL, train_config(doc_cache_orders=2), enc, tok, tmp_path)  # the same network
    chosen, stats = art.stats["calibration_temperature"], art.stats
    model = TinyLlama.from_pretrained(art.file("model"))
    network = TinyLlama.from_pretrained(plain.file("model"))
    assert "calibration_temperature" not in plain.stats
    # by brute force: each temperature (and 1) with the document cache fitted on it, scored on the split
    pack_split(enc, "val", tmp_path / "val.bin", 400)
    val = np.fromfile(tmp_path / "val.bin", dtype=token_dtype(400))
    bucket, prob = stream_hits(val, 2)
    losses = {}
    for temperature in (1.0, *temperatures):
        lp = tempered_logprobs(network, val, MODEL.max_seq_len, (temperature,), batch_size=32)[0]
        weights = fit_weights(lp, bucket, prob, DocCacheExpert().table_shape(2))
        losses[temperature] = -mixed_logprobs(lp, bucket, prob, weights).mean()
    assert chosen == min(losses, key=losses.get) and chosen != 1.0  # a 20-step network is far from calibrated
    assert stats["val_loss_sliding_doc_cache"] == pytest.approx(losses[chosen])
    assert stats["val_loss_sliding_calibrated"] < stats["val_loss_sliding_model_alone"]
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], network(x)[0] / chosen, rtol=1e-4, atol=1e-5)
    assert model.config.doc_cache_weights != network.config.doc_cache_weights  # fitted on the calibrated one


def test_calibration_of_a_soft_capped_model_is_refused_before_training():
    capped = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=400, max_seq_len=32, logit_softcap=15.0)
    check_experts(capped, train_config(doc_cache_orders=3))
    with pytest.raises(ConfigError, match=r"calibration_temperatures=\[1.1\].*logit_softcap=15.0.*=\[\]"):
        check_experts(capped, train_config(calibration_temperatures=(1.1,)))


def test_corpus_ngrams_past_16_bit_vocabularies_are_refused_before_training():
    big = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=70_000, max_seq_len=32, multiple_of=16)
    check_experts(big, train_config(doc_cache_orders=3))  # the document cache has no such limit
    with pytest.raises(ConfigError, match=r"corpus_ngram_orders=4 needs .* 65,536 .*corpus_ngram_orders=0"):
        check_experts(big, train_config(corpus_ngram_orders=4))


def test_a_failed_attempt_resumes_from_its_last_checkpoint(tmp_path, inputs):
    tok, enc = inputs

    def crash_at_step_15(row: dict) -> None:
        if row.get("step") == 15:
            raise Crash

    with pytest.raises(Crash):
        run_train(MODEL, train_config(), enc, tok, tmp_path / "a", on_metrics=crash_at_step_15)
    retried = run_train(MODEL, train_config(), enc, tok, tmp_path / "a")
    assert retried.stats["resumed_from_step"] == 10

    straight = run_train(MODEL, train_config(), enc, tok, tmp_path / "b")
    assert straight.stats["resumed_from_step"] is None
    a, b = (
        load_file(retried.file("model/model.safetensors")),
        load_file(straight.file("model/model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_corpus_smaller_than_one_window_is_refused_and_nothing_is_published(tmp_path):
    clean = write_clean(tmp_path / "clean", ["tiny text one " * 3, "and a second document " * 3])
    tok = run_tokenizer(SMALL.model_copy(update={"vocab_size": 270}), clean, tmp_path)
    enc = run_encode(SMALL, clean, tok, tmp_path)
    big_window = ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=256, multiple_of=16)
    with pytest.raises(CorpusTooSmallError, match=r"lower train\.seq_len to \d+ or less"):
        run_train(big_window, train_config(), enc, tok, tmp_path)
    assert not [p for p in (tmp_path / "train").iterdir() if not p.name.startswith(".")]


def test_the_metrics_tail_reads_a_replaced_file_from_its_top(tmp_path):
    """A resumed rank 0 replaces metrics.jsonl; by the next poll the new file can be past the old offset."""
    path = tmp_path / METRICS_FILE
    rows: list[dict] = []
    tail = MetricsTail(path, rows.append)

    def log(steps: range, attempt: str) -> None:
        with open(path, "a") as f:
            for s in steps:
                f.write(json.dumps({"step": s, "train_loss": 1.0 / s, "attempt": attempt}) + "\n")

    tail.poll()  # no file yet: nothing, no error
    log(range(1, 7), "killed")
    tail.poll()
    truncate_metrics(path, 3)  # what the resumed rank 0 does, then it logs on
    log(range(4, 13), "resumed")
    assert path.stat().st_size > tail.offset  # the case that comparing sizes missed
    with open(path, "a") as f:
        f.write('{"step": 13, "train_lo')  # a row still being written waits for its newline
    tail.poll()

    assert [r["step"] for r in rows] == [*range(1, 7), *range(1, 13)]
    assert [r["attempt"] for r in rows[6:]] == ["killed"] * 3 + ["resumed"] * 9
    with open(path, "a") as f:
        f.write('ss": 0.5, "attempt": "resumed"}\n')
    tail.poll()
    assert rows[-1] == {"step": 13, "train_loss": 0.5, "attempt": "resumed"}
