"""`lmforge compare A B`: two evaluations of the same examples, metric by metric, paired.

Each example's score (or, for corpus metrics, its sufficient statistics) is read from both
runs' samples, checked to be the same examples in the same order, and handed to
`stats.decide`: a paired bootstrap CI of B - A per metric, McNemar's test where the scores
are right/wrong, a small-n warning, and the verdict (B replaces A only if better on every
chosen metric with the given confidence).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.table import Table

from lmforge.errors import UserError
from lmforge.eval.evaluate import corpus_value
from lmforge.eval.results import read_samples
from lmforge.eval.stats import Metric, Verdict, decide
from lmforge.progress import console


def _identity(sample: dict[str, Any]) -> Any:
    return (sample.get("doc", sample.get("text")), sample.get("target"))


def _metric(task: str, name: str, lower: bool, sa: list[dict], sb: list[dict]) -> Metric:
    label = f"{task}/{name}"
    if all(name in s.get("scores", {}) for s in sa + sb):
        a = np.array([s["scores"][name] for s in sa], dtype=float)
        b = np.array([s["scores"][name] for s in sb], dtype=float)
        return Metric(label, a, b, lower)
    if all(name in s.get("stats", {}) for s in sa + sb):
        a = np.array([s["stats"][name] for s in sa], dtype=float)
        b = np.array([s["stats"][name] for s in sb], dtype=float)
        return Metric(label, a, b, lower, statistic=lambda rows: corpus_value(name, rows))
    raise UserError(f"{label} has no per-example scores in both samples; re-run `lmforge eval`")


def paired_metrics(a: dict[str, Any], b: dict[str, Any], tasks: list[str] | None,
                   metrics: list[str] | None) -> list[Metric]:
    shared = tasks or [t for t in a["tasks"] if t in b["tasks"]]
    if not shared:
        raise UserError(f"{a['dir']} and {b['dir']} share no task; evaluate both on the same "
                        "tasks")
    chosen = []
    for task in shared:
        sa, sb = read_samples(a, task), read_samples(b, task)
        if len(sa) != len(sb) or any(_identity(x) != _identity(y) for x, y in zip(sa, sb,
                                                                                  strict=True)):
            raise UserError(f"task {task}: A and B scored different examples ({len(sa)} vs "
                            f"{len(sb)}); evaluate both on the same task file and options")
        for name, info in a["tasks"][task]["metrics"].items():
            if metrics and name not in metrics:
                continue
            if name in b["tasks"][task]["metrics"]:
                chosen.append(_metric(task, name, info["lower_is_better"], sa, sb))
    if not chosen:
        raise UserError(f"none of the metrics {', '.join(metrics or [])} is in both "
                        "evaluations; pick from those in results.json")
    return chosen


def compare_results(a: dict[str, Any], b: dict[str, Any], tasks: list[str] | None,
                    metrics: list[str] | None, confidence: float = 0.95,
                    iters: int = 10_000) -> dict[str, Any]:
    chosen = paired_metrics(a, b, tasks, metrics)
    verdict = decide(chosen, confidence, iters=iters)
    return {"a": a["dir"], "b": b["dir"], "confidence": confidence, "iters": iters,
            "replace": verdict.replace, "verdict": verdict.summary,
            "warnings": list(verdict.warnings), "metrics": _rows(chosen, verdict)}


def _value(metric: Metric, side: np.ndarray) -> float:
    if metric.statistic is not None:
        return metric.statistic(side)
    return float(side.mean())


def _rows(chosen: list[Metric], verdict: Verdict) -> list[dict[str, Any]]:
    rows = []
    for metric, judged in zip(chosen, verdict.metrics, strict=True):
        boot = judged.bootstrap
        rows.append({
            "metric": metric.name, "n": boot.n, "lower_is_better": metric.lower_is_better,
            "a": _value(metric, np.asarray(metric.a)), "b": _value(metric, np.asarray(metric.b)),
            "diff": boot.diff, "ci": [boot.low, boot.high], "p_bootstrap": boot.p_value,
            "p_mcnemar": judged.mcnemar.p_value if judged.mcnemar else None,
            "better": judged.better, "reason": judged.reason, "warning": judged.warning})
    return rows


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def print_comparison(comparison: dict[str, Any]) -> None:
    pct = f"{comparison['confidence']:.0%}"
    table = Table(title=f"B vs A (paired, {pct} CIs)", title_justify="left")
    for column in ("metric", "n", "A", "B", "B - A", f"{pct} CI", "McNemar p", "better"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in comparison["metrics"]:
        arrow = "↓" if row["lower_is_better"] else "↑"
        table.add_row(f"{row['metric']} {arrow}", str(row["n"]), _fmt(row["a"]), _fmt(row["b"]),
                      f"{row['diff']:+.4g}", f"[{_fmt(row['ci'][0])}, {_fmt(row['ci'][1])}]",
                      _fmt(row["p_mcnemar"]), "yes" if row["better"] else "no")
    console.print(table)
    for warning in comparison["warnings"]:
        console.print(f"[yellow]warning[/]: {warning}")
    print(comparison["verdict"])
