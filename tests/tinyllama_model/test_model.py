"""The model: config rules, shapes, causality, parameter count, RoPE, cache consistency, optimizer groups."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tinyllama_model import decode
from tinyllama_model.errors import ConfigError
from tinyllama_model.model import (
    ModelConfig,
    RMSNorm,
    TinyLlama,
    apply_rope,
    causal_attention,
    rope_tables,
)


def tiny(**overrides) -> ModelConfig:
    base = dict(dim=64, n_layers=2, n_heads=4, vocab_size=97, max_seq_len=32, multiple_of=32)
    return ModelConfig(**{**base, **overrides})


def make(seed: int = 0, **overrides) -> TinyLlama:
    torch.manual_seed(seed)
    return TinyLlama(tiny(**overrides)).eval()


# -- config -----------------------------------------------------------------------------------------


def test_defaults_are_the_original_design():
    cfg = ModelConfig()
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.vocab_size, cfg.max_seq_len) == (512, 8, 8, 12_000, 512)
    assert cfg.kv_heads == 8 and cfg.head_dim == 64
    assert cfg.hidden_dim == 1536  # int(2/3 * 2048) = 1365 rounded up to a multiple of 256
    assert not cfg.tie_embeddings and cfg.dropout == 0.0


def test_ffn_rule_and_override():
    assert tiny().hidden_dim == 192  # int(2/3 * 256) = 170 -> 192
    assert tiny(multiple_of=1).hidden_dim == 170
    assert tiny(ffn_hidden_dim=100).hidden_dim == 100


def test_dict_and_json_round_trip():
    cfg = tiny(n_kv_heads=2, tie_embeddings=True, rope_theta=500_000.0, dropout=0.1)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_unknown_key_is_a_clear_error():
    d = tiny().to_dict() | {"n_embd": 64}
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['n_embd'\]"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 60, "n_heads": 8}, "not divisible by n_heads"),
        ({"n_kv_heads": 3}, "does not divide n_heads"),
        ({"vocab_size": 3}, "smaller than the 4 special ids"),
        ({"dim": 36, "n_heads": 4}, "odd"),  # head_dim 9
        ({"dim": 0}, "dim=0 must be a positive integer"),
        ({"n_layers": -1}, "n_layers=-1 must be a positive integer"),
        ({"max_seq_len": 0}, "max_seq_len=0 must be a positive integer"),
        ({"n_kv_heads": 0}, "n_kv_heads=0 must be a positive integer"),
        ({"ffn_hidden_dim": -5}, "ffn_hidden_dim=-5"),
        ({"n_heads": 2.0}, "n_heads=2.0 must be a positive integer"),
        ({"rope_theta": 0}, "rope_theta"),
        ({"norm_eps": -1e-5}, "norm_eps"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_configs_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**overrides)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "tie_embeddings": True}, {"ffn_hidden_dim": 80, "n_layers": 3}],
)
def test_param_count_matches_closed_form(overrides):
    cfg = tiny(**overrides)
    d, v, L, h = cfg.dim, cfg.vocab_size, cfg.n_layers, cfg.hidden_dim
    kv_dim = cfg.kv_heads * (d // cfg.n_heads)
    per_layer = 2 * d * d + 2 * d * kv_dim + 3 * d * h + 2 * d
    expected = L * per_layer + d + v * d * (1 if cfg.tie_embeddings else 2)
    assert cfg.num_params() == expected
    assert TinyLlama(cfg).num_params() == expected


def test_flops_per_token_is_6n_plus_attention():
    cfg = tiny()
    n_matmul = cfg.num_params() - cfg.vocab_size * cfg.dim  # the embedding lookup is no matmul
    assert cfg.flops_per_token() == 6 * n_matmul + 12 * 2 * 4 * 16 * 32
    assert cfg.flops_per_token(seq_len=8) == 6 * n_matmul + 12 * 2 * 4 * 16 * 8
    tied = tiny(tie_embeddings=True)
    assert tied.flops_per_token() == 6 * tied.num_params() + 12 * 2 * 4 * 16 * 32
    assert TinyLlama(cfg).flops_per_token() == cfg.flops_per_token()


# -- structure --------------------------------------------------------------------------------------


def test_meta_llama_parameter_names():
    names = set(make().state_dict())
    for n in [
        "tok_embeddings.weight",
        "layers.0.attention.wq.weight",
        "layers.0.attention.wk.weight",
        "layers.0.attention.wv.weight",
        "layers.0.attention.wo.weight",
        "layers.1.feed_forward.w1.weight",
        "layers.1.feed_forward.w2.weight",
        "layers.1.feed_forward.w3.weight",
        "layers.1.attention_norm.weight",
        "layers.1.ffn_norm.weight",
        "norm.weight",
        "output.weight",
    ]:
        assert n in names
    assert not any("rope" in n for n in names)  # RoPE tables follow from the config, never saved


def test_tied_embeddings_share_storage():
    m = make(tie_embeddings=True)
    assert m.output.weight is m.tok_embeddings.weight
    assert make().output.weight is not make().tok_embeddings.weight


@pytest.mark.parametrize("tied", [False, True])
def test_scale_logits_divides_every_logit_by_the_temperature(tied):
    model, calibrated = make(tie_embeddings=tied).double(), make(tie_embeddings=tied).double()
    calibrated.scale_logits(1.25)
    x = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(calibrated(x)[0], model(x)[0] / 1.25)
    assert torch.equal(calibrated.tok_embeddings.weight, model.tok_embeddings.weight)  # a tied head too


def test_scale_logits_refuses_what_is_not_a_temperature():
    with pytest.raises(ValueError, match=r"logit_softcap=15.*calibrate a model without a soft cap"):
        make(logit_softcap=15.0).scale_logits(1.1)
    with pytest.raises(ValueError, match=r"temperature=0: must be positive"):
        make().scale_logits(0)


def test_scaled_init():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=256, n_layers=8, n_heads=4, vocab_size=1000, max_seq_len=16)
    m = TinyLlama(cfg)
    assert m.layers[0].attention.wq.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layers)
    assert m.layers[3].attention.wo.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert m.layers[3].feed_forward.w2.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.equal(m.norm.weight, torch.ones(cfg.dim))


# -- forward ----------------------------------------------------------------------------------------


def test_shapes_and_loss():
    m = make()
    idx = torch.randint(0, 97, (3, 20))
    logits, loss = m(idx)
    assert logits.shape == (3, 20, 97) and logits.dtype == torch.float32 and loss is None
    last, _ = m(idx, last_only=True)
    assert last.shape == (3, 1, 97)
    torch.testing.assert_close(last, logits[:, -1:])
    targets = torch.randint(0, 97, (3, 20))
    targets[:, :5] = -1  # ignored positions
    logits2, loss = m(idx, targets)
    expected = F.cross_entropy(logits2[:, 5:].reshape(-1, 97), targets[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_too_long_sequence_rejected():
    with pytest.raises(ValueError, match="exceeds max_seq_len=32"):
        make()(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_causality(n_kv_heads):
    m = make(n_kv_heads=n_kv_heads)
    idx = torch.randint(0, 97, (2, 24))
    changed = idx.clone()
    changed[:, 15:] = (changed[:, 15:] + 1) % 97
    a, _ = m(idx)
    b, _ = m(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 15:], b[:, 15:])  # the later positions do see the change


def test_dropout_only_in_training():
    m = make(dropout=0.5)
    idx = torch.randint(0, 97, (2, 10))
    m.train()
    assert not torch.equal(m(idx)[0], m(idx)[0])
    m.eval()
    assert torch.equal(m(idx)[0], m(idx)[0])


def test_rms_norm_is_llamas_formula():
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16) * 3
    expected = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(norm(x), expected)
    low = norm(x.bfloat16())  # normalised in fp32, cast back, then scaled: HF's order
    xf = x.bfloat16().float()
    expected_low = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    torch.testing.assert_close(low, expected_low)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rms_norm_decode_spelling_gives_the_same_bits(dtype):
    """The decode loop's spelled-out norm must not move greedy output: bit-equal to `forward`, every dtype."""
    norm = RMSNorm(512, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(4, 512) * 3).to(dtype)
    assert decode.norm(norm, x).dtype == norm(x).dtype == dtype
    assert torch.equal(decode.norm(norm, x), norm(x))


