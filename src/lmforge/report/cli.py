"""Command: `lmforge report RUN [-o FILE]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report", help="write a run's HTML report (one self-contained file)",
        description="Write one HTML file with the run's data funnel, tokenizer, training "
        "curves, evaluation, comparisons, other stages' metrics, config and lineage, made "
        "from its manifests and metric files only. It opens offline: charts are inline.",
    )
    report.add_argument("run", help="run dir (the config's run.dir)")
    report.add_argument("-o", "--output", help="file to write (default RUN/report.html)")
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.report.page import write_report

    path = write_report(Path(args.run), Path(args.output) if args.output else None)
    print(f"report: {path} ({path.stat().st_size / 1024:,.0f} KB)")
    return 0
