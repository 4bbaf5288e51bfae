"""Supervised fine-tuning: next-token loss on the assistant's turns of packed conversations.

Batches are `PackedBatches` (whole examples per row, attention and positions kept inside
each). The val score is the loss on assistant tokens of the held-out examples, plus how
often greedy replies to a few held-out prompts end with the end-of-turn token before the
token limit (`val_stop_rate`): the fine-tuning failure users see first is a model that
never stops.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.finetune.pack import IGNORE, PackedBatches, SFTBatch, make_batch, pack_rows
from lmforge.finetune.render import Encoded
from lmforge.model.generate import generate
from lmforge.train import distributed
from lmforge.train.config import TrainConfig
from lmforge.train.objectives.base import EvalResult, Objective
from lmforge.train.runtime import Runtime, eval_mode

REPLY_TOKENS = 64  # the token limit of the greedy replies scored at each eval


class SFTObjective(Objective):
    name = "sft"

    def __init__(self, train: list[Encoded], val: list[Encoded], prompts: list[list[int]],
                 tcfg: TrainConfig, vocab_size: int, end_of_turn: int | None) -> None:
        self.train, self.val, self.prompts = train, val, prompts
        self.tcfg, self._vocab, self.end_of_turn = tcfg, vocab_size, end_of_turn

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def batches(self, rank: int, world_size: int) -> PackedBatches:
        tcfg = self.tcfg
        return PackedBatches(self.train, tcfg.batch_size, tcfg.block_size, tcfg.seed,
                             rank, world_size)

    def loss(self, model: nn.Module, batch: SFTBatch) -> torch.Tensor:
        return model(batch.x, batch.y, positions=batch.positions, doc_ids=batch.doc_ids).loss

    def has_split(self, split: str) -> bool:
        return split == "val" and bool(self.val)

    def evaluate(self, model: nn.Module, split: str, rt: Runtime,
                 num_batches: int | None) -> EvalResult:
        tcfg = self.tcfg
        rows = pack_rows(self.val, list(range(len(self.val))), tcfg.block_size)
        size = tcfg.eval_batch_size or tcfg.batch_size
        chunks = [rows[i:i + size] for i in range(0, len(rows), size)][:num_batches]
        total = torch.zeros(2, dtype=torch.float64, device=rt.device)
        with eval_mode(model):
            for chunk in chunks:
                batch = make_batch(self.val, chunk, tcfg.block_size).to(rt.device)
                with rt.autocast():
                    logits = model(batch.x, positions=batch.positions,
                                   doc_ids=batch.doc_ids).logits
                total[0] += torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), batch.y.flatten(), ignore_index=IGNORE,
                    reduction="sum").double()
                total[1] += batch.trained_tokens
        total = distributed.sum_(total)
        tokens = int(total[1].item())
        extra = {}
        if self.prompts and self.end_of_turn is not None:
            extra["stop_rate"] = self.stop_rate(model, rt)
        return EvalResult(float(total[0].item()) / max(tokens, 1), tokens, extra=extra)

    def replies(self, model: nn.Module, rt: Runtime) -> list[list[int]]:
        """Greedy replies to the held-out prompts (ending at the end-of-turn token)."""
        with eval_mode(model), rt.autocast():
            return [generate(model, prompt, REPLY_TOKENS, temperature=0.0,
                             eos_id=self.end_of_turn) for prompt in self.prompts]

    def stop_rate(self, model: nn.Module, rt: Runtime) -> float:
        replies = self.replies(model, rt)
        return sum(bool(r) and r[-1] == self.end_of_turn for r in replies) / len(replies)

    def describe(self) -> str:
        tokens = sum(sum(e.trained) for e in self.train)
        return f"{len(self.train):,} examples, {tokens:,} assistant tokens"
