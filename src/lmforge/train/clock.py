"""When the command started: `elapsed_s` in metrics.jsonl counts from here, interpreter
start-up and earlier pipeline stages included."""

from __future__ import annotations

import os
import time
from pathlib import Path

IMPORTED_AT = time.time()


def command_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), else when lmforge was imported."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(stat[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return IMPORTED_AT
