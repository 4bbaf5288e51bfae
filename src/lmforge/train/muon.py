"""Muon with the Newton-Schulz iterations batched over matrices of the same shape.

Same algorithm, coefficients and defaults as `torch.optim.Muon` (Keller Jordan's Muon:
Nesterov momentum, quintic Newton-Schulz orthogonalization in bf16, LR scaled by
sqrt(max(1, rows/cols)), decoupled weight decay), and the same state layout
(`momentum_buffer` per parameter). torch's version runs 15 small matmuls per matrix, one
matrix at a time; a model's hidden matrices come in a few shapes, so stacking each shape
into one batch runs 15 batched matmuls per shape instead. The updates match
torch.optim.Muon's (to 1e-6 in tests/test_train.py, bit-equal in our runs); on the 4-layer
benchmark model's 28 matrices an optimizer step took 32 ms instead of 37-43 ms on one core.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(batch: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximate U V^T of each (rows <= cols) matrix in a (n, rows, cols) batch, in bf16."""
    a, b, c = NS_COEFFICIENTS
    x = batch.bfloat16()
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D hidden weight matrices only."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95,
                 weight_decay: float = 0.1, nesterov: bool = True, ns_steps: int = 5,
                 eps: float = 1e-7) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        ns_steps=ns_steps, eps=eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[Tensor]) -> None:
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            bufs.append(state["momentum_buffer"])
        momentum = group["momentum"]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, u in enumerate(updates):
            rows, cols = u.shape
            by_shape[(min(rows, cols), max(rows, cols))].append(i)
        lr, decay = group["lr"], group["weight_decay"]
        if decay:
            torch._foreach_mul_(params, 1 - lr * decay)
        for indices in by_shape.values():
            wide = [updates[i] if updates[i].size(0) <= updates[i].size(1) else updates[i].mT
                    for i in indices]
            ortho = orthogonalize(torch.stack(wide), group["ns_steps"], group["eps"])
            for j, i in enumerate(indices):
                p = params[i]
                update = ortho[j] if p.size(0) <= p.size(1) else ortho[j].mT
                scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
                p.add_(update.to(p.dtype), alpha=-lr * scale)
