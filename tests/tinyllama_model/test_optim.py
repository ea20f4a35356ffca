"""Optimizers: which parameters each one owns, Muon's update rule, learning and checkpoint round trips."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tinyllama_model.test_model import make, tiny
from tinyllama_model import TinyLlama
from tinyllama_model.training.optim import Muon, build_optimizer, orthogonalize
from tinyllama_model.training.train_config import TrainConfig


def optimizer(m: TinyLlama, name: str, **kw):
    cfg = TrainConfig(max_steps=1, optimizer=name, **{"lr": 1e-3, "weight_decay": 0.1, "muon_lr": 0.02, **kw})
    return build_optimizer(m, cfg, device_type="cpu")


def ids(group: dict) -> set[int]:
    return {id(p) for p in group["params"]}


@pytest.mark.parametrize("tied", [False, True])
def test_adamw_decays_matrices_but_never_norms_or_the_embedding_table(tied):
    m = make(tie_embeddings=tied)
    decay, no_decay = optimizer(m, "adamw").param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert id(m.tok_embeddings.weight) in ids(no_decay)
    assert id(m.norm.weight) in ids(no_decay) and id(m.layers[0].ffn_norm.weight) in ids(no_decay)
    assert id(m.layers[0].attention.wq.weight) in ids(decay)
    assert (id(m.output.weight) in ids(decay)) is (not tied)
    assert len(ids(decay) | ids(no_decay)) == len(list(m.parameters()))
    assert not ids(decay) & ids(no_decay)


@pytest.mark.parametrize("tied", [False, True])
def test_muon_owns_the_hidden_matrices_and_adamw_the_rest(tied):
    m = make(tie_embeddings=tied)
    opt = optimizer(m, "muon", lr=1e-3, muon_lr=0.02)
    (muon_group,) = opt.optimizers["muon"].param_groups
    adam_ids = set().union(*(ids(g) for g in opt.optimizers["adamw"].param_groups))
    hidden = {id(p) for name, p in m.named_parameters() if p.dim() == 2 and name.startswith("layers.")}
    assert ids(muon_group) == hidden
    assert id(m.tok_embeddings.weight) in adam_ids and id(m.output.weight) in adam_ids
    assert len(adam_ids | hidden) == len(list(m.parameters())) and not adam_ids & hidden
    # Muon follows the same schedule at its own peak, and shrinks weights as much per step as AdamW would
    assert muon_group["lr_scale"] == pytest.approx(20.0)
    assert muon_group["lr"] * muon_group["weight_decay"] == pytest.approx(1e-3 * 0.1)


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match=r"train.optimizer must be one of \('adamw', 'muon'\)"):
        TrainConfig(max_steps=1, optimizer="sgd")


@pytest.mark.parametrize("shape", [(64, 64), (64, 176), (176, 64)])
def test_orthogonalize_flattens_the_spectrum(shape):
    """Singular values spread over two decades all land in the quintic's band around 1."""
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], k, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(shape[1], k, generator=gen))[0]
    g = u @ torch.diag(torch.logspace(-1, 1, k)) @ v.T
    s = torch.linalg.svdvals(orthogonalize(g, steps=5))
    assert s.min() > 0.6 and s.max() < 1.25
    assert orthogonalize(g, 5).shape == g.shape


def test_muon_step_is_decay_then_scaled_orthogonal_nesterov_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(96, 32))
    g = torch.randn(96, 32)
    before = w.detach().clone()
    opt = Muon([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    w.grad = g.clone()
    opt.step()
    # first step: buffer = g, Nesterov update = g + 0.9 g; tall matrix: scale sqrt(96 / 32)
    expected = before * (1 - 0.1 * 0.5) - 0.1 * math.sqrt(3.0) * orthogonalize(1.9 * g, 5)
    torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], g)


def test_a_stack_is_orthogonalized_matrix_by_matrix():
    """A stack (k, m, n) gives each matrix what it gets alone: no scale or spectrum shared across it."""
    gen = torch.Generator().manual_seed(0)
    stack = torch.randn(3, 40, 24, generator=gen) * torch.tensor([0.01, 1.0, 50.0])[:, None, None]
    together = orthogonalize(stack, 5)
    for g, out in zip(stack, together, strict=True):
        torch.testing.assert_close(out, orthogonalize(g, 5), rtol=1e-5, atol=1e-6)


