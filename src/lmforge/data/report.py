"""What a person reads after `data prepare`: the funnel table, PNG plots, an HTML report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lmforge.data.layout import SPLITS
from lmforge.data.stats import LENGTH_EDGES, funnel_rows, sources_of
from lmforge.io import atomic_path, atomic_write_text


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
    for i, label in enumerate(_bin_labels()):
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


def _bin_labels() -> list[str]:
    labels = []
    for lo, hi in zip(LENGTH_EDGES, [*LENGTH_EDGES[1:], None], strict=True):
        labels.append(f"{_short(lo)}+" if hi is None else f"{_short(lo)}-{_short(hi)}")
    return labels


def _short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def write_plots(out_dir: Path, stats: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = funnel_rows(stats)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    names = [r["step"] for r in rows][::-1]
    ax.barh(names, [r["kept"] for r in rows][::-1], color="#4c72b0", label="kept")
    ax.barh(
        names,
        [r["dropped"] for r in rows][::-1],
        left=[r["kept"] for r in rows][::-1],
        color="#dd8452",
        label="dropped",
    )
    ax.set_xlabel("documents")
    ax.set_title("data funnel: documents entering each step")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(out_dir / "funnel.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = _bin_labels()
    series = [("input", "input records")] + [(s, f"output {s}") for s in SPLITS]
    width = 0.8 / len(series)
    for k, (key, label) in enumerate(series):
        counts = stats["lengths"].get(key)
        if counts:
            ax.bar([i + k * width for i in range(len(labels))], counts, width, label=label)
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=45, fontsize=8
    )
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.set_yscale("symlog")
    ax.legend()
    ax.set_title("length distribution before and after")
    fig.tight_layout()
    with atomic_path(out_dir / "lengths.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return ["funnel.png", "lengths.png"]


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out_dir: Path, stats: dict[str, Any]) -> None:
    images = write_plots(out_dir, stats)
    funnel = _html_table(
        ["step", "in", "kept", "dropped", "modified", "reasons"],
        [
            [
                r["step"],
                f"{r['in']:,}",
                f"{r['kept']:,}",
                f"{r['dropped']:,}",
                f"{r['modified']:,}",
                ", ".join(f"{k}: {v:,}" for k, v in r["reasons"].items()),
            ]
            for r in funnel_rows(stats)
        ],
    )
    per_source = "".join(
        f"<h3>{html.escape(src)}</h3>"
        + _html_table(
            ["step", "in", "kept", "dropped"],
            [[r["step"], r["in"], r["kept"], r["dropped"]] for r in funnel_rows(stats, src)],
        )
        for src in sources_of(stats)
    )
    output = _html_table(
        ["source", *SPLITS], [[s, *(c[x] for x in SPLITS)] for s, c in stats["by_source"].items()]
    )
    near = stats["summary"].get("near_dedup", {})
    clusters = _html_table(
        ["cluster size", "clusters"], list(near.get("cluster_sizes", {}).items())
    )
    pii = _html_table(["type", "redacted"], list(stats.get("pii", {}).items()))
    langs = _html_table(["language", "documents"], list(stats.get("languages", {}).items()))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in stats.get("notes", []))
    imgs = "".join(f'<img src="{name}" alt="{name}">' for name in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>lmforge data report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;
margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%;margin:1em 0}}</style></head>
<body><h1>Data report</h1><p>{html.escape(stats.get("command", ""))}</p>
<p>{stats["input"]["records"]:,} input records, {stats["input"]["bytes"] / 1e6:,.1f} MB,
{stats["quarantined"]:,} quarantined.</p>
<h2>Funnel</h2>{funnel}{imgs}<h2>Per source</h2>{per_source}<h2>Output</h2>{output}
<h2>Near-duplicate clusters</h2><p>{
        html.escape(str({k: v for k, v in near.items() if k != "cluster_sizes"}))
    }</p>{clusters}<h2>PII redacted</h2>{pii}<h2>Languages</h2>{langs}
<ul>{notes}</ul></body></html>"""
    atomic_write_text(out_dir / "report.html", page)
