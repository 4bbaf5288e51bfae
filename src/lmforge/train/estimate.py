"""`lmforge estimate`: will it fit, how long will it take, what will it cost.

Memory per GPU follows the ZeRO paper's accounting for mixed-precision Adam (Rajbhandari et
al. 2020): 2 bytes/param of bf16 weights, 2 of bf16 gradients and 12 of optimizer state
(fp32 master weights, Adam m and v) = 16 bytes/param, sharded over the data-parallel GPUs as
  stage 0 (DDP)       nothing sharded
  stage 1             optimizer state sharded
  stage 2             + gradients sharded
  stage 3 (FSDP)      + weights sharded
Activations per layer, bf16, flash attention (no s^2 scores kept), per token:
  attention 8h + 4h_kv bytes (norm input, normed input, q, k, v, attention output)
  SwiGLU    4h + 8f bytes    (norm input, normed input, gate, up, silu(gate), product)
plus the logits, 6V bytes per token (bf16 logits and their fp32 copy for the loss).
Full activation checkpointing keeps each layer's 2h-byte input and recomputes one layer at
a time. Training compute is 6ND FLOPs (N parameters touched per token, D tokens).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lmforge.errors import UserError
from lmforge.model.config import PRESETS, ModelConfig, count_params, preset_config

GIB = 2**30


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_tflops: float  # dense, no sparsity


GPUS = {g.name: g for g in (
    GPU("a100-40g", 40, 312.0),
    GPU("a100-80g", 80, 312.0),
    GPU("h100-80g", 80, 989.4),
    GPU("h100-pcie", 80, 756.0),
    GPU("h200", 141, 989.4),
    GPU("l40s", 48, 362.1),
    GPU("l4", 24, 121.0),
    GPU("a10", 24, 125.0),
)}

SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(text: str, what: str = "tokens") -> int:
    """'500M' -> 500_000_000; '1.5B', '2T', '300k', '12345' also work."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbgt]?)\s*", text.lower())
    if match is None:
        raise UserError(f"cannot read {what} {text!r}; write a number like 500M, 1.5B or 2T")
    value = float(match.group(1)) * SUFFIXES[match.group(2)]
    if value <= 0 or not math.isfinite(value):
        raise UserError(f"{what} must be positive, got {text!r}")
    return round(value)


@dataclass(frozen=True)
class MemoryRow:
    zero: int
    weights: float
    grads: float
    optimizer: float
    activations: float
    activations_ckpt: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations

    @property
    def total_ckpt(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations_ckpt


def activation_bytes(cfg: ModelConfig, seq_len: int, micro_batch: int) -> tuple[float, float]:
    """(without, with) full activation checkpointing, bytes per GPU for one micro-batch."""
    h, f, v = cfg.dim, cfg.hidden_dim, cfg.vocab
    h_kv = cfg.kv_heads * cfg.head_dim
    if cfg.moe.enabled:
        f = cfg.expert_dim * cfg.moe.top_k
    tokens = seq_len * micro_batch
    per_layer = tokens * ((8 * h + 4 * h_kv) + (4 * h + 8 * f))
    logits = tokens * 6 * v
    without = cfg.n_layers * per_layer + logits
    with_ckpt = cfg.n_layers * tokens * 2 * h + per_layer + logits
    return float(without), float(with_ckpt)


def memory_table(cfg: ModelConfig, gpus: int, seq_len: int, micro_batch: int) -> list[MemoryRow]:
    """Bytes per GPU for ZeRO stages 0-3."""
    params = count_params(cfg)["total"]
    act, act_ckpt = activation_bytes(cfg, seq_len, micro_batch)
    rows = []
    for zero in range(4):
        weights = 2 * params / (gpus if zero >= 3 else 1)
        grads = 2 * params / (gpus if zero >= 2 else 1)
        optimizer = 12 * params / (gpus if zero >= 1 else 1)
        rows.append(MemoryRow(zero, weights, grads, optimizer, act, act_ckpt))
    return rows


@dataclass(frozen=True)
class Estimate:
    cfg: ModelConfig
    params: int
    active_params: int
    tokens: int
    gpu: GPU
    gpus: int
    zero: int
    mfu: float
    price: float | None
    spot_price: float | None
    seq_len: int
    micro_batch: int

    @property
    def flops(self) -> float:
        return 6.0 * self.active_params * self.tokens

    @property
    def seconds(self) -> float:
        return self.flops / (self.gpus * self.gpu.bf16_tflops * 1e12 * self.mfu)

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600 * self.gpus

    def cost(self, hourly: float | None) -> float | None:
        return None if hourly is None else self.gpu_hours * hourly

    def memory(self) -> list[MemoryRow]:
        return memory_table(self.cfg, self.gpus, self.seq_len, self.micro_batch)


def make_estimate(model: str | ModelConfig, tokens: str | int, gpu: str, gpus: int, zero: int,
                  price: float | None = None, spot_price: float | None = None,
                  spot_factor: float = 0.4, mfu: float = 0.4, seq_len: int | None = None,
                  micro_batch: int = 1) -> Estimate:
    """Validate every input (one-line UserErrors) and build the estimate."""
    cfg = preset_config(model) if isinstance(model, str) else model
    if isinstance(model, str) and model not in PRESETS:
        raise UserError(f"unknown model {model!r}; choose from {', '.join(PRESETS)}")
    if gpu not in GPUS:
        raise UserError(f"unknown GPU {gpu!r}; choose from {', '.join(GPUS)}")
    if gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {gpus}")
    if zero not in (0, 1, 2, 3):
        raise UserError(f"--zero must be 0, 1, 2 or 3, got {zero}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu is a fraction in (0, 1], got {mfu}; 0.4 is typical")
    if price is not None and price < 0:
        raise UserError(f"--price must be >= 0 dollars per GPU-hour, got {price}")
    if spot_price is not None and spot_price < 0:
        raise UserError(f"--spot-price must be >= 0 dollars per GPU-hour, got {spot_price}")
    if not 0 < spot_factor <= 1:
        raise UserError(f"--spot-factor is a fraction in (0, 1], got {spot_factor}")
    if micro_batch < 1:
        raise UserError(f"--micro-batch must be at least 1, got {micro_batch}")
    count = parse_count(tokens) if isinstance(tokens, str) else int(tokens)
    if count <= 0:
        raise UserError(f"--tokens must be positive, got {tokens}")
    seq = seq_len or cfg.max_seq_len
    if seq < 1:
        raise UserError(f"--seq-len must be at least 1, got {seq}")
    counts = count_params(cfg)
    if spot_price is None and price is not None:
        spot_price = price * spot_factor
    return Estimate(cfg, counts["total"], counts["active"], count, GPUS[gpu], gpus, zero, mfu,
                    price, spot_price, seq, micro_batch)


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
