"""What a person watching a run sees: metrics.jsonl, TensorBoard, a progress bar, a plot.

metrics.jsonl gets one JSON object per logged step (`step`, `loss`, `lr`, `grad_norm`,
`tokens_per_s`, `elapsed_s`, ...), one per eval (`val_loss`, `val_ppl`, `val_bpb`) and one per
event (`event`: rollback, skip, early_stop, ...). A checkpoint records the file's length, so
a resumed run cuts the file back to that point and appends exactly what an uninterrupted
run would have written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


class MetricsLog:
    """Append-only JSONL that can be cut back to a recorded length on resume."""

    def __init__(self, path: Path, resume_bytes: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_bytes is None:
            path.write_bytes(b"")
        else:
            with open(path, "ab") as f:
                f.truncate(resume_bytes)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row, allow_nan=True) + "\n")
        self.file.flush()

    @property
    def size(self) -> int:
        self.file.flush()
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (kill -9 mid-write) is ignored."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class TensorBoard:
    """Scalars to RUN_DIR/pretrain/tensorboard; a resumed run drops events past its step."""

    def __init__(self, log_dir: Path, enabled: bool, start_step: int) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=start_step or None)

    def log(self, row: dict[str, Any], prefix: str) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar:
    """Steps with loss, tokens/s and ETA (rich, on stderr)."""

    def __init__(self, total: int, start: int, enabled: bool = True,
                 name: str = "pretrain") -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{name}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.progress.add_task(name, total=total, completed=start,
                                           loss="-", rate="-")

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}",
                             rate=f"{tokens_per_s:,.0f}")


def plot_losses(rows: list[dict[str, Any]], path: Path, baseline: float | None = None) -> None:
    """loss_curves.png: train loss (raw and smoothed), val loss, LR on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r and "event" not in r]
    val = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(steps, _ema(losses, 0.95), color="tab:blue", label="train loss (EMA)")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                color="tab:orange", label="val loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1, label="unigram baseline")
    for r in rows:
        if r.get("event") == "rollback":
            ax.axvline(r["step"], color="tab:red", linestyle=":", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if train:
        lr_ax = ax.twinx()
        lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green",
                   alpha=0.5, linewidth=1)
        lr_ax.set_ylabel("learning rate", color="tab:green")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _ema(values: list[float], beta: float) -> list[float]:
    out, avg = [], None
    for v in values:
        if not math.isfinite(v):
            out.append(avg if avg is not None else float("nan"))
            continue
        avg = v if avg is None else beta * avg + (1 - beta) * v
        out.append(avg)
    return out
