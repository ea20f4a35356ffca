"""The small-budget levers behind ModelConfig flags: each off by default, each doing what it says when on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.tinyllama_model.test_model import EXACT, make, tiny
from tinyllama_model.errors import ConfigError
from tinyllama_model.model import ModelConfig, TinyLlama

# every lever on at once: what the preset's options are checked with in resume and DDP tests
LEVERS = dict(mlp="relu2", qk_norm=True, zero_init_proj=True, logit_softcap=15.0, value_embeds=True)
ONE_AT_A_TIME = [{k: v} for k, v in LEVERS.items()] + [{**LEVERS, "n_kv_heads": 2}]


def test_every_lever_is_off_by_default():
    cfg = ModelConfig()
    assert (cfg.mlp, cfg.qk_norm, cfg.zero_init_proj, cfg.logit_softcap, cfg.value_embeds) == (
        "swiglu",
        False,
        False,
        None,
        False,
    )
    names = {name for name, _ in TinyLlama(tiny()).named_parameters()}
    assert not any("value_embeds" in n or "ve_gate" in n for n in names)


@pytest.mark.parametrize("overrides", ONE_AT_A_TIME, ids=lambda o: "+".join(o))
def test_forward_shapes_param_count_and_cache_agree(overrides):
    m = make(n_layers=3, **overrides).double()
    assert m.num_params() == m.config.num_params()
    idx = torch.randint(0, 97, (2, 20))
    logits, loss = m(idx, idx)
    assert logits.shape == (2, 20, 97) and torch.isfinite(loss)
    cache = m.new_cache(2)
    parts = [m.forward_cached(idx[:, :12], cache, last_only=False)]
    parts += [m.forward_cached(idx[:, t : t + 1], cache) for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), logits, **EXACT)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mlp": "gelu"}, "mlp='gelu' must be one of swiglu, relu2"),
        ({"qk_norm": 1}, "qk_norm=1 must be true or false"),
        ({"logit_softcap": 0}, "logit_softcap=0 must be a positive number"),
        ({"value_embeds": "yes"}, "value_embeds='yes' must be true or false"),
    ],
)
def test_bad_lever_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**overrides)


def test_relu2_is_two_matrices_of_four_times_dim():
    m = make(mlp="relu2")
    ff = m.layers[0].feed_forward
    assert ff.w3 is None and ff.w1.weight.shape == (4 * 64, 64)
    x = torch.randn(3, 64)
    torch.testing.assert_close(ff(x), ff.w2(F.relu(ff.w1(x)) ** 2))
    # 8 dim^2 weights, what SwiGLU's three matrices of 8/3 dim hold before its width is rounded up
    assert 2 * m.config.hidden_dim * 64 == 8 * 64 * 64 <= 3 * tiny().hidden_dim * 64


def test_qk_norm_makes_attention_blind_to_the_scale_of_wq_and_wk():
    m = make(qk_norm=True, norm_eps=1e-12).double()  # an epsilon that no longer shares in the norm
    idx = torch.randint(0, 97, (2, 16))
    before = m(idx)[0]
    with torch.no_grad():
        for layer in m.layers:
            layer.attention.wq.weight.mul_(50.0)
            layer.attention.wk.weight.mul_(0.3)
    torch.testing.assert_close(m(idx)[0], before, atol=1e-8, rtol=1e-8)
    plain = make().double()  # without it, the same scaling changes the output
    out = plain(idx)[0]
    with torch.no_grad():
        plain.layers[0].attention.wq.weight.mul_(50.0)
    assert not torch.allclose(plain(idx)[0], out, atol=1e-3)


def test_zero_init_projections_make_every_block_the_identity_at_start():
    m = make(zero_init_proj=True)
    for layer in m.layers:
        assert not layer.attention.wo.weight.any() and not layer.feed_forward.w2.weight.any()
    x = torch.randn(2, 8, 64)
    cos, sin = m.rope_cos[:8], m.rope_sin[:8]
    torch.testing.assert_close(m.layers[0](x, cos, sin), x)
    assert make().layers[0].attention.wo.weight.any()  # the default keeps GPT-2's scaled init


def test_logit_softcap_bounds_the_logits_and_is_tanh():
    capped, plain = make(logit_softcap=2.0), make()
    with torch.no_grad():
        capped.output.weight.mul_(100.0)
        plain.output.weight.copy_(capped.output.weight)
    idx = torch.randint(0, 97, (2, 10))
    a, b = capped(idx)[0], plain(idx)[0]
    assert b.abs().max() > 10.0 and a.abs().max() <= 2.0
    torch.testing.assert_close(a, 2.0 * torch.tanh(b / 2.0))


def test_value_embeddings_sit_in_alternate_layers_ending_at_the_last_and_reach_the_output():
    assert tiny(n_layers=4, value_embeds=True).ve_layers == (1, 3)
    assert tiny(n_layers=3, value_embeds=True).ve_layers == (0, 2)
    m = make(n_layers=4, value_embeds=True)
    assert sorted(m.value_embeds) == ["1", "3"]
    assert m.layers[0].attention.ve_gate is None and not m.layers[1].attention.ve_gate.weight.any()
    idx = torch.randint(0, 97, (2, 10))
    before = m(idx)[0]
    with torch.no_grad():
        m.value_embeds["3"].weight.add_(1.0)
    assert not torch.allclose(m(idx)[0], before)
    # tables are lookups: parameters, but no matmul FLOPs
    cfg = m.config
    assert cfg.flops_per_token() - tiny(n_layers=4).flops_per_token() == 6 * 2 * 32 * 4


def test_a_lever_model_round_trips_through_its_directory(tmp_path):
    m = make(n_layers=3, **LEVERS)
    m.save_pretrained(tmp_path / "m")
    back = TinyLlama.from_pretrained(tmp_path / "m")
    assert back.config == m.config
    idx = torch.randint(0, 97, (1, 9))
    torch.testing.assert_close(back(idx)[0], m(idx)[0])
