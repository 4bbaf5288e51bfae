"""What a person reads after `data prepare`: the funnel table, PNG plots, an HTML report.

The plots and the page are the run report's data section (lmforge.report.data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lmforge.data.layout import SPLITS
from lmforge.data.stats import LENGTH_EDGES, funnel_rows, sources_of
from lmforge.io import atomic_write_bytes, atomic_write_text
from lmforge.report.data import data_figures, data_section, length_labels


def funnel_table(stats: dict[str, Any], source: str | None = None) -> Table:
    title = "data funnel" + (f" — source {source}" if source else "")
    table = Table(title=title, title_justify="left")
    for name, justify in [
        ("step", "left"),
        ("in", "right"),
        ("kept", "right"),
        ("dropped", "right"),
        ("%", "right"),
        ("modified", "right"),
        ("top reasons", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in funnel_rows(stats, source):
        share = 100 * row["dropped"] / row["in"] if row["in"] else 0.0
        reasons = ", ".join(f"{r} {n:,}" for r, n in list(row["reasons"].items())[:3])
        table.add_row(
            row["step"],
            f"{row['in']:,}",
            f"{row['kept']:,}",
            f"{row['dropped']:,}",
            f"{share:.1f}",
            f"{row['modified']:,}",
            reasons,
        )
    return table


def output_table(stats: dict[str, Any]) -> Table:
    table = Table(title="output", title_justify="left")
    table.add_column("source")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for source, counts in stats["by_source"].items():
        table.add_row(source, *(f"{counts[s]:,}" for s in SPLITS))
    table.add_row("[bold]all docs", *(f"{stats['output'][s]['docs']:,}" for s in SPLITS))
    table.add_row("[bold]all chars", *(f"{stats['output'][s]['chars']:,}" for s in SPLITS))
    return table


def length_table(stats: dict[str, Any]) -> Table:
    table = Table(title="document lengths (characters)", title_justify="left")
    table.add_column("length")
    series = [("input", "input")] + [(s, s) for s in SPLITS]
    for _, label in series:
        table.add_column(label, justify="right")
    lengths = stats["lengths"]
    for i, label in enumerate(length_labels(LENGTH_EDGES)):
        counts = [lengths.get(key, [0] * len(LENGTH_EDGES))[i] for key, _ in series]
        if any(counts):
            table.add_row(label, *(f"{c:,}" for c in counts))
    return table


def print_funnel(stats: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(stderr=False, highlight=False)
    console.print(funnel_table(stats))
    if len(sources_of(stats)) > 1:
        for source in sources_of(stats):
            console.print(funnel_table(stats, source))
    console.print(output_table(stats))
    dedup = stats["dedup"]
    console.print(
        f"duplicates removed: exact {dedup['exact_removed']:,}, near {dedup['near_removed']:,}, "
        f"split leaks {dedup['split_leaks_removed']:,}; quarantined {stats['quarantined']:,} in all"
    )
    sizes = stats["summary"].get("near_dedup", {}).get("cluster_sizes", {})
    if sizes:
        console.print(
            "near-duplicate clusters by size: "
            + ", ".join(f"{size} docs: {n:,}" for size, n in sizes.items())
        )
    if stats.get("pii"):
        console.print("PII redacted: " + ", ".join(f"{k} {v:,}" for k, v in stats["pii"].items()))
    console.print(length_table(stats))
    for note in stats.get("notes", []):
        console.print(f"note: {note}")


def _save_figures(out_dir: Path, stats: dict[str, Any]) -> dict[str, bytes]:
    pngs = data_figures(stats)
    for name, png in pngs.items():
        atomic_write_bytes(out_dir / name, png)
    return pngs


def write_plots(out_dir: Path, stats: dict[str, Any]) -> list[str]:
    """funnel.png and lengths.png in out_dir; returns their names."""
    return list(_save_figures(out_dir, stats))


def write_report(out_dir: Path, stats: dict[str, Any]) -> None:
    """The plots, and report.html: the run report's data section as a page of its own."""
    from lmforge.report.page import render_page

    section = data_section(stats, _save_figures(out_dir, stats))
    atomic_write_text(out_dir / "report.html", render_page("Data report", [], [section]))
