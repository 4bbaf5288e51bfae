"""Charts as PNG bytes, drawn on matplotlib's Agg canvas without pyplot's global state.

The page embeds them as base64 data URIs (`data_uri`), so the report is one file that opens
offline; the data stage also writes the same bytes next to its stats.
"""

from __future__ import annotations

import base64
import io
from typing import Any

KEPT, DROPPED = "#4c72b0", "#dd8452"
DPI = 90

# One panel of a chart: its title and its lines as (label, xs, ys).
Panel = tuple[str, list[tuple[str, list[float], list[float]]]]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def funnel_png(rows: list[dict[str, Any]]) -> bytes:
    """Documents entering each step, kept and dropped, first step on top."""
    fig = _figure(8, 0.45 * len(rows) + 1.2)
    ax = fig.subplots()
    names = [r["step"] for r in rows][::-1]
    kept = [r["kept"] for r in rows][::-1]
    ax.barh(names, kept, color=KEPT, label="kept")
    ax.barh(names, [r["dropped"] for r in rows][::-1], left=kept, color=DROPPED, label="dropped")
    ax.set_xlabel("documents")
    ax.set_title("data funnel: documents entering each step")
    ax.legend(loc="lower right")
    return _png(fig)


def histogram_png(labels: list[str], series: list[tuple[str, list[int]]], xlabel: str,
                  title: str) -> bytes:
    """Side-by-side bars per bin for each series, on a symlog count axis."""
    fig = _figure(8, 3.8)
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for k, (label, counts) in enumerate(series):
        ax.bar([i + k * width for i in range(len(counts))], counts, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=45,
                  fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    ax.set_yscale("symlog")
    ax.legend()
    ax.set_title(title)
    return _png(fig)


def curves_png(title: str, panels: list[Panel]) -> bytes:
    """Panels side by side, each with its lines against the training step."""
    fig = _figure(4 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, lines) in zip(axes, panels, strict=True):
        for label, xs, ys in lines:
            ax.plot(xs, ys, label=label, marker="o" if len(xs) < 3 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        if len(lines) > 1:
            ax.legend()
    fig.suptitle(title)
    return _png(fig)