def test_muon_steps_matrices_of_one_shape_together_as_it_would_one_by_one():
    """Two steps over mixed shapes (stacked per shape) equal a separate Muon per matrix."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(48, 16), (16, 48), (48, 16), (16, 16), (48, 16)]
    weights = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
    together = [torch.nn.Parameter(w.clone()) for w in weights]
    alone = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = Muon(together, lr=0.05, momentum=0.9, weight_decay=0.2)
    singles = [Muon([p], lr=0.05, momentum=0.9, weight_decay=0.2) for p in alone]
    for step_grads in grads:
        for p, q, g in zip(together, alone, step_grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        for single in singles:
            single.step()
    for p, q in zip(together, alone, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], opt_state(singles, q))


def opt_state(singles: list[Muon], p: torch.Tensor) -> torch.Tensor:
    return next(s.state[p]["momentum_buffer"] for s in singles if p in s.state)


@pytest.mark.parametrize(("name", "lr"), [("adamw", 3e-3), ("muon", 3e-3)])
def test_a_few_steps_overfit_one_batch(name, lr):
    torch.manual_seed(0)
    m = TinyLlama(tiny()).train()
    opt = optimizer(m, name, lr=lr)
    idx = torch.randint(0, 97, (4, 16))
    x, y = idx[:, :-1], idx[:, 1:]
    first = m(x, y)[1].item()
    for _ in range(30):
        _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(97), rel=0.05)  # small init: near-uniform predictions
    assert loss.item() < 0.5 * first


def test_chain_state_round_trips_and_refuses_another_optimizers_state():
    m = make()
    opt = optimizer(m, "muon")
    m(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))[1].backward()
    opt.step()
    fresh = optimizer(make(), "muon")
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state_dict().keys() == {"muon", "adamw"}
    assert len(fresh.optimizers["muon"].state) == len(opt.optimizers["muon"].state) > 0
    with pytest.raises(ValueError, match=r"optimizer state holds \['adamw'\], expected \['adamw', 'muon'\]"):
        fresh.load_state_dict(optimizer(make(), "adamw").state_dict())


def test_an_untied_head_gets_its_own_rate_under_the_same_schedule():
    m = make()
    chain = optimizer(m, "muon", lr=1e-2, head_lr=4e-3)
    head_groups = [g for g in chain.optimizers["adamw"].param_groups if id(m.output.weight) in ids(g)]
    assert len(head_groups) == 1 and ids(head_groups[0]) == {id(m.output.weight)}
    assert head_groups[0]["lr_scale"] == pytest.approx(0.4) and head_groups[0]["weight_decay"] == 0.1
    # without head_lr the groups are the ones existing checkpoints hold
    assert len(optimizer(m, "muon").optimizers["adamw"].param_groups) == 2


def test_value_embeddings_and_their_gates_stay_on_adamw_without_decay():
    m = make(n_layers=2, value_embeds=True)
    chain = optimizer(m, "muon")
    (muon_group,) = chain.optimizers["muon"].param_groups
    no_decay = next(g for g in chain.optimizers["adamw"].param_groups if g["weight_decay"] == 0.0)
    extra = {id(p) for n, p in m.named_parameters() if "value_embeds" in n or "ve_gate" in n}
    assert extra and extra <= ids(no_decay) and not extra & ids(muon_group)


@pytest.mark.parametrize(("compute_dtype", "ns_dtype"), [("float32", None), ("bfloat16", torch.bfloat16)])
def test_muon_orthogonalizes_in_the_dtype_training_computes_in(compute_dtype, ns_dtype):
    """A CPU run that trains in bf16 runs Newton-Schulz in bf16 too (AMX-fast); an fp32 run stays fp32."""
    m = make()
    cfg = TrainConfig(max_steps=1, optimizer="muon", lr=1e-3, muon_lr=0.02)
    opt = build_optimizer(m, cfg, device_type="cpu", compute_dtype=compute_dtype)
    assert opt.optimizers["muon"].ns_dtype == ns_dtype
    w = m.layers[0].attention.wq.weight
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    before = w.detach().clone()
    w.grad = g.clone()
    opt.optimizers["muon"].step()
    update = orthogonalize(1.95 * g, 5, ns_dtype)  # first step: g + 0.95 g
    assert update.dtype == torch.float32  # the update is cast back to the weight's dtype
    expected = before * (1 - 0.02 * cfg.weight_decay * 1e-3 / 0.02) - 0.02 * update
    torch.testing.assert_close(w.detach(), expected)


def test_bf16_newton_schulz_lands_near_the_fp32_result():
    g = torch.randn(3, 64, 48, generator=torch.Generator().manual_seed(2))
    low, full = orthogonalize(g, 5, torch.bfloat16), orthogonalize(g, 5)
    assert not torch.equal(low, full)  # it did compute in bf16
    torch.testing.assert_close(low, full, rtol=0, atol=0.05)
