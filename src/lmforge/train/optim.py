"""Optimizers: AdamW with decay on matrices only, or Muon for hidden matrices plus AdamW.

Muon is lmforge.train.muon.Muon: torch.optim.Muon's algorithm with the Newton-Schulz
iterations batched per matrix shape (the same updates, fewer and larger matmuls).

`Optimizers` holds one or two torch optimizers behind one step/zero_grad/state_dict, and
sets every group's LR from its peak (`peak_lr`) times the schedule factor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmforge.train.config import TrainConfig
from lmforge.train.muon import Muon


class Optimizers:
    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def set_lr(self, factor: float) -> float:
        """Scale every group to peak_lr * factor; returns the AdamW LR (what we log)."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * factor
        return self.optimizers[0].param_groups[0]["lr"]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)

    def reset_peaks(self, cfg: TrainConfig) -> None:
        """Peak LRs from the config, not the checkpoint: a resume may change train.lr."""
        for opt in self.optimizers:
            peak = cfg.muon_lr if isinstance(opt, Muon) else cfg.lr
            for group in opt.param_groups:
                group["peak_lr"] = peak


def split_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by role: hidden matrices (inside the blocks), embedding/head, vectors."""
    groups: dict[str, list[nn.Parameter]] = {"hidden": [], "embed": [], "vector": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            groups["vector"].append(p)
        elif ".layers." in f".{name}" and not name.endswith("mlp.gate.weight"):
            groups["hidden"].append(p)
        else:
            groups["embed"].append(p)
    return groups


def build_optimizers(model: nn.Module, cfg: TrainConfig, device: torch.device) -> Optimizers:
    """AdamW over everything, or Muon over hidden matrices and AdamW over the rest.

    Weight decay applies to matrices only (not norms); the MoE router stays on AdamW since
    its few rows are not a hidden linear map Muon is made for.
    """
    groups = split_params(model)
    adamw_kwargs: dict[str, Any] = dict(betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    if device.type in ("cpu", "cuda"):
        adamw_kwargs["fused"] = True
    matrices = groups["embed"] + ([] if cfg.optimizer == "muon" else groups["hidden"])
    adamw_groups = [
        {"params": matrices, "weight_decay": cfg.weight_decay, "lr": cfg.lr, "peak_lr": cfg.lr},
        {"params": groups["vector"], "weight_decay": 0.0, "lr": cfg.lr, "peak_lr": cfg.lr},
    ]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW([g for g in adamw_groups if g["params"]], **adamw_kwargs)
    ]
    if cfg.optimizer == "muon" and groups["hidden"]:
        optimizers.append(Muon(
            [{"params": groups["hidden"], "lr": cfg.muon_lr, "peak_lr": cfg.muon_lr}],
            lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay,
            nesterov=True,
        ))
    return Optimizers(optimizers)
