"""What the report's sections are made of: a titled section, tables, and cell text.

Builders hand the templates plain values; `cell` turns any JSON value into the text a table
shows, so a run's numbers look the same in every section.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

MAX_ROWS = 500  # a flattened file bigger than this is cut, so the page stays small


@dataclass(frozen=True)
class Table:
    """A table of JSON values; the page shows each through `cell`."""

    headers: list[str]
    rows: list[list[Any]]
    title: str = ""


@dataclass(frozen=True)
class Section:
    """A section of the page: its anchor, its heading, its template and what that shows."""

    id: str
    title: str
    template: str
    ctx: dict[str, Any] = field(default_factory=dict)


def cell(value: Any) -> str:
    """A value as table text: thousands separators, four significant digits, '—' for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) pairs; lists stay whole values."""
    if not isinstance(obj, dict):
        return [(prefix or "value", obj)]
    pairs: list[tuple[str, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            pairs += flatten(value, name)
        else:
            pairs.append((name, value))
    return pairs


def key_values(obj: Any, title: str = "", headers: tuple[str, str] = ("key", "value")) -> Table:
    """Any JSON object as a two-column table of its flattened keys (at most MAX_ROWS)."""
    pairs = flatten(obj)
    rows = [[key, value] for key, value in pairs[:MAX_ROWS]]
    if len(pairs) > MAX_ROWS:
        rows.append([f"… {len(pairs) - MAX_ROWS:,} more", None])
    return Table(list(headers), rows, title)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
