"""Examples packed into fixed-length rows without attention between them.

Each row holds whole examples back to back; every example gets its own document id (the
model's attention stays inside it) and positions that restart at 0, so a packed example is
computed exactly as it would be alone. Targets are -100 (no loss) outside assistant turns
and on padding. Rows are rebuilt each epoch from a seeded shuffle, so the batch after a
resume is the one an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.finetune.render import Encoded

IGNORE = -100


@dataclass
class SFTBatch:
    x: torch.Tensor
    y: torch.Tensor
    positions: torch.Tensor
    doc_ids: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SFTBatch:
        return SFTBatch(*(t.to(device, non_blocking=non_blocking)
                          for t in (self.x, self.y, self.positions, self.doc_ids)))

    @property
    def trained_tokens(self) -> int:
        return int((self.y != IGNORE).sum())


def input_length(example: Encoded) -> int:
    return len(example.ids) - 1


def pack_rows(examples: list[Encoded], order: list[int], block: int) -> list[list[int]]:
    """Example indexes per row, filling rows in `order` (next-fit: a row is closed when the
    next example does not fit)."""
    rows: list[list[int]] = []
    used = block
    for index in order:
        n = input_length(examples[index])
        if used + n > block:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += n
    return rows


def make_batch(examples: list[Encoded], rows: list[list[int]], block: int,
               pad_id: int = 0) -> SFTBatch:
    size = (len(rows), block)
    x = torch.full(size, pad_id, dtype=torch.long)
    y = torch.full(size, IGNORE, dtype=torch.long)
    positions = torch.zeros(size, dtype=torch.long)
    doc_ids = torch.zeros(size, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for doc, index in enumerate(row, start=1):
            example = examples[index]
            n = input_length(example)
            ids = torch.tensor(example.ids)
            keep = torch.tensor(example.trained[1:])
            x[r, at:at + n] = ids[:-1]
            y[r, at:at + n] = torch.where(keep, ids[1:], IGNORE)
            positions[r, at:at + n] = torch.arange(n)
            doc_ids[r, at:at + n] = doc
            at += n
    return SFTBatch(x, y, positions, doc_ids)


class PackedBatches:
    """Endless batches of packed rows over the training examples (a BatchSource)."""

    def __init__(self, examples: list[Encoded], batch_size: int, block: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.examples, self.batch_size, self.block = examples, batch_size, block
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0
        self.rows = self._rows()

    def _rows(self) -> list[list[int]]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        rows = pack_rows(self.examples, order, self.block)
        return rows[self.rank::self.world_size] or rows[:1]

    def next_batch(self) -> SFTBatch:
        taken: list[list[int]] = []
        while len(taken) < self.batch_size:
            if self.position >= len(self.rows):
                self.epoch, self.position = self.epoch + 1, 0
                self.rows = self._rows()
            taken.append(self.rows[self.position])
            self.position += 1
        return make_batch(self.examples, taken, self.block)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.rows = self._rows()

    def close(self) -> None:
        pass
