"""Apply activation checkpointing, torch.compile and data parallelism to a built model.

Kept apart from the model code (as torchtitan's parallelize.py is): the model stays a plain
nn.Module and this module wraps it. Order matters: checkpointing wraps each block, compile
wraps each block, then FSDP2 shards each block and the root (or DDP wraps the root).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from lmforge.model.llama import Transformer
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistInfo


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations in backward: memory per layer drops to its input."""
    layers = model.model.layers
    for i, block in enumerate(layers):
        layers[i] = checkpoint_wrapper(block, preserve_rng_state=True)


def apply_compile(model: Transformer) -> None:
    """Compile block by block (repeated blocks share one compiled graph; fast to warm up)."""
    for block in model.model.layers:
        block.compile(fullgraph=False)


def apply_fsdp(model: Transformer, device: torch.device, precision: torch.dtype) -> None:
    """FSDP2: shard each block's parameters, gradients and optimizer states across ranks.

    Parameters are all-gathered in `precision` for compute and gradients reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32)
    for i, block in enumerate(model.model.layers):
        # the last block is gathered by the root's unshard anyway; don't reshard it early
        reshard = i < len(model.model.layers) - 1
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mp_policy=policy)


def parallelize(model: Transformer, cfg: TrainConfig, info: DistInfo, device: torch.device,
                precision: torch.dtype) -> nn.Module:
    """The model to train: wrapped as the config asks. Returns the module to call forward on;
    `model` itself stays the one to save (FSDP2 shards it in place)."""
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile:
        apply_compile(model)
    if not info.enabled:
        return model
    if cfg.parallel == "fsdp":
        apply_fsdp(model, device, precision)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=model.cfg.moe.enabled,
    )
