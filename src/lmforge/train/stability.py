"""Loss-spike and NaN guard: decide, per step, to apply it, skip it, or roll back.

- a non-finite loss or gradient norm skips the step (nothing is applied) and is counted;
- `max_bad_steps` non-finite steps in a row, or a loss above `spike_factor` times the
  running median of recent losses, rolls back to the last good checkpoint with the LR
  multiplied by `lr_backoff`.

fp16 overflow steps (GradScaler found inf and lowered its scale) are routine, so they are
counted as skipped but never trigger a rollback.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Literal

from lmforge.train.config import StabilityConfig

Verdict = Literal["ok", "skip", "rollback"]


class StabilityGuard:
    def __init__(self, cfg: StabilityConfig) -> None:
        self.cfg = cfg
        self.recent: deque[float] = deque(maxlen=cfg.window)
        self.bad_in_a_row = 0
        self.skipped = 0
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.reason = ""

    def judge(self, loss: float, grad_norm: float, overflow: bool = False) -> Verdict:
        """What to do with a step whose loss and (pre-clip) gradient norm are given."""
        if overflow:
            self.skipped += 1
            self.reason = "fp16 overflow"
            return "skip"
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.skipped += 1
            self.bad_in_a_row += 1
            self.reason = f"non-finite loss {loss} / grad norm {grad_norm}"
            if self.cfg.enabled and self.bad_in_a_row >= self.cfg.max_bad_steps:
                self.reason += f", {self.bad_in_a_row} bad steps in a row"
                return "rollback"
            return "skip"
        self.bad_in_a_row = 0
        if self.cfg.enabled and len(self.recent) >= self.cfg.min_history:
            median = statistics.median(self.recent)
            if loss > self.cfg.spike_factor * median:
                self.reason = (f"loss spike {loss:.4g} > {self.cfg.spike_factor:g} x "
                               f"median {median:.4g}")
                return "rollback"
        self.recent.append(loss)
        return "ok"

    def on_rollback(self) -> None:
        """After restoring a checkpoint: lower the LR and forget the bad streak."""
        self.rollbacks += 1
        self.lr_scale *= self.cfg.lr_backoff
        self.bad_in_a_row = 0

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "bad_in_a_row": self.bad_in_a_row,
                "skipped": self.skipped, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = deque(state["recent"], maxlen=self.cfg.window)
        self.bad_in_a_row = state["bad_in_a_row"]
        self.skipped = state["skipped"]
        self.rollbacks = state["rollbacks"]
        self.lr_scale = state["lr_scale"]
