"""Where and how the math runs: device, precision (autocast, GradScaler), RNG state.

    rt = Runtime.create(train_cfg)
    with rt.autocast():
        loss = model(x, y).loss
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import UserError
from lmforge.train.config import TrainConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 dot-product instructions (AVX512-BF16 or AMX), where bf16
    matmuls run about twice as fast as fp32; elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device is cuda but no CUDA GPU is visible; use device: cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError("train.precision fp16 needs a CUDA GPU (GradScaler); use bf16 or fp32")
    return name


def busy_cores() -> float:
    """How many cores other work keeps busy: the larger of the 1-minute load average and the
    number of runnable tasks right now (median of a few samples, this process excluded)."""
    try:
        load = os.getloadavg()[0]
        samples = []
        for _ in range(7):
            for line in Path("/proc/stat").read_text().splitlines():
                if line.startswith("procs_running"):
                    samples.append(int(line.split()[1]) - 1)
            time.sleep(0.005)
    except (OSError, ValueError, AttributeError):
        return 0.0
    return max(load, statistics.median(samples) if samples else 0.0)


def auto_threads() -> int:
    """CPU threads for torch: torch's default (the physical cores), minus the cores others
    are busy on. An intra-op parallel region waits for all its threads, so one thread that
    shares a core with another process stalls every op: on a 2-core machine with one other
    busy process, 2 threads ran small matmuls ~17x slower than 1 thread did."""
    free = torch.get_num_threads() - busy_cores()
    return max(1, min(torch.get_num_threads(), math.floor(free + 0.3)))


def keep_freed_memory() -> bool:
    """Ask glibc malloc to reuse freed blocks instead of returning them to the OS.

    By default every allocation above a few MB (a step's logits, their gradients) is a fresh
    mmap, and the kernel zero-fills each page on first touch: with an 8k vocabulary that was
    88k page faults and 160 ms of system time per 500 ms step on CPU. Raising the mmap and
    trim thresholds keeps those blocks in the heap for the next step (the same effect as
    running under jemalloc/tcmalloc). Returns whether glibc accepted the settings.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name or platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):
        return False
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # glibc's M_* constants
    return all(mallopt(option, value) == 1 for option, value in (
        (mmap_threshold, 1 << 30), (trim_threshold, 2**31 - 1), (top_pad, 64 << 20)))


@dataclass
class Runtime:
    device: torch.device
    precision: str
    threads: int

    @classmethod
    def create(cls, cfg: TrainConfig, local_rank: int = 0) -> Runtime:
        device = resolve_device(cfg.device, local_rank)
        threads = cfg.threads or (auto_threads() if device.type == "cpu" else
                                  torch.get_num_threads())
        torch.set_num_threads(threads)
        if device.type == "cpu":
            keep_freed_memory()
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return cls(device, resolve_precision(cfg.precision, device), threads)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Loss scaling for fp16 only; bf16 has fp32's range and needs none."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def peak_memory_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, as tensors and ints so a
    checkpoint loads with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """no_grad and eval() for the block, restoring the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
