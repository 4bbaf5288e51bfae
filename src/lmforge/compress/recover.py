"""A short recovery fine-tune after pruning: next-token loss on the calibration text.

Full training keeps every pruned weight at zero (the masks are re-applied after each step);
LoRA trains adapters on the frozen pruned weights and merges them, then re-applies the
masks, so a sparse model stays exactly as sparse. Windows are the calibration windows, so
recovery sees only text the run's data stage produced.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.progress import count_progress


def recover(model: nn.Module, windows: Tensor, steps: int, lr: float, batch_size: int,
            method: str = "full", masks: dict[str, Tensor] | None = None,
            seed: int = 0) -> list[float]:
    """Train in place for `steps`; returns the loss of each step."""
    from lmforge.model.lora import LoraSpec, add_lora, merge_lora

    if method == "lora":  # freezes everything but the adapters
        add_lora(model, LoraSpec(rank=8, alpha=16,
                                 targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj")))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    with count_progress("recover", steps, "steps") as advance:
        for _ in range(steps):
            pick = torch.randint(0, len(windows), (batch_size,), generator=generator)
            batch = windows[pick].to(model.rope_cos.device)
            loss = model(batch[:, :-1], batch[:, 1:]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if method == "full":
                apply_masks(model, masks)
            losses.append(float(loss.detach()))
            advance(1)
    model.eval()
    if method == "lora":
        merge_lora(model)
        for p in model.parameters():
            p.requires_grad_(True)
        apply_masks(model, masks)
    return losses


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor] | None) -> None:
    for name, mask in (masks or {}).items():
        model.get_submodule(name).weight.mul_(mask)
