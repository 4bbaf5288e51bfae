"""Pruning: zeros in place (unstructured, 2:4), or whole heads and channels cut out.

    magnitude   the smallest |w| of each projection set to zero, to the target sparsity
    wanda       score |w_ij| * ||X_j|| (Sun et al. 2023), compared within each output row,
                so a weight on an input channel that carries large activations survives
    2:4         in every 4 consecutive inputs of a row the 2 lowest scores (wanda's when
                calibrated, else magnitude) zeroed: the semi-structured pattern sparse
                tensor cores run (on this CPU it saves neither time nor disk; it is there for
                GPU deployment, and is measured as such)
    structured  whole key/value groups (a kv head with its query heads, so GQA stays
                uniform) and SwiGLU channels removed from every layer, ranked by calibrated
                importance: ||x_j|| * ||W_down[:, j]|| for a channel, the same summed over a
                group's o_proj inputs for a head group. The result is a smaller model with
                smaller matrices and a config that says so (n_heads, n_kv_heads, ffn_dim,
                head_size), which every stage and transformers load as a plain model.

Embeddings and the output head are not pruned (a pruned vocabulary row cannot be recovered).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lmforge.compress.calibrate import PROJECTIONS, InputStats
from lmforge.errors import UserError
from lmforge.model.llama import Transformer


def projections(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules()
            if name.rsplit(".", 1)[-1] in PROJECTIONS and isinstance(m, nn.Linear)
            and ".experts." not in name}


@torch.no_grad()
def prune_unstructured(model: nn.Module, method: str, sparsity: float,
                       stats: dict[str, InputStats] | None) -> dict[str, Tensor]:
    """Zero weights in place; returns each projection's keep mask (for recovery training)."""
    masks = {}
    for name, linear in projections(model).items():
        w = linear.weight
        score = w.abs().float()
        if method in ("wanda", "2:4") and stats is not None and name in stats:
            score = score * stats[name].norm[None, :].to(score.device)
        elif method == "wanda":
            raise UserError("wanda pruning needs calibration text; give compress.calibration_data")
        if method == "2:4":
            mask = keep_two_of_four(score)
        elif method == "wanda":
            drop = int(w.size(1) * sparsity)
            mask = torch.ones_like(score, dtype=torch.bool)
            if drop:
                mask.scatter_(1, score.argsort(dim=1)[:, :drop], False)
        else:
            drop = int(score.numel() * sparsity)
            mask = torch.ones_like(score, dtype=torch.bool)
            if drop:
                mask.view(-1)[score.view(-1).argsort()[:drop]] = False
        w.mul_(mask)
        masks[name] = mask
    return masks


def keep_two_of_four(score: Tensor) -> Tensor:
    n, k = score.shape
    if k % 4:
        raise UserError(f"2:4 sparsity needs input widths divisible by 4, got {k}")
    groups = score.view(n, k // 4, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, groups.topk(2, dim=2).indices, True)
    return mask.view(n, k)


def sparsity_of(model: nn.Module) -> float:
    """The share of zeros among the projections' weights."""
    weights = [m.weight for m in projections(model).values()]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def keep_count(total: int, ratio: float, multiple: int) -> int:
    """How many of `total` to keep after removing `ratio` of them, a multiple of `multiple`
    where that leaves any (kernel-friendly widths), at least one."""
    kept = max(1, round(total * (1 - ratio)))
    if kept >= multiple:
        kept = kept // multiple * multiple
    return kept


@torch.no_grad()
def prune_structured(model: Transformer, stats: dict[str, InputStats], head_ratio: float,
                     channel_ratio: float) -> tuple[Transformer, dict[str, Any]]:
    """A new, smaller model without the least important kv groups and MLP channels."""
    cfg = model.cfg
    if cfg.moe.enabled:
        raise UserError("structured pruning of MoE models is not supported; prune a dense model")
    group = cfg.n_heads // cfg.kv_heads
    kv_keep = keep_count(cfg.kv_heads, head_ratio, 1)
    ffn_keep = keep_count(cfg.hidden_dim, channel_ratio, 32)
    new_cfg = cfg.model_copy(update={"n_heads": kv_keep * group, "n_kv_heads": kv_keep,
                                     "head_size": cfg.head_dim, "ffn_dim": ffn_keep})
    small = Transformer(new_cfg).to(model.rope_cos.device)
    small.load_state_dict({k: v for k, v in model.state_dict().items()
                           if ".layers." not in k}, strict=False)
    hd = cfg.head_dim
    kept_heads = []
    for i, (block, target) in enumerate(zip(model.model.layers, small.model.layers,
                                            strict=True)):
        prefix = f"model.layers.{i}."
        attn, mlp = block.self_attn, block.mlp
        o_norm = _stats(stats, prefix + "self_attn.o_proj").norm
        head_score = (o_norm * attn.o_proj.weight.float().norm(dim=0)).view(cfg.n_heads, hd)
        group_score = head_score.sum(1).view(cfg.kv_heads, group).sum(1)
        groups = group_score.topk(kv_keep).indices.sort().values
        heads = (groups[:, None] * group + torch.arange(group)).view(-1)
        q_rows = _rows(heads, hd)
        kv_rows = _rows(groups, hd)
        down_norm = _stats(stats, prefix + "mlp.down_proj").norm
        channel_score = down_norm * mlp.down_proj.weight.float().norm(dim=0)
        channels = channel_score.topk(ffn_keep).indices.sort().values
        t_attn, t_mlp = target.self_attn, target.mlp
        _copy_rows(t_attn.q_proj, attn.q_proj, q_rows)
        _copy_rows(t_attn.k_proj, attn.k_proj, kv_rows)
        _copy_rows(t_attn.v_proj, attn.v_proj, kv_rows)
        t_attn.o_proj.weight.copy_(attn.o_proj.weight[:, q_rows])
        _copy_rows(t_mlp.gate_proj, mlp.gate_proj, channels)
        _copy_rows(t_mlp.up_proj, mlp.up_proj, channels)
        t_mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, channels])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            getattr(target, norm).weight.copy_(getattr(block, norm).weight)
        for norm in ("q_norm", "k_norm"):
            if getattr(attn, norm) is not None:
                getattr(t_attn, norm).weight.copy_(getattr(attn, norm).weight)
        kept_heads.append(heads.tolist())
    report = {"kv_heads": [cfg.kv_heads, kv_keep], "heads": [cfg.n_heads, new_cfg.n_heads],
              "ffn_dim": [cfg.hidden_dim, ffn_keep], "kept_heads": kept_heads,
              "params": [model.num_params(), small.num_params()]}
    return small.eval(), report


def _stats(stats: dict[str, InputStats], name: str) -> InputStats:
    if name not in stats:
        raise UserError(f"no calibration statistics for {name}; structured pruning needs "
                        "calibration text")
    return stats[name]


def _rows(index: Tensor, width: int) -> Tensor:
    return (index[:, None] * width + torch.arange(width)).view(-1)


def _copy_rows(target: nn.Linear, source: nn.Linear, rows: Tensor) -> None:
    target.weight.copy_(source.weight[rows])
    if source.bias is not None:
        target.bias.copy_(source.bias[rows])
