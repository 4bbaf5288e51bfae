"""Weight quantization of a whole model: round-to-nearest, or AWQ-style calibrated int4.

    int8-weight    every projection int8 per output channel, activations bf16
    int8-dynamic   the same weights, activations int8 per token at run time
    int4-weight    groups of 32/64/128 along the input; `calibration: awq` first searches,
                   per group of projections sharing an input (q/k/v, o, gate/up, down), the
                   per-channel scale s = mean|x|^alpha that minimises the output error on
                   calibration rows (alpha in 0..1, so round-to-nearest is one candidate and
                   the search never does worse on them), then per output row and group the
                   range clip that minimises that group's output error (AWQ's auto-clip).

The search is ours (AWQ, Lin et al. 2023; AutoAWQ is deprecated and llm-compressor carries a
GPU-first pipeline): it runs on the calibration rows `calibrate.collect` keeps, layer by layer,
in fp32 on the CPU. The embedding table and output head are quantized too (`embeddings`), a
tied pair held once, so that int4 reaches under 30% of the bf16 size on small models whose
embedding is a fifth of the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lmforge.compress.calibrate import PROJECTIONS, InputStats
from lmforge.model.quant import (
    QuantEmbedding,
    QuantLinear,
    fake_quantize_int4,
    quantize_int4,
    replace_module,
)

METHODS = {"int8-weight": "int8", "int8-dynamic": "int8-dyn", "int4-weight": "int4"}
# projections that read the same input share one AWQ scale (they run as one fused matmul)
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"),
                ("down_proj",))
ALPHAS = [i / 20 for i in range(21)]
CLIPS = [1.0 - i / 20 for i in range(10)]  # 1.0 down to 0.55


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, group_size: int = 64,
                   stats: dict[str, InputStats] | None = None, embeddings: bool = True,
                   calibration: str = "awq") -> dict[str, Any]:
    """Replace the model's projections (and head/embedding) by QuantLinears, in place.
    With `stats` (int4 only) the `calibration` runs: awq's scale and clip searches, or
    gptq's error-compensating rounding (stats with Hessians). Returns what was done."""
    kind = METHODS[method]
    calibrated = stats is not None and kind == "int4"
    done: dict[str, Any] = {"method": method, "group_size": group_size if kind == "int4" else 0,
                            "calibrated": calibration if calibrated else None, "modules": 0,
                            "alphas": {}}
    if calibrated and calibration == "gptq":
        return _quantize_gptq(model, group_size, stats, embeddings, done)
    for index in range(len(model.model.layers)):
        for group in SHARED_INPUT:
            names = [f"model.layers.{index}.{_parent(leaf)}.{leaf}" for leaf in group]
            linears = [model.get_submodule(n) for n in names]
            if not all(isinstance(m, nn.Linear) for m in linears):
                continue  # an MoE block's experts stay in full precision
            if not all(_fits(m, kind, group_size) for m in linears):
                continue
            scale, alpha = None, None
            if calibrated and names[0] in stats:
                scale, alpha = awq_scale(linears, stats[names[0]], group_size)
                done["alphas"][names[0]] = alpha
            for name, linear in zip(names, linears, strict=True):
                quantized = _quantize(linear.weight, linear.bias, kind, group_size, scale,
                                      stats.get(name) if calibrated else None)
                replace_module(model, name, quantized)
                done["modules"] += 1
    if embeddings:
        done["embeddings"] = _quantize_embeddings(model, kind, group_size)
    return done


def _quantize_gptq(model: nn.Module, group_size: int, stats: dict[str, InputStats],
                   embeddings: bool, done: dict[str, Any]) -> dict[str, Any]:
    from lmforge.compress.gptq import gptq_int4

    for name, linear in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if not (isinstance(linear, nn.Linear) and leaf in PROJECTIONS and name in stats
                and _fits(linear, "int4", group_size)) or ".experts." in name:
            continue
        module = QuantLinear.from_float(linear.weight, linear.bias, "int4", group_size)
        for key, value in gptq_int4(linear.weight, stats[name].xtx, group_size).items():
            getattr(module, key).copy_(value)
        module.prepare()
        replace_module(model, name, module)
        done["modules"] += 1
    if embeddings:
        head = model.lm_head.weight.detach().clone()
        done["embeddings"] = _quantize_embeddings(model, "int4", group_size)
        if done["embeddings"] == "separate" and "lm_head" in stats:  # a tied head stays rtn:
            gptq = gptq_int4(head, stats["lm_head"].xtx, group_size)  # it is the lookup too
            for key, value in gptq.items():
                getattr(model.lm_head, key).copy_(value)
            model.lm_head.prepare()
    return done


