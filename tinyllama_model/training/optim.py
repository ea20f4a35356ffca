"""Optimizers: AdamW everywhere, or Muon for the hidden weight matrices with AdamW for the rest.

Muon (Nesterov momentum, then the update orthogonalised by a few Newton-Schulz iterations) only suits
2-D hidden matrices; the embedding table, the output head and the norm gains stay on AdamW, as in Keller
Jordan's recipe and Moonshot's "Muon is scalable". On the 10-minute CPU preset's shape it reaches a lower
held-out loss than AdamW on the same tokens (docs/tuning-log.md).

Both choices return one object with `param_groups`, `step`, `zero_grad`, `state_dict` and
`load_state_dict`, so the trainer's schedule and exact-resume code are the same for either. Every param
group carries `lr_scale`: the trainer sets `lr = schedule(step) * lr_scale`, which lets Muon run at its
own peak rate under the same warmup and cosine.
"""

from __future__ import annotations

from typing import Any

import torch

from tinyllama_model.model import TinyLlama
from tinyllama_model.training.train_config import TrainConfig


class OptimizerChain:
    """Several torch optimizers over disjoint parameters, stepped and checkpointed as one."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def orthogonalize(g: torch.Tensor, steps: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Keller Jordan's quintic).

    g is one matrix (m, n) or a stack of them (k, m, n), each orthogonalised on its own: Muon stacks the
    matrices of one shape, so a step makes a few batched matmuls instead of 15 small ones per matrix.
    The iteration runs in `dtype`: bf16 where the run trains in bf16 (CUDA as in the reference, or a CPU
    whose probe picked bf16), and by default fp32, because CPUs without bf16 units run a bf16 matmul
    several times slower (why torch.optim.Muon, which always casts to bf16, is not used:
    docs/tuning-log.md). float64 stays.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype or torch.promote_types(g.dtype, torch.float32))
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz, for 2-D hidden weight matrices only.

    Nesterov momentum, then the update replaced by its orthogonalisation and scaled by
    sqrt(max(1, rows / cols)) (Keller Jordan's "original" rule); decoupled weight decay. Matrices of one
    shape are updated as a stack: a few batched matmuls instead of many small ones (docs/tuning-log.md).
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float,
        weight_decay: float,
        ns_steps: int = 5,
        ns_dtype: torch.dtype | None = None,
    ):
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "ns_steps": ns_steps}
        )
        self.ns_dtype = ns_dtype  # not a group field: checkpoints keep the layout they always had

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple[torch.Size, torch.dtype, torch.device], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                by_shape.setdefault((p.shape, p.dtype, p.device), []).append(p)
            for (shape, _, _), same in by_shape.items():
                grads = [p.grad for p in same]
                bufs = [self.state[p]["momentum_buffer"] for p in same]
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, grads)
                nesterov = torch.stack(torch._foreach_add(grads, bufs, alpha=mu))  # (k, rows, cols)
                updates = orthogonalize(nesterov, group["ns_steps"], self.ns_dtype).unbind(0)
                torch._foreach_mul_(same, 1 - lr * wd)
                torch._foreach_add_(same, updates, alpha=-lr * max(1.0, shape[0] / shape[1]) ** 0.5)


def _adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], device_type: str):
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):  # no fused kernel for this device/torch build
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def _param_roles(model: TinyLlama) -> tuple[list, list, list]:
    """(hidden matrices, the untied output head, never decayed: embedding tables, norm gains, gates).

    Value-embedding tables are lookups like the token table; their gates are tiny (kv_heads x 32)
    mixing weights, not hidden matrices, so neither goes to Muon or takes decay.
    """
    embedding, head = model.tok_embeddings.weight, model.output.weight
    hidden, decayed_head, undecayed = [], [], []
    for name, p in model.named_parameters():  # a tied head is the embedding table, listed once
        if not p.requires_grad:
            continue
        lookup_or_gate = name.startswith("value_embeds.") or name.endswith("ve_gate.weight")
        if p is embedding or p.dim() < 2 or lookup_or_gate:
            undecayed.append(p)
        elif p is head:
            decayed_head.append(p)
        else:
            hidden.append(p)
    return hidden, decayed_head, undecayed


def build_optimizer(
    model: TinyLlama, cfg: TrainConfig, device_type: str, compute_dtype: str = "float32"
) -> OptimizerChain:
    """AdamW decays hidden matrices and the untied output head, never norms or the embedding table.

    An untied head runs at `head_lr` (its own group) when that is set, under the same schedule. Muon's
    Newton-Schulz runs in bf16 on CUDA and wherever training computes in bf16 (`compute_dtype`).
    """
    hidden, head, undecayed = _param_roles(model)
    use_muon = cfg.optimizer == "muon"
    decayed = [] if use_muon else hidden
    if cfg.head_lr is None:  # the head shares the decayed group (the layout checkpoints have always had)
        decayed, head = decayed + head, []
    wd = cfg.weight_decay
    adam_groups = [
        {"params": decayed, "weight_decay": wd, "lr_scale": 1.0},
        {"params": head, "weight_decay": wd, "lr_scale": (cfg.head_lr or cfg.lr) / cfg.lr},
        {"params": undecayed, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if use_muon:
        optimizers["muon"] = Muon(
            [{"params": hidden, "lr_scale": cfg.muon_lr / cfg.lr}],
            lr=cfg.muon_lr,
            momentum=cfg.muon_momentum,
            # the same shrink per step as AdamW's lr * weight_decay
            weight_decay=cfg.weight_decay * cfg.lr / cfg.muon_lr,
            ns_dtype=torch.bfloat16 if device_type == "cuda" or compute_dtype == "bfloat16" else None,
        )
    # a tied head under Muon leaves AdamW no decayed matrix
    optimizers["adamw"] = _adamw([g for g in adam_groups if g["params"]], cfg.lr, cfg.betas, device_type)
    return OptimizerChain(optimizers)
