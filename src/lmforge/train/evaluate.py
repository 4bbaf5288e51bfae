"""Held-out loss, perplexity and bits per byte, plus the unigram baseline to beat.

Bits per byte divides the summed loss by the split's UTF-8 text bytes, so models with
different tokenizers compare fairly: bpb = loss_nats / ln 2 * tokens / bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmforge.tokenizer.dataset import TokenDataset
from lmforge.tokenizer.loader import eval_batches
from lmforge.train import distributed
from lmforge.train.inputs import model_inputs
from lmforge.train.objectives.base import EvalResult
from lmforge.train.runtime import Runtime, eval_mode


def bytes_per_token(ds: TokenDataset) -> float | None:
    text_bytes = ds.split_meta.get("text_bytes")
    return text_bytes / len(ds) if text_bytes and len(ds) else None


def evaluate(model: nn.Module, ds: TokenDataset, rt: Runtime, batch_size: int, block_size: int,
             num_batches: int | None, seed: int, doc_mask: bool = False) -> EvalResult:
    """Mean next-token loss over fixed windows of `ds` (the same windows every call)."""
    dist = distributed.detect()
    total = torch.zeros(2, dtype=torch.float64, device=rt.device)
    with eval_mode(model):
        for batch in eval_batches(ds, batch_size, block_size, num_batches, seed,
                                  rank=dist.rank, world_size=dist.world_size):
            batch = batch.to(rt.device)
            with rt.autocast():
                logits = model(batch.x, **model_inputs(batch, doc_mask)).logits
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), batch.y.flatten(), reduction="sum")
            total[0] += loss.double()
            total[1] += batch.y.numel()
    total = distributed.sum_(total)
    tokens = int(total[1].item())
    return EvalResult(float(total[0].item()) / max(tokens, 1), tokens, bytes_per_token(ds))


def unigram_loss(train: TokenDataset, val: TokenDataset, vocab_size: int,
                 max_tokens: int = 50_000_000) -> float:
    """Val cross-entropy (nats/token) of the train split's add-one smoothed unigram model:
    the loss of a model that ignores context. A trained model must land well below it."""
    counts = np.bincount(np.asarray(train.tokens[:max_tokens]), minlength=vocab_size)
    log_probs = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    val_counts = np.bincount(np.asarray(val.tokens[:max_tokens]), minlength=vocab_size)
    return float(-(val_counts * log_probs).sum() / max(val_counts.sum(), 1))
