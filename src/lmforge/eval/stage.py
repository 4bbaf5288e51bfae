"""The eval stage: the run's model (fine-tuned if the run fine-tuned, else pretrained) on
the config's tasks and perplexity sets, into RUN/eval/ (see `results`).

`evaluate_model` is also what `lmforge eval MODEL` runs on any model lmforge loads.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from rich.table import Table

from lmforge.config import Config
from lmforge.errors import UserError
from lmforge.eval.config import EvalConfig
from lmforge.eval.evaluate import EvalOptions, TaskResult, run_task
from lmforge.eval.results import write_results
from lmforge.eval.tasks import Task, load_task, read_texts, task_files, text_task
from lmforge.io import sha256_file
from lmforge.pipeline import Stage, StageContext
from lmforge.progress import console

STAGE_NAME = "eval"
BUILTIN = "builtin:"
SPLITS = ("train", "val", "test")
HELD_OUT = "held-out"  # test, or val when the run's data has no test documents
DISPLAY_KEYS = {"enabled"}


def task_file(spec: str) -> Path:
    """A task YAML path, or builtin:NAME for the tasks shipped in lmforge/eval/builtin/."""
    if not spec.startswith(BUILTIN):
        return Path(spec)
    name = spec.removeprefix(BUILTIN)
    path = Path(str(importlib.resources.files("lmforge.eval") / "builtin" / f"{name}.yaml"))
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"no built-in task {name!r}; built-in tasks: {', '.join(shipped)}")
    return path


def perplexity_task(spec: str, data_dir: Path | None) -> Task:
    """A split of the run's data (train, val, test) or a .txt/.jsonl file, as a rolling task."""
    if spec == HELD_OUT:
        spec = "test" if data_dir is not None and read_texts_or_none(data_dir / "test") else "val"
        console.print(f"eval: held-out perplexity on the {spec} split")
    if spec in SPLITS:
        if data_dir is None:
            raise UserError(f"perplexity on the {spec!r} split needs a run: evaluate a run dir, "
                            "or pass a .txt/.jsonl file")
        source = data_dir / spec
        if not source.is_dir():
            raise UserError(f"{source} does not exist; the run's data stage wrote no {spec} split")
        return text_task(f"perplexity_{spec}", read_texts(source), source)
    source = Path(spec)
    return text_task(f"perplexity_{source.stem}", read_texts(source), source)


def read_texts_or_none(split_dir: Path) -> list[str] | None:
    return read_texts(split_dir) if split_dir.is_dir() else None


def options(ecfg: EvalConfig) -> EvalOptions:
    return EvalOptions(num_fewshot=ecfg.num_fewshot, fewshot_seed=ecfg.fewshot_seed,
                       limit=ecfg.limit, apply_chat_template=ecfg.apply_chat_template,
                       bootstrap_iters=ecfg.bootstrap_iters, seed=ecfg.seed)


def evaluate_model(model: str | Path, out: Path, ecfg: EvalConfig,
                   data_dir: Path | None = None) -> dict[str, Any]:
    """Every task and perplexity set of `ecfg` on `model`; writes OUT/results.json and
    OUT/samples/, prints the table, and returns {task: {metric: value}}."""
    from lmforge.eval.runner import Evaluator

    tasks = [load_task(task_file(t)) for t in ecfg.tasks]
    tasks += [perplexity_task(p, data_dir) for p in ecfg.perplexity]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UserError(f"two tasks share a name ({', '.join(names)}); rename one's `task:`")
    if not tasks and not ecfg.harness:
        raise UserError("nothing to evaluate: give --tasks, --perplexity or --harness")
    ev = Evaluator.load(model, ecfg.batch_size)
    opts = options(ecfg)
    results = [run_task(task, ev, opts) for task in tasks]
    extra: dict[str, Any] = {}
    if ecfg.harness:
        from lmforge.eval.harness import run_harness

        extra["harness"] = run_harness(model, ecfg, out)
    record = write_results(out, str(model), results, opts, extra)
    print_table(results)
    console.print(f"eval: results in {out / 'results.json'}")
    summary = {name: {m: v["value"] for m, v in task["metrics"].items()}
               for name, task in record["tasks"].items()}
    return {"tasks": summary}


def print_table(results: list[TaskResult]) -> None:
    table = Table(title="evaluation", title_justify="left")
    for column in ("task", "n", "metric", "value", "± stderr"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for result in results:
        for name, metric in result.metrics.items():
            arrow = "↓" if metric.lower_is_better else "↑"
            stderr = "" if metric.stderr != metric.stderr else f"{metric.stderr:.4f}"
            table.add_row(result.name, str(result.n), f"{name} {arrow}", f"{metric.value:.4f}",
                          stderr)
    console.print(table)


def _depends_on(cfg: Config) -> dict[str, Any]:
    """The section, plus the content of every task file and its data (edits count)."""
    files = {}
    for spec in cfg.eval.tasks:
        path = task_file(spec)
        if path.is_file():
            files.update({str(f): sha256_file(f) for f in task_files(path) if f.is_file()})
    return {"eval": cfg.eval.model_dump(mode="json", exclude=DISPLAY_KEYS), "task_files": files}


def run_eval(ctx: StageContext) -> dict[str, Any]:
    model = ctx.inputs["finetune"] if "finetune" in ctx.inputs else ctx.inputs["pretrain"]
    return evaluate_model(model, ctx.out_dir, ctx.cfg.eval, ctx.inputs["data"])


STAGE = Stage(
    name=STAGE_NAME,
    inputs=("data", "pretrain"),
    optional_inputs=("finetune",),
    sections=("eval",),
    run=run_eval,
    describe="score the run's model: perplexity, bits-per-byte and local tasks, with stderr",
    config_fn=_depends_on,
    enabled_fn=lambda cfg: cfg.eval.enabled,
    switch="eval.enabled",
)
