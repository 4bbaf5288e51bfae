"""Preallocated key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.model.config import ModelConfig


class KVCache:
    """Keys and values of every layer, (layers, B, kv_heads, max_len, head_dim).

    Each layer writes its new keys/values at `length` and reads everything before them; the
    model advances `length` once all layers have run.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.max_len = max_len or cfg.max_seq_len
        shape = (cfg.n_layers, batch_size, cfg.kv_heads, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {end} requested")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0
