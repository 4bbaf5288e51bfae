"""Model FLOPs utilization: achieved training FLOPs/s over the device's peak.

GPU peaks are the vendor's dense figures; a CPU has no datasheet number we can trust, so its
peak is measured once with a large matmul in the training dtype and cached per machine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# Dense peak TFLOPS by (name fragment, dtype); fp32 means plain FP32 (no TF32).
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2},
    "V100": {"fp16": 125.0, "fp32": 15.7},
}


def gpu_peak_tflops(name: str, precision: str) -> float | None:
    for fragment, peaks in GPU_PEAK_TFLOPS.items():
        if fragment in name:
            return peaks.get(precision)
    return None


def measure_matmul_tflops(dtype: torch.dtype, size: int = 2048, seconds: float = 0.5,
                          device: str = "cpu") -> float:
    """Best sustained TFLOPS of a size x size matmul over about `seconds`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e12)
    return best


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lmforge" / "cpu_peak.json"


def cpu_peak_tflops(precision: str) -> float:
    """Measured matmul peak of this CPU at this thread count, cached in ~/.cache/lmforge."""
    key = f"{platform.processor() or platform.machine()}|{_cpu_model()}|" \
          f"{torch.get_num_threads()}|{precision}|{torch.__version__}"
    path = _cache_file()
    cache: dict[str, float] = {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        cache[key] = measure_matmul_tflops(dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=1))
        except OSError:
            pass
    return cache[key]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def peak_tflops(device: torch.device, precision: str, configured: float | None) -> float | None:
    if configured is not None:
        return configured
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device), precision)
    return cpu_peak_tflops(precision)
