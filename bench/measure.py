"""Measuring a command from outside: wall time and the peak memory of its process tree."""

from __future__ import annotations

import subprocess
import time

import psutil


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak memory of its process tree in MB).

    Memory is the sum of the processes' PSS (proportional set size): forked workers share
    pages with their parent, and summing RSS would count those pages once per process."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_full_info().pss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return wall, peak / 1e6


def line(name: str, a: float, b: float, fmt: str = ".1f") -> None:
    ratio = a / b if b else float("nan")
    print(f"{name}: ours={a:{fmt}} peer={b:{fmt}} ratio={ratio:.2f}", flush=True)
