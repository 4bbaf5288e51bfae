"""`lmforge eval MODEL` and `lmforge compare A B`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval", help="score a model: perplexity, bits-per-byte, local tasks, lm-eval",
        description="Evaluate any model lmforge loads (a run dir, checkpoint, model dir, HF "
        "dir, export or hf:ORG/NAME) on local task files (lm-eval's YAML format with JSONL "
        "data, nothing downloaded) and perplexity sets. Writes results.json (every metric with "
        "its standard error) and samples/*.jsonl (every example) to RUN/eval or -o DIR.")
    ev.add_argument("model", help="run dir, checkpoint, model dir, HF dir or hf:ORG/NAME")
    ev.add_argument("--tasks", nargs="+", metavar="TASK", help="task YAML files or builtin:NAME")
    ev.add_argument("--perplexity", nargs="+", metavar="SRC",
                    help="a split of the run's data (train, val, test) or a .txt/.jsonl file")
    ev.add_argument("--harness", nargs="+", metavar="TASK",
                    help="lm-evaluation-harness tasks (names or YAML files) on the HF export")
    ev.add_argument("-c", "--config", help="run config: its eval: section gives the defaults")
    ev.add_argument("-o", "--output", help="results directory (default: MODEL/eval for a run)")
    ev.add_argument("--batch-size", type=int, help="rows per forward pass (scores do not change)")
    ev.add_argument("--num-fewshot", type=int, help="override each task's num_fewshot")
    ev.add_argument("--limit", type=int, help="score only each task's first N docs")
    ev.add_argument("--apply-chat-template", action="store_true",
                    help="render prompts as a user turn with the model's chat template")
    ev.set_defaults(handler=_eval, accepts_overrides=True)

    compare = sub.add_parser(
        "compare", help="paired comparison of two evaluations, with a replace/keep verdict",
        description="Compare B against A example by example: each metric's difference with a "
        "paired bootstrap CI, McNemar's test for accuracy-type metrics, and the verdict: B "
        "replaces A only if it is better on every chosen metric with the given confidence.")
    compare.add_argument("a", help="eval dir (results.json) or run dir of the current model")
    compare.add_argument("b", help="eval dir or run dir of the candidate")
    compare.add_argument("--tasks", nargs="+", help="tasks to compare (default: all shared)")
    compare.add_argument("--metrics", nargs="+", help="metrics to decide on (default: all)")
    compare.add_argument("--confidence", type=float, default=0.95,
                         help="confidence B must beat A with on every metric (default 0.95)")
    compare.add_argument("--iters", type=int, default=10_000, help="bootstrap resamples")
    compare.add_argument("-o", "--output", help="also write the comparison as JSON here")
    compare.set_defaults(handler=_compare)


def _eval_config(args: argparse.Namespace, overrides: list[str]):
    from lmforge.config import load_config
    from lmforge.eval.config import EvalConfig

    cfg = load_config(args.config, overrides) if args.config else None
    if cfg is None and overrides:
        raise UserError(f"unrecognized arguments: {' '.join(overrides)}")
    ecfg = cfg.eval if cfg is not None else EvalConfig(perplexity=[])
    chosen = {"tasks": args.tasks, "perplexity": args.perplexity, "harness": args.harness,
              "batch_size": args.batch_size, "num_fewshot": args.num_fewshot,
              "limit": args.limit, "apply_chat_template": args.apply_chat_template or None}
    return ecfg.model_copy(update={k: v for k, v in chosen.items() if v is not None})


def _is_run(path: Path) -> bool:
    return (path / "pretrain").is_dir() or (path / "finetune").is_dir()


def _eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.eval.stage import STAGE_NAME, evaluate_model
    from lmforge.outputs import claim, seal

    ecfg = _eval_config(args, overrides)
    model = Path(args.model)
    if args.output:
        out = Path(args.output)
    elif _is_run(model):
        out = model / STAGE_NAME
    else:
        raise UserError(f"{model} is not a run dir; pass -o DIR for the results")
    data_dir = model / "data" if _is_run(model) else None
    claim(out, STAGE_NAME, clear=True)  # refuses a directory holding what lmforge did not write
    evaluate_model(args.model, out, ecfg, data_dir)
    seal(out, STAGE_NAME)
    return 0


def _compare(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.eval.compare import compare_results, print_comparison
    from lmforge.eval.results import read_results
    from lmforge.io import atomic_write_json

    if not 0.5 < args.confidence < 1:
        raise UserError(f"--confidence {args.confidence} must be between 0.5 and 1, e.g. 0.95")
    a, b = read_results(Path(args.a)), read_results(Path(args.b))
    comparison = compare_results(a, b, args.tasks, args.metrics, args.confidence, args.iters)
    print_comparison(comparison)
    if args.output:
        atomic_write_json(Path(args.output), comparison)
    return 0
