"""The per-document steps, by config name, and `build_steps(cfg)` in the configured order.

Global steps (exact/near dedup, relevance, perplexity) are not here: they run over all shards.
"""

from __future__ import annotations

from collections.abc import Callable

from lmforge.data.config import PER_DOC_STEPS, DataConfig
from lmforge.data.steps.base import Filter, Step, StepResult
from lmforge.data.steps.blocklist import BlocklistStep
from lmforge.data.steps.language import LanguageId
from lmforge.data.steps.length import Length
from lmforge.data.steps.noise import Noise
from lmforge.data.steps.normalize import Normalize
from lmforge.data.steps.pii import PII
from lmforge.data.steps.quality import Quality

STEP_FACTORIES: dict[str, Callable[[DataConfig], Step]] = {
    "normalize": lambda cfg: Normalize(cfg.normalize),
    "length": lambda cfg: Length(cfg.length),
    "noise": lambda cfg: Noise(cfg.noise),
    "quality": lambda cfg: Quality(cfg.quality),
    "language": lambda cfg: LanguageId(cfg.language),
    "pii": lambda cfg: PII(cfg.pii),
    "blocklist": lambda cfg: BlocklistStep(cfg.blocklist),
}
assert set(STEP_FACTORIES) == set(PER_DOC_STEPS)


def build_steps(cfg: DataConfig) -> list[Step]:
    """The per-document steps named in cfg.steps, in that order (global steps are skipped)."""
    return [STEP_FACTORIES[name](cfg) for name in cfg.steps if name in STEP_FACTORIES]


__all__ = ["STEP_FACTORIES", "Filter", "Step", "StepResult", "build_steps"]
