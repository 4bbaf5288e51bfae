"""Multi-process training under torchrun: environment detection and small collectives.

    torchrun --nproc_per_node=8 -m lmforge pretrain -c configs/gpu.yaml

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything runs in one process
and the helpers below are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistInfo:
    """Ranks from torchrun's environment (one process when absent)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ["WORLD_SIZE"]),
    )


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group: NCCL for GPUs, gloo for CPU processes."""
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (the tensor itself in one process)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG)
    return value


def sum_(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's object, in rank order (a one-item list in one process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's flag on every rank (e.g. 'a signal arrived, stop now')."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
