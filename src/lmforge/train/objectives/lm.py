"""Next-token prediction on token shards: the pretraining objective.

Batches come from `TokenLoader` over the tokenize stage's train split (random or packed
windows, optionally with per-document attention); val and test are scored on fixed
windows, in nats per token and bits per byte, against the unigram baseline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmforge.tokenizer.dataset import TokenDataset
from lmforge.tokenizer.loader import Batch, TokenLoader
from lmforge.train.config import TrainConfig
from lmforge.train.evaluate import evaluate, unigram_loss
from lmforge.train.inputs import model_inputs
from lmforge.train.objectives.base import SPLITS, EvalResult, Objective
from lmforge.train.runtime import Runtime


class LMObjective(Objective):
    name = "lm"

    def __init__(self, tokens_dir: Path, tcfg: TrainConfig,
                 tokenizer_dir: Path | None = None) -> None:
        self.tcfg = tcfg
        self.train_ds = TokenDataset(tokens_dir, "train", tokenizer=tokenizer_dir)
        self.splits = {split: ds for split in SPLITS
                       if (ds := self._split(tokens_dir, split)) is not None}

    def _split(self, tokens_dir: Path, split: str) -> TokenDataset | None:
        """An eval split, or None when the tokenize stage wrote none (or too few tokens)."""
        if split not in self.train_ds.meta["splits"]:
            return None
        ds = TokenDataset(tokens_dir, split)
        block = self.tcfg.eval_block_size or self.tcfg.block_size
        return ds if len(ds) > block else None

    @property
    def vocab_size(self) -> int:
        return self.train_ds.vocab_size

    def batches(self, rank: int, world_size: int) -> TokenLoader:
        tcfg = self.tcfg
        return TokenLoader(self.train_ds, tcfg.batch_size, tcfg.block_size, seed=tcfg.seed,
                           mode=tcfg.loader, rank=rank, world_size=world_size)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.y, **model_inputs(batch, self.tcfg.doc_mask)).loss

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def evaluate(self, model: nn.Module, split: str, rt: Runtime,
                 num_batches: int | None) -> EvalResult:
        tcfg = self.tcfg
        return evaluate(model, self.splits[split], rt, tcfg.eval_batch_size or tcfg.batch_size,
                        tcfg.eval_block_size or tcfg.block_size, num_batches, tcfg.seed,
                        doc_mask=tcfg.doc_mask)

    def baseline(self) -> float | None:
        if "val" not in self.splits:
            return None
        return unigram_loss(self.train_ds, self.splits["val"], self.vocab_size)

    def describe(self) -> str:
        return f"{len(self.train_ds):,} train tokens"

    @property
    def eos_id(self) -> int:
        return self.train_ds.eos_id
