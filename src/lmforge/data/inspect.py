"""Looking into a data-stage output: `data show` (dropped documents beside what they
duplicate) and `data diff` (what changed between two versions)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Group
from rich.table import Table
from rich.text import Text

from lmforge.data import layout
from lmforge.data.dedup.shingles import jaccard
from lmforge.errors import UserError
from lmforge.io import read_json

SHOWN = 700


def check_output_dir(path: Path) -> None:
    if not (path / "stats.json").is_file():
        raise UserError(
            f"{path} is not a finished data-stage output (no stats.json); "
            "pass the -o directory of `lmforge data prepare` or RUN_DIR/data"
        )


def load_stats(path: Path) -> dict[str, Any]:
    check_output_dir(path)
    return read_json(path / "stats.json")


def _parts(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.parquet")) if path.is_dir() else []


def find_text(out_dir: Path, doc_id: str) -> tuple[str, str] | None:
    """(where, text) of a document id in the splits, else in quarantine."""
    for where in (*layout.SPLITS, layout.QUARANTINE):
        for part in _parts(out_dir / where):
            table = pq.read_table(part, columns=["id", "text"])
            hits = table.filter(pc.equal(table["id"], doc_id))
            if hits.num_rows:
                return where, hits["text"][0].as_py()
    return None


def matching_drops(out_dir: Path, reason: str | None, limit: int) -> list[dict[str, Any]]:
    """Quarantined rows whose reason or step starts with `reason` (all when None)."""
    rows: list[dict[str, Any]] = []
    for part in _parts(out_dir / layout.QUARANTINE):
        table = pq.read_table(part)
        if reason:
            mask = pc.or_(pc.starts_with(table["reason"], reason), pc.equal(table["step"], reason))
            table = table.filter(mask)
        rows += table.slice(0, limit - len(rows)).to_pylist()
        if len(rows) >= limit:
            break
    return rows


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN else text[:SHOWN] + f" … [{len(text):,} chars]"


def show(out_dir: Path, reason: str | None, limit: int) -> Group:
    check_output_dir(out_dir)
    rows = matching_drops(out_dir, reason, limit)
    if not rows:
        reasons = Counter()
        for part in _parts(out_dir / layout.QUARANTINE):
            reasons.update(pq.read_table(part, columns=["reason"])["reason"].to_pylist())
        known = ", ".join(f"{r} ({n})" for r, n in reasons.most_common()) or "none"
        raise UserError(f"no quarantined documents match {reason!r}; reasons present: {known}")
    panels = []
    for row in rows:
        head = Text.assemble(
            (f"{row['id'] or '(no id)'}", "bold"),
            f"  {row['step']}/{row['reason']}  {row['detail'] or ''}  at {row['location']}",
        )
        table = Table(show_header=True, expand=True, title=head, title_justify="left")
        table.add_column("dropped")
        if row["duplicate_of"]:
            kept = find_text(out_dir, row["duplicate_of"])
            kept_text = kept[1] if kept else "(not found)"
            where = kept[0] if kept else "?"
            similarity = jaccard(row["text"], kept_text)
            table.add_column(f"kept: {row['duplicate_of']} (in {where}, Jaccard {similarity:.2f})")
            table.add_row(_clip(row["text"]), _clip(kept_text))
        else:
            table.add_row(_clip(row["text"]))
        panels.append(table)
    return Group(*panels)


def _summary(out_dir: Path) -> dict[str, Any]:
    """Ids, sources and lengths per split, read part by part."""
    result: dict[str, Any] = {}
    for split in layout.SPLITS:
        ids: list[np.ndarray] = []
        sources: Counter[str] = Counter()
        lengths: list[np.ndarray] = []
        for part in _parts(out_dir / split):
            table = pq.read_table(part, columns=["id", "source", "text"])
            ids.append(table["id"].to_numpy(zero_copy_only=False))
            sources.update(table["source"].to_pylist())
            lengths.append(pc.utf8_length(table["text"]).to_numpy(zero_copy_only=False))
        result[split] = {
            "ids": set(np.concatenate(ids).tolist()) if ids else set(),
            "sources": sources,
            "lengths": np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
        }
    return result


def _quantiles(lengths: np.ndarray) -> str:
    if len(lengths) == 0:
        return "-"
    q = np.quantile(lengths, [0.1, 0.5, 0.9]).astype(int)
    return f"{q[0]:,} / {q[1]:,} / {q[2]:,}"


def diff(a: Path, b: Path, examples: int = 5) -> Group:
    check_output_dir(a)
    check_output_dir(b)
    sa, sb = _summary(a), _summary(b)
    counts = Table(title=f"A = {a}   B = {b}", title_justify="left")
    for name in (
        "split",
        "docs A",
        "docs B",
        "change",
        "chars p10/p50/p90 A",
        "chars p10/p50/p90 B",
        "added",
        "removed",
    ):
        counts.add_column(name, justify="left" if name == "split" else "right")
    notes = []
    for split in layout.SPLITS:
        x, y = sa[split], sb[split]
        added, removed = sorted(y["ids"] - x["ids"]), sorted(x["ids"] - y["ids"])
        counts.add_row(
            split,
            f"{len(x['ids']):,}",
            f"{len(y['ids']):,}",
            f"{len(y['ids']) - len(x['ids']):+,}",
            _quantiles(x["lengths"]),
            _quantiles(y["lengths"]),
            f"{len(added):,}",
            f"{len(removed):,}",
        )
        if added:
            notes.append(f"{split} added e.g.: " + ", ".join(added[:examples]))
        if removed:
            notes.append(f"{split} removed e.g.: " + ", ".join(removed[:examples]))
    shares = Table(title="per-source share of all output documents", title_justify="left")
    for name in ("source", "A", "B"):
        shares.add_column(name, justify="left" if name == "source" else "right")
    total_a = sum(sum(sa[s]["sources"].values()) for s in layout.SPLITS) or 1
    total_b = sum(sum(sb[s]["sources"].values()) for s in layout.SPLITS) or 1
    names = sorted({n for s in layout.SPLITS for n in (*sa[s]["sources"], *sb[s]["sources"])})
    for name in names:
        na = sum(sa[s]["sources"][name] for s in layout.SPLITS)
        nb = sum(sb[s]["sources"][name] for s in layout.SPLITS)
        shares.add_row(name, f"{na / total_a:.1%} ({na:,})", f"{nb / total_b:.1%} ({nb:,})")
    return Group(counts, shares, *(Text(n) for n in notes))


def table_rows(path: Path) -> int:
    """Rows in all parts of a directory (for quick checks)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in _parts(path)) if path.is_dir() else 0
