"""The compression section: what a compress stage's report.json says, as tables.

Shared by the run report and the page `lmforge compress` writes beside its model.
"""

from __future__ import annotations

from typing import Any

from lmforge.report.artifacts import Run, read_json
from lmforge.report.parts import Section, Table


def compression_tables(report: dict[str, Any]) -> list[Table]:
    settings = report.get("settings") or {}
    size = report.get("size") or {}
    summary = [
        ["method", report.get("method")],
        ["group size", settings.get("group_size") or None],
        ["calibrated", settings.get("calibrated", settings.get("calibration") is not None)],
        ["size on disk (bytes)", size.get("compressed_bytes")],
        ["original on disk (bytes)", size.get("original_bytes")],
        ["share of the bf16 size", size.get("ratio_to_bf16")],
        ["sparsity", settings.get("sparsity")],
        ["parameters", settings.get("params")],
        ["seconds", report.get("seconds")],
    ]
    tables = [Table(["", "value"], [r for r in summary if r[1] is not None], "compression")]
    comparison = report.get("comparison") or {}
    rows = [[m.get("metric"), m.get("a"), m.get("b"), m.get("diff"),
             _interval(m.get("ci")), m.get("p_bootstrap"), m.get("reason")]
            for m in comparison.get("metrics") or [] if isinstance(m, dict)]
    if rows:
        tables.append(Table(["metric", "original", "compressed", "difference", "95% CI", "p",
                             "verdict"], rows, "quality, paired on the same examples"))
    speed = report.get("speed") or {}
    speed_rows = [[batch.removeprefix("batch_"), v.get("original_tok_s"),
                   v.get("compressed_tok_s"), v.get("speedup")]
                  for batch, v in speed.items() if batch.startswith("batch_")
                  and isinstance(v, dict)]
    if speed_rows:
        tables.append(Table(["batch", "original tok/s", "compressed tok/s", "speedup"],
                            speed_rows, "decode speed, serving engine"))
    agreement = speed.get("greedy_agreement")
    if isinstance(agreement, dict):
        tables.append(Table(["measure", "value"], [[k, v] for k, v in agreement.items()],
                            "greedy tokens, compressed vs original"))
    return tables


def _interval(ci: Any) -> str | None:
    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, int | float) for x in ci):
        return f"[{ci[0]:.4g}, {ci[1]:.4g}]"
    return None


def compression_section(run: Run) -> Section | None:
    report = read_json(run.stage_dir("compress") / "report.json")
    if not isinstance(report, dict):
        return None
    return Section("compression", "Compression", "sections/tables.html.jinja",
                   {"tables": compression_tables(report)})