def _quantize(weight: Tensor, bias: Tensor | None, kind: str, group_size: int,
              scale: Tensor | None, stats: InputStats | None) -> QuantLinear:
    if kind != "int4":
        return QuantLinear.from_float(weight, bias, kind)
    input_scale = None if scale is None else 1.0 / scale
    module = QuantLinear.from_float(weight, bias, "int4", group_size, input_scale)
    if stats is not None and stats.sample:
        scaled = weight.float() * (1.0 if scale is None else scale)
        rows = stats.rows()[:256] / (1.0 if scale is None else scale)
        clip = awq_clip(scaled, rows, group_size)
        for name, value in quantize_int4(scaled, group_size, clip).items():
            getattr(module, name).copy_(value)
        module.prepare()
    return module


def awq_scale(linears: list[nn.Linear], stats: InputStats, group_size: int
              ) -> tuple[Tensor, float]:
    """The per-input-channel scale s = mean|x|^alpha (normalised) whose int4 rounding of
    W * s, undone by x / s, changes the projections' outputs least on the sample rows."""
    x = stats.rows()
    weights = [m.weight.float() for m in linears]
    reference = [x @ w.t() for w in weights]
    activation = stats.mean_abs.clamp(min=1e-6)
    best, best_err = torch.ones_like(activation), float("inf")
    best_alpha = 0.0
    for alpha in ALPHAS:
        s = activation.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for w, ref in zip(weights, reference, strict=True):
            w_q = fake_quantize_int4(w * s, group_size) / s
            err += float((x @ w_q.t() - ref).pow(2).sum())
        if err < best_err:
            best, best_err, best_alpha = s, err, alpha
    return best, best_alpha


def awq_clip(weight: Tensor, rows: Tensor, group_size: int) -> Tensor:
    """Per (output row, group) the range shrink in CLIPS whose rounding error, seen through
    the sample rows' inputs to that group, is least: shape (N, K/g, 1)."""
    n, k = weight.shape
    groups = k // group_size
    x = rows.view(-1, groups, group_size)
    w = weight.view(n, groups, group_size)
    best = torch.ones(n, groups, 1)
    best_err = torch.full((n, groups), float("inf"))
    for clip in CLIPS:
        diff = w - fake_quantize_int4(weight, group_size, clip).view(n, groups, group_size)
        err = torch.einsum("mgk,ngk->mng", x, diff).pow(2).sum(0)  # (N, K/g)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best[better] = clip
    return best


def _quantize_embeddings(model: nn.Module, kind: str, group_size: int) -> str:
    """The output head, and the embedding table (shared with the head when tied)."""
    head = model.lm_head
    embed = model.model.embed_tokens
    tied = head.weight is embed.weight
    if kind == "int8-dyn":
        kind = "int8"  # a lookup table has no activations to quantize
    if not isinstance(head, nn.Linear) or not isinstance(embed, nn.Embedding):
        return "kept"  # a prompt-tuned model's embedding stays as it is
    if not _fits(head, kind, group_size):
        return "kept"
    quantized = QuantLinear.from_float(head.weight, None, kind, group_size)
    model.lm_head = quantized
    if tied:
        model.model.embed_tokens = QuantEmbedding(quantized, owned=False)
        return "tied"
    table = QuantLinear.from_float(embed.weight, None, kind, group_size)
    model.model.embed_tokens = QuantEmbedding(table, owned=True)
    return "separate"


def _fits(linear: nn.Module, kind: str, group_size: int) -> bool:
    return kind != "int4" or linear.in_features % group_size == 0


def _parent(leaf: str) -> str:
    return "self_attn" if leaf in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
