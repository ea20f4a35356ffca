"""Model directories and torch files: exact round trips, atomic replacement, and refusing unsafe input."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file

from tinyllama_model.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_torch_file,
    save_torch_file,
    update_model_config,
)
from tinyllama_model.errors import ConfigError
from tinyllama_model.model import ModelConfig, TinyLlama


def make(seed: int = 0, **overrides) -> TinyLlama:
    base = dict(dim=32, n_layers=2, n_heads=4, vocab_size=50, max_seq_len=16, multiple_of=16)
    torch.manual_seed(seed)
    return TinyLlama(ModelConfig(**{**base, **overrides})).eval()


# -- the model directory ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "n_kv_heads": 2}])
def test_round_trip_is_bit_exact(tmp_path, overrides):
    m = make(**overrides)
    tokenizer = tmp_path / "some.model"
    tokenizer.write_bytes(b"tokenizer bytes")
    out = m.save_pretrained(tmp_path / "model", tokenizer_file=tokenizer)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    assert (out / "tokenizer.model").read_bytes() == b"tokenizer bytes"
    loaded = TinyLlama.from_pretrained(out)
    assert loaded.config == m.config
    a, b = m.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    idx = torch.randint(0, 50, (2, 10))
    assert torch.equal(m(idx)[0], loaded.eval()(idx)[0])
    if m.config.tie_embeddings:
        assert loaded.output.weight is loaded.tok_embeddings.weight
        assert "output.weight" not in load_file(out / "model.safetensors")  # stored once


def test_config_json_is_plain_model_config(tmp_path):
    m = make(rope_theta=500_000.0)
    m.save_pretrained(tmp_path / "m")
    assert ModelConfig.from_dict(json.loads((tmp_path / "m" / "config.json").read_text())) == m.config


def test_save_replaces_existing_dir_atomically(tmp_path):
    target = tmp_path / "model"
    make(seed=1).save_pretrained(target)
    (target / "stale.txt").write_text("from the old save")
    new = make(seed=2)
    new.save_pretrained(target)
    assert not (target / "stale.txt").exists()
    assert torch.equal(
        TinyLlama.from_pretrained(target).layers[0].attention.wq.weight, new.layers[0].attention.wq.weight
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary leftovers


def test_failed_save_leaves_old_dir_intact(tmp_path):
    target = tmp_path / "model"
    old = make(seed=1)
    old.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(FileNotFoundError):
        make(seed=2).save_pretrained(target, tokenizer_file=tmp_path / "missing.model")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_weights_that_do_not_fit_the_config(tmp_path):
    make().save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg | {"dim": 64}))
    with pytest.raises(CheckpointError, match=r"do not match its config\.json.*wrong shapes"):
        TinyLlama.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg | {"n_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing \['layers.2"):
        TinyLlama.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg | {"n_layers": 1}))
    with pytest.raises(CheckpointError, match=r"unexpected \['layers.1"):
        TinyLlama.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize(("text", "kind"), [("[]", "array"), ("null", "null"), ('"dim"', "string")])
def test_a_config_json_that_is_not_an_object(tmp_path, text, kind):
    make().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=rf"config\.json holds a JSON {kind}, not an object"):
        TinyLlama.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize(
    ("change", "key", "bound"),
    [
        ({"n_layers": 8_000}, "n_layers", "1,024"),
        ({"dim": 2**20, "n_heads": 2}, "dim", "65,536"),
        ({"vocab_size": 10**10}, "vocab_size", "2,097,152"),  # 1.3 TB of embeddings
        ({"max_seq_len": 10**12}, "max_seq_len", "1,048,576"),  # 4 TB of RoPE tables
        ({"ffn_hidden_dim": 10**9}, "ffn_hidden_dim", "262,144"),
        ({"multiple_of": 10**9}, "multiple_of", "65,536"),
    ],
)
def test_a_config_json_past_a_bound_is_refused_naming_the_key_and_the_bound(tmp_path, change, key, bound):
    make().save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg | change))
    with pytest.raises(ConfigError, match=rf"config\.json: {key}=\d+ is above its bound of {bound}"):
        TinyLlama.from_pretrained(tmp_path / "m")


class CountingTinyLlama(TinyLlama):
    """A TinyLlama that counts the modules built, on any device (the meta device included)."""

    built = 0

    def __init__(self, cfg: ModelConfig):
        type(self).built += 1
        super().__init__(cfg)


def test_the_config_is_compared_with_the_header_before_any_module_is_built(tmp_path):
    make().save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg | {"n_layers": 1_000, "dim": 4_096}))
    CountingTinyLlama.built = 0
    with pytest.raises(CheckpointError, match=r"do not match its config\.json.*n_layers=1000"):
        CountingTinyLlama.from_pretrained(tmp_path / "m")
    assert CountingTinyLlama.built == 0  # before: a whole meta model of 1,000 layers, then the refusal
    CountingTinyLlama.from_pretrained(make().save_pretrained(tmp_path / "ok"))
    assert CountingTinyLlama.built == 1  # a fitting one is built once


@pytest.mark.parametrize(
    "levers",
    [
        {},
        {"tie_embeddings": True, "n_kv_heads": 2},
        {"mlp": "relu2", "qk_norm": True, "value_embeds": True, "n_layers": 3, "n_kv_heads": 1},
        {"ffn_hidden_dim": 40, "value_embeds": True, "dim": 64, "n_heads": 2, "max_seq_len": 24},
    ],
)
def test_the_shapes_and_bytes_computed_from_a_config_are_the_modules(levers):
    from tinyllama_model.model import load_bytes

    model = make(**levers)
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("output.weight")
    assert model.config.parameter_shapes() == {k: tuple(v.shape) for k, v in state.items()}
    assert load_bytes(model.config) == sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    assert model.config.num_params() == model.num_params()


def test_a_config_json_of_megabytes_is_refused_before_it_is_parsed(tmp_path):
    make().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[" + "0," * 10_000_000 + "0]")
    with pytest.raises(CheckpointError, match=r"config\.json is 20,000,003 bytes, above the bound"):
        TinyLlama.from_pretrained(tmp_path / "m")


def test_bad_model_dirs(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        TinyLlama.from_pretrained(tmp_path)
    make().save_pretrained(tmp_path / "m")
    cfg_path, weights = tmp_path / "m" / "config.json", tmp_path / "m" / "model.safetensors"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg | {"hidden_size": 32}))
    with pytest.raises(ConfigError, match="unknown model config key"):
        TinyLlama.from_pretrained(tmp_path / "m")
    cfg_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        TinyLlama.from_pretrained(tmp_path / "m")
    cfg_path.write_text(json.dumps(cfg))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        TinyLlama.from_pretrained(tmp_path / "m")


# -- torch files ------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_file_round_trip(tmp_path):
    state = {
        "model": make().state_dict(),
        "step": 12,
        "lr": 3e-4,
        "name": "run",
        "rng": torch.get_rng_state(),
        "history": [1.0, 2.0],
    }
    path = save_torch_file(state, tmp_path / "ckpt" / "state.pt")
    loaded = load_torch_file(path)
    assert loaded["step"] == 12 and loaded["name"] == "run" and loaded["history"] == [1.0, 2.0]
    assert torch.equal(loaded["rng"], state["rng"])
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]  # the temporary file is gone


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"model": {}, "payload": Payload(marker)}
    if writer == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))  # a legacy, non-zip torch file
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_torch_file(path)
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, ValueError)


def test_truncated_and_missing_torch_files(tmp_path):
    path = save_torch_file({"w": torch.randn(100, 100)}, tmp_path / "state.pt")
    data = path.read_bytes()
    for cut in (len(data) // 2, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_torch_file(path)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_torch_file(tmp_path / "nope.pt")


def test_the_fitted_values_live_in_one_mixture_object_and_a_flat_config_json_still_loads(tmp_path):
    model = make()
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "doc_cache_weights" not in written and written["mixture"]["doc_cache_weights"] is None
    # a config.json written before the mixture object (and before the share's rename) is read as it meant
    flat = {k: v for k, v in written.items() if k != "mixture"}
    fitted = {"doc_cache_weights": [[[0.2] * 4, [0.4] * 4]], "adapt_lr": 0.01, "adapt_static_weight": 0.3}
    old = {**flat, **fitted}
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = TinyLlama.from_pretrained(tmp_path).config
    assert loaded.doc_cache_weights == old["doc_cache_weights"] and loaded.unadapted_share == 0.3
    # the next fit rewrites it in today's shape, keeping what was there
    update_model_config(tmp_path, {"neural_cache_theta": 15.0, "neural_cache_weights": [0.1] * 7})
    now = json.loads((tmp_path / "config.json").read_text())
    assert not {"doc_cache_weights", "adapt_lr", "adapt_static_weight", "neural_cache_theta"} & set(now)
    mixture = now["mixture"]
    assert mixture["doc_cache_weights"] == old["doc_cache_weights"] and mixture["unadapted_share"] == 0.3
    assert mixture["neural_cache_theta"] == 15.0 and mixture["adapt_lr"] == 0.01
    both = {**now, "adapt_lr": 0.02}
    with pytest.raises(ConfigError, match=r"\['adapt_lr'\] both at the top level and in its mixture"):
        ModelConfig.from_dict(both)
