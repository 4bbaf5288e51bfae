"""The data section: what the data stage kept and dropped, from RUN/data/stats.json.

The funnel per step and per source, length histograms, duplicate clusters, PII counts and
the quarantine by reason. The data stage's own report.html is this section on its own page.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from lmforge.data.layout import SPLITS
from lmforge.data.stats import funnel_rows, sources_of
from lmforge.report import figures
from lmforge.report.parts import Section, Table, key_values

FUNNEL_PNG, LENGTHS_PNG = "funnel.png", "lengths.png"


def length_labels(edges: list[int]) -> list[str]:
    """Bin labels for histogram edges: '0-50', ..., '100k+'."""
    labels = []
    for lo, hi in zip(edges, [*edges[1:], None], strict=True):
        labels.append(f"{_short(lo)}+" if hi is None else f"{_short(lo)}-{_short(hi)}")
    return labels


def _short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def _length_series(stats: dict[str, Any]) -> list[tuple[str, list[int]]]:
    lengths = stats.get("lengths", {})
    named = [("input", "input records")] + [(s, f"output {s}") for s in SPLITS]
    return [(label, lengths[key]) for key, label in named if lengths.get(key)]


def data_figures(stats: dict[str, Any]) -> dict[str, bytes]:
    """The funnel and length-histogram charts as PNG bytes, by file name."""
    labels = length_labels(stats.get("lengths", {}).get("edges", []))
    return {
        FUNNEL_PNG: figures.funnel_png(funnel_rows(stats)),
        LENGTHS_PNG: figures.histogram_png(labels, _length_series(stats),
                                           "document length (characters)",
                                           "length distribution before and after"),
    }


def funnel_table(stats: dict[str, Any], source: str | None = None) -> Table:
    rows = []
    for r in funnel_rows(stats, source):
        share = 100 * r["dropped"] / r["in"] if r["in"] else 0.0
        reasons = ", ".join(f"{k}: {v:,}" for k, v in r["reasons"].items())
        rows.append([r["step"], r["in"], r["kept"], r["dropped"], f"{share:.1f}%",
                     r["modified"], reasons])
    title = f"source {source}" if source else "all sources"
    return Table(["step", "in", "kept", "dropped", "dropped %", "modified", "reasons"], rows,
                 title)


def output_table(stats: dict[str, Any]) -> Table:
    rows: list[list[Any]] = [[src, *(counts.get(s, 0) for s in SPLITS)]
                             for src, counts in stats.get("by_source", {}).items()]
    output = stats.get("output", {})
    rows.append(["all documents", *(output.get(s, {}).get("docs", 0) for s in SPLITS)])
    rows.append(["all characters", *(output.get(s, {}).get("chars", 0) for s in SPLITS)])
    return Table(["source", *SPLITS], rows, "output per split")


def length_table(stats: dict[str, Any]) -> Table:
    series = _length_series(stats)
    labels = length_labels(stats.get("lengths", {}).get("edges", []))
    rows = [[label, *(counts[i] for _, counts in series)]
            for i, label in enumerate(labels) if any(counts[i] for _, counts in series)]
    return Table(["characters", *(name for name, _ in series)], rows, "document lengths")


def quarantine_table(stats: dict[str, Any]) -> Table:
    """Every dropped document counted by the step and reason that dropped it."""
    counts: Counter[tuple[str, str]] = Counter()
    for step in stats.get("step_order", []):
        for cell in stats["steps"][step].values():
            for reason, n in cell["dropped"].items():
                counts[(step, reason)] += n
    rows = [[step, reason, n] for (step, reason), n in counts.most_common()]
    return Table(["step", "reason", "documents"], rows, "quarantine by reason")


def duplicate_tables(stats: dict[str, Any]) -> list[Table]:
    dedup = stats.get("dedup", {})
    removed = Table(["kind", "documents removed"],
                    [[kind.removesuffix("_removed").replace("_", " "), n]
                     for kind, n in dedup.items()], "duplicates removed")
    near = dict(stats.get("summary", {}).get("near_dedup", {}))
    sizes = near.pop("cluster_sizes", {})
    tables = [removed]
    if near:
        tables.append(key_values(near, "near-duplicate search", ("setting", "value")))
    tables.append(Table(["cluster size", "clusters"], [[int(k), n] for k, n in sizes.items()],
                        "near-duplicate clusters by size"))
    return tables


def data_section(stats: dict[str, Any], pngs: dict[str, bytes]) -> Section:
    """The section, with `pngs` (from `data_figures`) inline."""
    sources = sources_of(stats)
    ctx = {
        "input": stats.get("input", {}),
        "quarantined": stats.get("quarantined", 0),
        "command": stats.get("command", ""),
        "funnel": funnel_table(stats),
        "per_source": [funnel_table(stats, s) for s in sources] if len(sources) > 1 else [],
        "output": output_table(stats),
        "lengths": length_table(stats),
        "duplicates": duplicate_tables(stats),
        "pii": Table(["type", "redacted"], list(stats.get("pii", {}).items()), "PII redacted"),
        "quarantine": quarantine_table(stats),
        "languages": Table(["language", "documents"], list(stats.get("languages", {}).items()),
                           "languages"),
        "notes": stats.get("notes", []),
        "images": {name: figures.data_uri(png) for name, png in pngs.items()},
    }
    return Section("data", "Data", "sections/data.html.jinja", ctx)
