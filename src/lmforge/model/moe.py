"""Mixture-of-experts feed-forward: top-k token routing with a load-balancing loss.

Names follow Qwen-MoE (`mlp.gate.weight`, `mlp.experts.N.gate_proj.weight`). The layer keeps
its last load-balancing loss in `aux_loss` (Switch Transformer, Fedus et al. 2021:
num_experts * sum_e fraction_routed_e * mean_prob_e, which is 1.0 when routing is uniform).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.config import ModelConfig


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, expert: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.num_experts, self.top_k = cfg.moe.num_experts, cfg.moe.top_k
        self.gate = nn.Linear(cfg.dim, self.num_experts, bias=False)
        self.experts = nn.ModuleList(expert(cfg.dim, cfg.expert_dim)
                                     for _ in range(self.num_experts))
        self.aux_loss = torch.zeros(())

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.size(-1))
        probs = self.gate(flat).float().softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(flat.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            y = expert(flat[token]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        routed = F.one_hot(chosen, self.num_experts).sum(dim=1).float().mean(dim=0) / self.top_k
        self.aux_loss = self.num_experts * (routed * probs.mean(dim=0)).sum()
        return out.view_as(x)
