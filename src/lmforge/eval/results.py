"""What an evaluation writes, and reading it back (for `compare` and the run report).

    OUT/results.json         every task's metrics: value, stderr, n, direction; the model,
                             options and lmforge version
    OUT/samples/TASK.jsonl   one line per example: its input, output, scores and statistics

Both are written atomically, samples first, so a results.json always has its samples.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.errors import UserError
from lmforge.eval.evaluate import EvalOptions, TaskResult
from lmforge.io import atomic_write_json, atomic_write_text, read_json

RESULTS = "results.json"
SAMPLES = "samples"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no NaN


def write_results(out: Path, model: str, results: list[TaskResult], opts: EvalOptions,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / SAMPLES).mkdir(exist_ok=True)
    tasks: dict[str, Any] = {}
    for result in results:
        lines = "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n"
                        for s in result.samples)
        atomic_write_text(out / SAMPLES / f"{result.name}.jsonl", lines)
        tasks[result.name] = {
            "output_type": result.output_type, "n": result.n, "num_fewshot": result.num_fewshot,
            "samples": f"{SAMPLES}/{result.name}.jsonl",
            "metrics": {name: {"value": _finite(m.value), "stderr": _finite(m.stderr),
                               "lower_is_better": m.lower_is_better}
                        for name, m in result.metrics.items()}}
    record = {"model": model, "lmforge_version": __version__,
              "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "options": asdict(opts), "tasks": tasks, **(extra or {})}
    atomic_write_json(out / RESULTS, record)
    return record


def read_results(path: Path) -> dict[str, Any]:
    """results.json of an eval dir (or of RUN/eval)."""
    for candidate in (path / RESULTS, path / "eval" / RESULTS, path):
        if candidate.is_file() and candidate.name == RESULTS:
            return {**read_json(candidate), "dir": str(candidate.parent)}
    raise UserError(f"no {RESULTS} in {path}; run `lmforge eval` on the model first")


def read_samples(results: dict[str, Any], task: str) -> list[dict[str, Any]]:
    if task not in results["tasks"]:
        raise UserError(f"{results['dir']} has no task {task!r}; it has "
                        f"{', '.join(results['tasks']) or 'none'}")
    path = Path(results["dir"]) / results["tasks"][task]["samples"]
    if not path.is_file():
        raise UserError(f"{path} is missing; re-run `lmforge eval` to write the samples")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
