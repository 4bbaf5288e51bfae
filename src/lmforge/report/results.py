"""The evaluation, comparison and other-stage sections.

Evaluation reads RUN/eval/results.json, comparisons every RUN/compare/*.json (what
`lmforge compare -o` writes), and any stage the report has no section for shows its manifest's
metrics as they are, so a new stage appears without a change here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.report.artifacts import Run, read_json
from lmforge.report.parts import Section, Table, cell, is_number, key_values

Z95 = 1.959964  # two-sided 95% normal quantile
OWN_SECTIONS = ("data", "tokenizer", "tokenize", "pretrain", "finetune", "eval", "compress")
EXTRA_DIRS = ("serve", "bench")  # JSON files there are shown even without a manifest


def interval(value: Any, stderr: Any) -> str:
    """value ± 1.96·stderr as '[lo, hi]', or '—' without a standard error."""
    if not (is_number(value) and is_number(stderr)):
        return "—"
    return f"[{cell(value - Z95 * stderr)}, {cell(value + Z95 * stderr)}]"


def _direction(lower_is_better: Any) -> str:
    return {True: "↓ lower is better", False: "↑ higher is better"}.get(lower_is_better, "")


def task_table(name: str, task: dict[str, Any]) -> Table:
    rows = [[metric, _direction(m.get("lower_is_better")), m.get("value"),
             interval(m.get("value"), m.get("stderr")), m.get("stderr")]
            for metric, m in (task.get("metrics") or {}).items()]
    about = f"{name} ({task.get('output_type', '?')}, n={cell(task.get('n'))}, " \
            f"{cell(task.get('num_fewshot'))}-shot)"
    return Table(["metric", "direction", "value", "95% CI", "stderr"], rows, about)


def evaluation_section(run: Run) -> Section | None:
    results = read_json(run.stage_dir("eval") / "results.json")
    if not isinstance(results, dict):
        return None
    tables = [task_table(name, task) for name, task in (results.get("tasks") or {}).items()]
    harness = (results.get("harness") or {}).get("tasks") or {}
    for name, metrics in harness.items():
        rows = [[metric, m.get("value"), interval(m.get("value"), m.get("stderr")),
                 m.get("stderr")] for metric, m in metrics.items()]
        tables.append(Table(["metric", "value", "95% CI", "stderr"], rows,
                            f"{name} (lm-evaluation-harness)"))
    ctx = {"model": results.get("model", ""), "tables": tables,
           "options": key_values(results.get("options") or {}, "options")}
    return Section("evaluation", "Evaluation", "sections/evaluation.html.jinja", ctx)


def comparison_table(comparison: dict[str, Any]) -> Table:
    rows = []
    for m in comparison.get("metrics") or []:
        ci = m.get("ci") or [None, None]
        rows.append([m.get("metric"), m.get("n"), _direction(m.get("lower_is_better")),
                     m.get("a"), m.get("b"), m.get("diff"), f"[{cell(ci[0])}, {cell(ci[-1])}]",
                     m.get("p_bootstrap"), m.get("p_mcnemar"), m.get("better"),
                     m.get("reason"), m.get("warning")])
    headers = ["metric", "n", "direction", "A", "B", "B − A", "CI", "p (bootstrap)",
               "p (McNemar)", "better", "reason", "warning"]
    return Table(headers, rows)


def comparisons_section(run: Run) -> Section | None:
    found = []
    for path in sorted((run.dir / "compare").glob("*.json")):
        comparison = read_json(path)
        if isinstance(comparison, dict):
            found.append({"name": path.stem, "a": comparison.get("a"), "b": comparison.get("b"),
                          "confidence": comparison.get("confidence"),
                          "replace": comparison.get("replace"),
                          "verdict": comparison.get("verdict", ""),
                          "warnings": comparison.get("warnings") or [],
                          "table": comparison_table(comparison)})
    if not found:
        return None
    return Section("comparisons", "Comparisons", "sections/comparisons.html.jinja",
                   {"comparisons": found})


def _extra_files(run_dir: Path) -> list[Path]:
    return [path for name in EXTRA_DIRS for path in sorted((run_dir / name).glob("*.json"))
            if path.name != "manifest.json"]


def stages_section(run: Run) -> Section | None:
    """Export, serving and any stage without its own section: their metrics."""
    tables = [key_values(m.get("metrics") or {}, f"{name} (manifest metrics)", ("metric", "value"))
              for name, m in run.manifests.items() if name not in OWN_SECTIONS]
    for path in _extra_files(run.dir):
        content = read_json(path)
        if content is not None:
            title = path.relative_to(run.dir).as_posix()
            tables.append(key_values(content, title, ("metric", "value")))
    if not tables:
        return None
    return Section("stages", "Export, serving and other stages", "sections/tables.html.jinja",
                   {"tables": tables})
