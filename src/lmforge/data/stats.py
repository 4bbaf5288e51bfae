"""Counting what each step did, per source, in a form that adds up across shards.

Everything is plain JSON (dicts of ints), so a shard's counts are saved next to its output
and the run's totals are the sum of the shards' plus the global phase's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

# Character-length histogram bins (log-spaced edges), shared so histograms add up.
LENGTH_EDGES = [0, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000]


def length_bin(chars: int) -> int:
    for i in range(len(LENGTH_EDGES) - 1, -1, -1):
        if chars >= LENGTH_EDGES[i]:
            return i
    return 0


class Stats:
    """Per-step, per-source funnel counts plus histograms and free counters."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, dict[str, Any]]] = {}
        self.order: list[str] = []
        self.lengths: dict[str, list[int]] = {}
        self.counters: dict[str, Counter[str]] = {}
        self.notes: list[str] = []

    def _cell(self, step: str, source: str) -> dict[str, Any]:
        if step not in self.steps:
            self.steps[step] = {}
            self.order.append(step)
        return self.steps[step].setdefault(
            source,
            {"in": 0, "kept": 0, "chars_in": 0, "chars_kept": 0, "modified": 0, "dropped": {}},
        )

    def record(
        self,
        step: str,
        source: str,
        n_in: int,
        n_kept: int,
        dropped: Counter[str] | dict[str, int] | None = None,
        chars_in: int = 0,
        chars_kept: int = 0,
        modified: int = 0,
    ) -> None:
        cell = self._cell(step, source)
        cell["in"] += n_in
        cell["kept"] += n_kept
        cell["chars_in"] += chars_in
        cell["chars_kept"] += chars_kept
        cell["modified"] += modified
        for reason, count in (dropped or {}).items():
            cell["dropped"][reason] = cell["dropped"].get(reason, 0) + count

    def count(self, group: str, key: str, n: int = 1) -> None:
        self.counters.setdefault(group, Counter())[key] += n

    def add_length(self, name: str, chars: int) -> None:
        hist = self.lengths.setdefault(name, [0] * len(LENGTH_EDGES))
        hist[length_bin(chars)] += 1

    def add_lengths(self, name: str, chars: np.ndarray) -> None:
        hist = self.lengths.setdefault(name, [0] * len(LENGTH_EDGES))
        bins = np.searchsorted(LENGTH_EDGES, chars, side="right") - 1
        for i, n in enumerate(np.bincount(bins, minlength=len(LENGTH_EDGES)).tolist()):
            hist[i] += n

    def merge(self, other: Stats) -> Stats:
        for step in other.order:
            for source, cell in other.steps[step].items():
                self.record(
                    step,
                    source,
                    cell["in"],
                    cell["kept"],
                    cell["dropped"],
                    cell["chars_in"],
                    cell["chars_kept"],
                    cell["modified"],
                )
        for name, hist in other.lengths.items():
            mine = self.lengths.setdefault(name, [0] * len(LENGTH_EDGES))
            for i, n in enumerate(hist):
                mine[i] += n
        for group, counter in other.counters.items():
            self.counters.setdefault(group, Counter()).update(counter)
        self.notes += [n for n in other.notes if n not in self.notes]
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "step_order": self.order,
            "steps": self.steps,
            "lengths": {"edges": LENGTH_EDGES, **self.lengths},
            "counters": {group: dict(sorted(c.items())) for group, c in self.counters.items()},
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        stats = cls()
        stats.order = list(data.get("step_order", []))
        stats.steps = data.get("steps", {})
        stats.lengths = {k: v for k, v in data.get("lengths", {}).items() if k != "edges"}
        stats.counters = {g: Counter(c) for g, c in data.get("counters", {}).items()}
        stats.notes = list(data.get("notes", []))
        return stats


def funnel_rows(stats: dict[str, Any], source: str | None = None) -> list[dict[str, Any]]:
    """One row per step: docs in, kept, dropped, and the main drop reasons."""
    rows = []
    for step in stats["step_order"]:
        cells = stats["steps"][step]
        chosen = [cells[source]] if source is not None and source in cells else list(cells.values())
        if source is not None and source not in cells:
            continue
        n_in = sum(c["in"] for c in chosen)
        kept = sum(c["kept"] for c in chosen)
        reasons: Counter[str] = Counter()
        for c in chosen:
            reasons.update(c["dropped"])
        rows.append(
            {
                "step": step,
                "in": n_in,
                "kept": kept,
                "dropped": n_in - kept,
                "modified": sum(c["modified"] for c in chosen),
                "chars_in": sum(c["chars_in"] for c in chosen),
                "chars_kept": sum(c["chars_kept"] for c in chosen),
                "reasons": dict(reasons.most_common()),
            }
        )
    return rows


def sources_of(stats: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for step in stats["step_order"]:
        for source in stats["steps"][step]:
            if source not in seen:
                seen.append(source)
    return seen
