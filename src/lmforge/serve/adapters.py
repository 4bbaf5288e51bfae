"""LoRA adapters served over one copy of the base weights (multi-LoRA).

`lmforge serve BASE --adapter sql=DIR --adapter chat=DIR2` serves three model ids from one
engine: the base, and each adapter as a model of its own. The base weights stay as they are;
each adapter adds its low-rank update `x @ A^T @ B^T * scale` to the rows of the batch that
asked for it, so requests to different adapters (and to the base) share a forward pass, as
vLLM and punica batch them. An adapter's q/k/v (and gate/up) updates are stacked to match
the runner's fused matmuls: A side by side, B block-diagonal, the scale folded into B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lmforge.errors import UserError
from lmforge.model.llama import Transformer
from lmforge.model.peft import adapter_tensors, lora_spec, read_config

# the runner's fused matmuls, each with the projections it stacks (in its column order)
GROUPS = {"qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o": ("self_attn", ("o_proj",)),
          "gate_up": ("mlp", ("gate_proj", "up_proj")), "down": ("mlp", ("down_proj",))}


@dataclass
class ServedAdapter:
    name: str
    path: Path
    # per decoder layer: group -> (A^T (in, R), B^T * scale (R, out)); a group left out
    # of the adapter is absent
    layers: list[dict[str, tuple[Tensor, Tensor]]]


def read_served_adapter(name: str, path: Path, model: Transformer) -> ServedAdapter:
    """A PEFT LoRA adapter of `model`, stacked for the runner; a one-line UserError when it
    is not one (another base, prompt tuning, modules the runner has no update for)."""
    path = Path(path)
    config = read_config(path)
    if config["peft_type"] != "LORA":
        raise UserError(f"adapter {name}: {path} is a {config['peft_type']} adapter; "
                        "--adapter serves LoRA adapters (serve a prompt-tuned model with "
                        "`lmforge serve ADAPTER_DIR`)")
    spec = lora_spec(config, path)
    tensors = adapter_tensors(path)
    base = model.state_dict()
    layers = []
    for i, block in enumerate(model.model.layers):
        moe = not hasattr(block.mlp, "gate_proj")
        layer = {}
        for group, (parent, projections) in GROUPS.items():
            names = [f"model.layers.{i}.{parent}.{p}" for p in projections]
            pairs = [(tensors.pop(f"{n}.lora_A.weight", None),
                      tensors.pop(f"{n}.lora_B.weight", None)) for n in names]
            if all(a is None and b is None for a, b in pairs):
                continue
            if moe and parent == "mlp":
                raise UserError(f"adapter {name}: this model's MLPs are mixtures of experts; "
                                "served adapters may target only attention there")
            layer[group] = _stack(name, names, pairs, base, spec.scale)
        layers.append(layer)
    if tensors:
        extra = sorted(tensors)
        raise UserError(f"adapter {name}: {len(extra)} weights fit no projection of this model "
                        f"(e.g. {extra[0]}); is {path} an adapter of another base?")
    if not any(layers):
        raise UserError(f"adapter {name}: {path} holds no LoRA weights")
    return ServedAdapter(name, path, layers)


def _stack(name: str, modules: list[str], pairs: list[tuple[Tensor | None, Tensor | None]],
           base: dict[str, Tensor], scale: float) -> tuple[Tensor, Tensor]:
    """One group's A^T side by side and B^T block-diagonal (zero where a projection has no
    update), checked against the base weights' shapes."""
    outs = [base[f"{m}.weight"].shape[0] for m in modules]
    dim = base[f"{modules[0]}.weight"].shape[1]
    ranks = []
    for module, out, (a, b) in zip(modules, outs, pairs, strict=True):
        if (a is None) != (b is None):
            raise UserError(f"adapter {name}: {module} has only one of lora_A and lora_B")
        if a is not None and (a.shape[1] != dim or b.shape[0] != out or a.shape[0] != b.shape[1]):
            raise UserError(f"adapter {name}: {module}'s update has shapes {tuple(a.shape)} and "
                            f"{tuple(b.shape)}, the base needs ({dim} in, {out} out); is it an "
                            "adapter of another base?")
        ranks.append(0 if a is None else a.shape[0])
    a_t = torch.cat([a.float().t() for a, _ in pairs if a is not None], dim=1)
    b_t = torch.zeros(sum(ranks), sum(outs))
    row = col = 0
    for (_, b), rank, out in zip(pairs, ranks, outs, strict=True):
        if b is not None:
            b_t[row:row + rank, col:col + out] = b.float().t() * scale
        row, col = row + rank, col + out
    return a_t, b_t
