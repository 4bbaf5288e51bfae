"""`lmforge ab report --audit DB`: live A/B traffic from the audit log, judged by the rule
`lmforge compare` uses: a variant replaces the baseline only if it is better on every metric
with the chosen confidence (latency, and user feedback where both sides have some), and its
error rate is not significantly worse (a guardrail: two error-free arms tie at 0).

Per variant of one model: latency (ms, successful requests), error rate (a 5xx answer) and
user feedback (`POST /v1/feedback` scores, one mean per response). The sides served
different requests, so the statistics are unpaired: a bootstrap of the difference of
means, and Fisher's exact test for the error rate. The database is opened read-only: a
report never changes (or purges) the log.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from lmforge.errors import UserError
from lmforge.eval.stats import Metric, decide
from lmforge.progress import console

GENERATION_ROUTES = ("POST /v1/completions", "POST /v1/chat/completions")  # as audited


@dataclass
class Arm:
    """One variant's traffic."""

    name: str
    first_seen: float
    latency_ms: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    feedback: list[float] = field(default_factory=list)


def read_arms(db: Path, model: str | None, since_s: float | None) -> tuple[str, dict[str, Arm]]:
    """The chosen model's variants (the only model with several, when not named)."""
    if not db.is_file():
        raise UserError(f"{db} does not exist; pass the server's audit.sqlite with --audit")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute(
            "SELECT r.model, r.variant, r.ts, r.latency_ms, r.status, AVG(f.score) "
            "FROM requests r LEFT JOIN feedback f ON f.request_id = r.request_id "
            f"WHERE r.route IN {GENERATION_ROUTES} AND r.variant IS NOT NULL AND r.ts >= ? "
            "GROUP BY r.id ORDER BY r.ts", (time.time() - since_s if since_s else 0,)).fetchall()
        con.close()
    except sqlite3.DatabaseError as e:
        raise UserError(f"{db} is not an lmforge audit log ({e})") from None
    variants: dict[str, dict[str, Arm]] = {}
    for name, variant, ts, latency, status, score in rows:
        arm = variants.setdefault(name, {}).setdefault(variant, Arm(variant, ts))
        failed = status is not None and status >= 500
        arm.errors.append(float(failed))
        if not failed and latency is not None:
            arm.latency_ms.append(float(latency))
        if score is not None:
            arm.feedback.append(float(score))
    tested = sorted(m for m, arms in variants.items() if len(arms) > 1)
    if model is None:
        if len(tested) != 1:
            raise UserError("the audit log holds A/B traffic for " + (
                f"models {', '.join(tested)}; choose one with --model" if tested else
                "no model (a model needs two variants with requests)"))
        model = tested[0]
    if model not in tested:
        raise UserError(f"no A/B traffic for model {model!r} in {db}; models with variants: "
                        f"{', '.join(tested) or 'none'}")
    return model, variants[model]


def _metrics(base: Arm, arm: Arm) -> list[Metric]:
    chosen = []
    if base.latency_ms and arm.latency_ms:
        chosen.append(Metric("latency_ms", base.latency_ms, arm.latency_ms,
                             lower_is_better=True, paired=False))
    if base.feedback and arm.feedback:
        chosen.append(Metric("feedback", base.feedback, arm.feedback, paired=False))
    return chosen


def ab_report(db: Path, model: str | None = None, baseline: str | None = None,
              since_s: float | None = None, confidence: float = 0.95,
              iters: int = 10_000) -> dict[str, Any]:
    model, arms = read_arms(db, model, since_s)
    base_name = baseline or min(arms.values(), key=lambda a: a.first_seen).name
    if base_name not in arms:
        raise UserError(f"no variant {base_name!r} for {model}; variants: {', '.join(arms)}")
    base = arms[base_name]
    report: dict[str, Any] = {"model": model, "baseline": base_name, "confidence": confidence,
                              "variants": {n: _summary(a) for n, a in arms.items()},
                              "candidates": {}}
    for name, arm in arms.items():
        if name == base_name:
            continue
        report["candidates"][name] = _judge(base, arm, confidence, iters)
    return report


def _judge(base: Arm, arm: Arm, confidence: float, iters: int) -> dict[str, Any]:
    """Better on latency and feedback (every one measured on both sides), and not worse on
    errors: a rate both sides keep at 0 can never be "better", so it is a guardrail."""
    chosen = _metrics(base, arm)
    if not chosen:
        raise UserError(f"{arm.name} and {base.name} have no successful requests to compare")
    verdict = decide(chosen, confidence, iters=iters)
    guard = decide([Metric("error_rate", base.errors, arm.errors, lower_is_better=True,
                           paired=False)], confidence, iters=iters).metrics[0]
    alpha = 1 - confidence
    worse = guard.bootstrap.diff > 0 and guard.fisher_p is not None and guard.fisher_p < alpha
    summary = verdict.summary.replace("B ", f"{arm.name} ", 1).replace(" A", f" {base.name}", 1)
    if worse:
        summary = (f"keep {base.name}: {arm.name} fails more often (error_rate "
                   f"{guard.bootstrap.diff:+.3g}, Fisher p={guard.fisher_p:.2g})")
    rows = [*verdict.metrics, guard]
    return {"replace": verdict.replace and not worse, "verdict": summary,
            "warnings": list(verdict.warnings),
            "metrics": [{"metric": v.name, "diff": v.bootstrap.diff, "ci": [v.bootstrap.low,
                         v.bootstrap.high], "better": v.better, "fisher_p": v.fisher_p}
                        for v in rows]}


def _summary(arm: Arm) -> dict[str, Any]:
    latency = np.array(arm.latency_ms) if arm.latency_ms else None
    return {"requests": len(arm.errors), "error_rate": float(np.mean(arm.errors)),
            "latency_p50_ms": float(np.percentile(latency, 50)) if latency is not None else None,
            "latency_p95_ms": float(np.percentile(latency, 95)) if latency is not None else None,
            "feedback_n": len(arm.feedback),
            "feedback_mean": float(np.mean(arm.feedback)) if arm.feedback else None}


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"A/B traffic of {report['model']} (baseline {report['baseline']})",
                  title_justify="left")
    for column in ("variant", "requests", "error rate", "p50 ms", "p95 ms", "feedback n",
                   "feedback mean"):
        table.add_column(column, justify="left" if column == "variant" else "right")

    def fmt(x: float | None, spec: str) -> str:
        return "" if x is None else format(x, spec)

    for name, s in report["variants"].items():
        table.add_row(name, str(s["requests"]), fmt(s["error_rate"], ".3f"),
                      fmt(s["latency_p50_ms"], ".1f"), fmt(s["latency_p95_ms"], ".1f"),
                      str(s["feedback_n"]), fmt(s["feedback_mean"], ".3f"))
    console.print(table)
    for candidate in report["candidates"].values():
        for warning in candidate["warnings"]:
            console.print(f"[yellow]warning[/]: {warning}")
        print(candidate["verdict"])
