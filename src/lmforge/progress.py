"""Progress bars with throughput and ETA for long work (rich, on stderr)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True, highlight=False)


class RateColumn(ProgressColumn):
    """Throughput of a task field, e.g. docs/s or MB/s."""

    def __init__(self, field: str, unit: str, scale: float = 1.0):
        super().__init__()
        self.field, self.unit, self.scale = field, unit, scale

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        value = task.fields.get(self.field, task.completed) / self.scale
        rate = value / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.1f} {self.unit}", style="progress.data.speed")


@contextlib.contextmanager
def byte_progress(description: str, total_bytes: int) -> Iterator[Callable[[int, int], None]]:
    """A bar over input bytes that also shows documents per second; yields update(docs, bytes)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        RateColumn("docs", "docs/s"),
        RateColumn("bytes", "MB/s", scale=1e6),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task(description, total=max(total_bytes, 1), docs=0, bytes=0)
    counts = {"docs": 0, "bytes": 0}

    def update(docs: int, nbytes: int) -> None:
        counts["docs"] += docs
        counts["bytes"] += nbytes
        progress.update(task, completed=counts["bytes"], docs=counts["docs"], bytes=counts["bytes"])

    started = time.monotonic()
    with progress:
        yield update
        progress.update(task, completed=max(total_bytes, 1))
    console.print(
        f"  {description}: {counts['docs']:,} docs, {counts['bytes'] / 1e6:,.1f} MB "
        f"in {time.monotonic() - started:.1f}s"
    )


@contextlib.contextmanager
def count_progress(description: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
    """A bar over `total` items (examples, requests) with items per second; yields
    advance(n)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        RateColumn("done", f"{unit}/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task(description, total=max(total, 1), done=0)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        progress.update(task, completed=done[0], done=done[0])

    with progress:
        yield advance
