"""Learning-rate schedules as a pure function of the step.

The LR multiplier depends on nothing but the step and the config, so a resumed run gets
the same LR as an uninterrupted one without any scheduler state to save.
"""

from __future__ import annotations

import math

from lmforge.train.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based).

    Linear warmup over `warmup_steps`, then
    - cosine: half a cosine from 1 down to min_lr_ratio at the last step;
    - wsd (warmup-stable-decay): 1 until the last `decay_fraction` of the run, then a
      linear decay to min_lr_ratio (Hägele et al. 2024; nanochat's warmdown);
    - constant: 1.
    """
    total = cfg.max_steps
    warmup = min(cfg.warmup_steps, total)
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant" or step >= total:
        return 1.0 if cfg.schedule == "constant" else floor
    if cfg.schedule == "cosine":
        progress = (step + 1 - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(1, round(cfg.decay_fraction * total))
    decay_start = max(warmup, total - decay_steps)
    if step < decay_start:
        return 1.0
    progress = (step + 1 - decay_start) / max(1, total - decay_start)
    return 1.0 - (1.0 - floor) * progress