# -- RoPE -------------------------------------------------------------------------------------------


def _hf_rope(x, pos, head_dim, theta):
    """Hugging Face Llama's formula, written out: cos/sin duplicated over the full head dim."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(pos.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)

    def rotate_half(t):
        return torch.cat((-t[..., head_dim // 2 :], t[..., : head_dim // 2]), dim=-1)

    return x * emb.cos() + rotate_half(x) * emb.sin()


def test_rope_matches_hf_rotate_half():
    hd, t = 16, 10
    x = torch.randn(2, 3, t, hd)
    cos, sin = rope_tables(hd, 32, 10_000.0)
    torch.testing.assert_close(apply_rope(x, cos[:t], sin[:t]), _hf_rope(x, torch.arange(t), hd, 10_000.0))


def test_rope_scores_depend_on_relative_position_only():
    hd = 8
    q, k = torch.randn(hd), torch.randn(hd)
    cos, sin = rope_tables(hd, 64, 10_000.0)

    def score(m, n):
        qm = apply_rope(q[None], cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k[None], cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum().item()

    assert score(7, 3) == pytest.approx(score(40, 36), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    torch.testing.assert_close(apply_rope(q[None], cos[:1], sin[:1]), q[None])  # position 0: identity


# -- KV cache ---------------------------------------------------------------------------------------


# The cache tests compare two summation orders: in float64 (error ~1e-16 per op) the 1e-10 tolerance is
# exact by construction on any CPU, where float32 would depend on how one CPU's kernels round.
EXACT = dict(atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_cached_forward_equals_full_forward(n_kv_heads):
    m = make(n_kv_heads=n_kv_heads).double()
    idx = torch.randint(0, 97, (2, 30))
    full, _ = m(idx)
    cache = m.new_cache(2)
    parts = [m.forward_cached(idx[:, :10], cache, last_only=False)]  # prefill
    for t in range(10, 20):  # one token at a time
        parts.append(m.forward_cached(idx[:, t : t + 1], cache))
    parts.append(m.forward_cached(idx[:, 20:], cache, last_only=False))  # a chunk after the prefill
    assert full.dtype == torch.float64
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **EXACT)
    with pytest.raises(ValueError, match="KV cache holds 32 positions"):
        m.forward_cached(idx[:, :5], cache)


def test_decoding_packs_the_weights_once_and_again_after_any_change():
    """One-token steps use the packed copy (decode_weights); a changed weight must never decode stale."""
    m = make().double()
    idx = torch.randint(4, 97, (1, 8))

    def next_token_logits() -> torch.Tensor:
        cache = m.new_cache(1)
        m.forward_cached(idx[:, :7], cache)
        return m.forward_cached(idx[:, 7:], cache)[0, -1]

    before = next_token_logits()
    packed = m.decode_weights()
    assert (
        m.decode_weights() is packed and m.new_cache(1).decode_weights is packed
    )  # reused while no weight moves
    torch.testing.assert_close(packed.layers[0].w2, m.layers[0].feed_forward.w2.weight.T, **EXACT)
    with torch.no_grad():
        m.layers[1].feed_forward.w2.weight.mul_(3.0)  # what an optimizer step does: in place
    after = next_token_logits()
    assert m.decode_weights() is not packed
    torch.testing.assert_close(after, m(idx)[0][0, -1], **EXACT)
    assert not torch.allclose(after, before)


def test_left_padded_cache_rows_equal_unpadded():
    m = make().double()
    a, b = torch.randint(4, 97, (1, 12)), torch.randint(4, 97, (1, 7))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], dim=1)])  # left-pad b
    cache = m.new_cache(2, pad=torch.tensor([0, 5]))
    out = m.forward_cached(batch, cache, last_only=False)
    nxt = torch.randint(4, 97, (2, 1))
    step = m.forward_cached(nxt, cache)
    torch.testing.assert_close(out[0], m(a)[0][0], **EXACT)
    torch.testing.assert_close(out[1, 5:], m(b)[0][0], **EXACT)
    torch.testing.assert_close(step[1, -1], m(torch.cat([b, nxt[1:]], 1))[0][0, -1], **EXACT)
    assert torch.isfinite(out).all()  # padding queries never see an all-masked row


def test_autocast_and_bf16_weights():
    """The GPU trainer runs under bf16 autocast; inference may load bf16 weights (checked here on CPU)."""
    m = make(n_kv_heads=2).train()
    idx = torch.randint(0, 97, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = m(idx, idx)
    assert logits.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())
    low = make().to(torch.bfloat16)
    cache = low.new_cache(1)
    assert cache.k.dtype == torch.bfloat16
    out = low.forward_cached(idx[:1], cache)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 97)
    torch.testing.assert_close(out, low(idx[:1], last_only=True)[0], atol=0.05, rtol=0.05)
    step = low.forward_cached(idx[:1, :1], cache)  # one token: the packed bf16 matrices
    longer = torch.cat([idx[:1], idx[:1, :1]], dim=1)
    assert cache.decode_weights.layers[0].qkv.dtype == torch.bfloat16
    torch.testing.assert_close(step, low(longer, last_only=True)[0], atol=0.05, rtol=0.05)


def test_attention_under_cpu_autocast_runs_in_fp32():
    """bf16 q/k/v from autocast projections are attended in fp32 (CPU flash-attention backward is ~5x
    slower in bf16), with gradients flowing back in bf16; without autocast the inputs' dtype stays."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=gen).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = causal_attention(q, k, v, 0.0)
    assert y.dtype == torch.float32
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    y.sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16
    plain = causal_attention(q.detach(), k.detach(), v.detach(), 0.0)
    assert plain.dtype == torch.bfloat16
