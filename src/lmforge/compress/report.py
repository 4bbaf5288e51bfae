"""OUT/report.html of `lmforge compress` and the printed table: the compression section of
the run report, on its own page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table as RichTable

from lmforge.io import atomic_write_text
from lmforge.progress import console


def write_report(out: Path, report: dict[str, Any]) -> Path:
    from lmforge.report.compression import compression_tables
    from lmforge.report.page import render_page
    from lmforge.report.parts import Section, cell

    tables = compression_tables(report)
    section = Section("compression", "Compression", "sections/tables.html.jinja",
                      {"tables": tables})
    page = render_page(f"lmforge compress — {report['method']}", [str(out.resolve())],
                       [section])
    atomic_write_text(out / "report.html", page)
    for table in tables:
        shown = RichTable(title=table.title, title_justify="left")
        for header in table.headers:
            shown.add_column(header or " ")
        for row in table.rows:
            shown.add_row(*[cell(v) for v in row])
        console.print(shown)
    console.print(f"compress: report in {out / 'report.html'}")
    return out / "report.html"
