"""The seam between the Trainer and a training task.

An objective owns its data: it yields batches (`batches`), turns a batch into the loss the
trainer backpropagates (`loss`), and scores a held-out split (`evaluate`). The trainer
owns everything else: optimizers, schedule, precision, stability guard, checkpoints and
exact resume, logging. Pretraining is `LMObjective`; fine-tuning, classification,
preference and distillation objectives plug into the same loop.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from lmforge.train.runtime import Runtime

SPLITS = ("val", "test")


class BatchSource(Protocol):
    """Deterministic, resumable batches: the next one after `load_state_dict(state)` is the
    one an uninterrupted run would have seen."""

    def next_batch(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EvalResult:
    """A split's mean loss over `tokens` scored tokens, plus anything else the objective
    measured (`extra`, logged with the split's prefix)."""

    loss: float
    tokens: int
    bytes_per_token: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float | None:
        if self.bytes_per_token is None:
            return None
        return self.loss / math.log(2) / self.bytes_per_token

    def row(self, prefix: str) -> dict[str, Any]:
        row: dict[str, Any] = {f"{prefix}_loss": self.loss, f"{prefix}_ppl": self.perplexity}
        if self.bits_per_byte is not None:
            row[f"{prefix}_bpb"] = self.bits_per_byte
        row.update({f"{prefix}_{key}": value for key, value in self.extra.items()})
        return row


class Objective(ABC):
    """One training task; see the module docstring."""

    name = "objective"

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """The vocabulary the model must have (the tokenizer's)."""

    @abstractmethod
    def batches(self, rank: int, world_size: int) -> BatchSource:
        """This rank's training batches."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The scalar to minimise for one micro-batch (under the trainer's autocast)."""

    @abstractmethod
    def has_split(self, split: str) -> bool:
        """Whether `evaluate` can score this held-out split."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str, rt: Runtime,
                 num_batches: int | None) -> EvalResult:
        """The split's score, the same windows every call (`num_batches` None: all)."""

    def baseline(self) -> float | None:
        """A val loss any useful model must beat (None: no such reference)."""
        return None

    def describe(self) -> str:
        """What it trains on, for the run's first line."""
        return ""
