"""Perplexity under an lmforge model: a run directory, a checkpoint, a model directory or an
HF export. A model trained on good in-domain text scores the next corpus, and the
perplexity step drops what it finds least like that text.

Each document is cut into windows of the model's context; its perplexity is exp of the mean
next-token loss over all its tokens (its first token has no prediction). Documents of a batch
are padded and scored together; padding sits after the text, so causal attention keeps it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

KEY = "data.perplexity.model"
BATCH_TOKENS = 16384


def looks_like_model(spec: str) -> bool:
    path = Path(spec)
    if path.is_file():
        return path.suffix == ".pt"
    if not path.is_dir():
        return False
    markers = ("model_config.json", "config.json", "pretrain", "checkpoints", "model")
    return any((path / marker).exists() for marker in markers)


class ModelScorer:
    name = "lmforge"

    def __init__(self, spec: str):
        import torch

        from lmforge.model.files import best_checkpoint, load_model
        from lmforge.model.tokenizer import load_tokenizer
        from lmforge.sources import find_tokenizer

        torch.set_num_threads(1)  # one per data worker: the workers are the parallelism
        model, source = load_model(best_checkpoint(Path(spec)) or Path(spec))
        self.model = model.float().eval()
        self.tokenizer = load_tokenizer(find_tokenizer(source))
        self.window = self.model.cfg.max_seq_len

    def score(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        windows: list[list[int]] = []
        owner: list[int] = []
        for k, text in enumerate(texts):
            ids = self.tokenizer.encode(text)
            for start in range(0, len(ids) - 1, self.window):  # documents of < 2 tokens: NaN
                windows.append(ids[start : start + self.window + 1])
                owner.append(k)
        nll = np.zeros(len(texts))
        count = np.zeros(len(texts))
        order = sorted(range(len(windows)), key=lambda w: len(windows[w]))
        rows_per_batch = max(1, BATCH_TOKENS // (self.window + 1))
        with torch.no_grad():
            for begin in range(0, len(order), rows_per_batch):
                chosen = order[begin : begin + rows_per_batch]
                width = max(len(windows[w]) for w in chosen)
                tokens = torch.zeros((len(chosen), width), dtype=torch.long)
                targets = torch.full((len(chosen), width - 1), -100, dtype=torch.long)
                for row, w in enumerate(chosen):
                    ids = torch.tensor(windows[w])
                    tokens[row, : len(ids)] = ids
                    targets[row, : len(ids) - 1] = ids[1:]
                logits = self.model(tokens[:, :-1]).logits.float()
                loss = F.cross_entropy(
                    logits.transpose(1, 2), targets, reduction="none", ignore_index=-100
                )
                for row, w in enumerate(chosen):
                    nll[owner[w]] += float(loss[row].sum())
                    count[owner[w]] += int((targets[row] != -100).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(count > 0, np.exp(nll / np.maximum(count, 1)), np.nan).astype(
                np.float32
            )
