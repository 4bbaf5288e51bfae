"""Rendering the page: Jinja2 templates with autoescaping, written atomically as one file.

Every string in a run (a source name, a task name, a verdict) is untrusted: autoescaping
makes it text, and the page's Content-Security-Policy allows no script and no network.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from lmforge.io import atomic_write_text
from lmforge.report.artifacts import Run, open_run, read_json
from lmforge.report.compression import compression_section
from lmforge.report.data import data_figures, data_section
from lmforge.report.lineage import config_section, lineage_section
from lmforge.report.parts import Section, cell, is_number
from lmforge.report.results import comparisons_section, evaluation_section, stages_section
from lmforge.report.training import tokenizer_section, training_section

REPORT = "report.html"
TEMPLATE = "report.html.jinja"


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("lmforge.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = cell
    env.tests["numeric"] = is_number
    return env


def render_page(title: str, subtitle: list[str], sections: list[Section]) -> str:
    """The whole HTML page: header, table of contents, then each section under its anchor."""
    return environment().get_template(TEMPLATE).render(title=title, subtitle=subtitle,
                                                       sections=sections)


def _data(run: Run) -> Section | None:
    stats = read_json(run.stage_dir("data") / "stats.json")
    return data_section(stats, data_figures(stats)) if isinstance(stats, dict) else None


# Section builders in page order; each returns None when its artifacts are absent.
BUILDERS: tuple[Callable[[Run], Section | None], ...] = (
    _data, tokenizer_section, training_section, evaluation_section, comparisons_section,
    compression_section, stages_section, config_section, lineage_section,
)


def build_report(run_dir: Path) -> str:
    """The report of the run in `run_dir` as HTML; a UserError when it has no stages."""
    run = open_run(run_dir)
    sections = [s for s in (build(run) for build in BUILDERS) if s is not None]
    made = datetime.now(UTC).isoformat(timespec="seconds")
    subtitle = [f"run {run_dir.resolve()}", f"stages: {', '.join(run.manifests)}",
                f"made {made} from the run's manifests and metric files"]
    return render_page(f"lmforge run report — {run_dir.resolve().name}", subtitle, sections)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report (default RUN/report.html) atomically; returns where it went."""
    page = build_report(run_dir)
    target = out if out is not None else run_dir / REPORT
    atomic_write_text(target, page)
    return target
