"""`lmforge data prepare | stats | show | diff`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="clean, deduplicate and split raw text; inspect results")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")

    prep = actions.add_parser(
        "prepare",
        help="run the data stage",
        description="Either -c CONFIG (the run's data stage, into RUN_DIR/data) or INPUT... -o "
        "OUTDIR (the default recipe on files, globs, directories or builtin:python-docs). "
        "Dotted overrides such as --data.dedup.threshold=0.85 change the recipe.",
    )
    prep.add_argument("inputs", nargs="*", metavar="INPUT", help="input files, globs or dirs")
    prep.add_argument("-c", "--config", help="run config (YAML)")
    prep.add_argument("-o", "--output", type=Path, help="output directory (with INPUT...)")
    prep.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    prep.add_argument(
        "--resume", action="store_true", help="keep shards an interrupted run finished"
    )
    prep.add_argument("--strict", action="store_true", help="stop at the first bad input line")
    prep.add_argument("--text-field", help="JSONL/Parquet field holding the text (default: text)")
    prep.set_defaults(handler=_prepare, accepts_overrides=True)

    stats = actions.add_parser("stats", help="print the funnel of a data output")
    stats.add_argument("dir", type=Path)
    stats.add_argument("--source", help="only this source's funnel")
    stats.set_defaults(handler=_stats)

    show = actions.add_parser("show", help="show dropped documents (beside what they duplicate)")
    show.add_argument("dir", type=Path)
    show.add_argument("--reason", help="a drop reason or step, or its prefix (e.g. near_dup)")
    show.add_argument("-n", type=int, default=5, help="how many (default 5)")
    show.set_defaults(handler=_show)

    diff = actions.add_parser("diff", help="compare two data outputs")
    diff.add_argument("a", type=Path)
    diff.add_argument("b", type=Path)
    diff.set_defaults(handler=_diff)


def _prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.config import apply_overrides, load_config, parse_overrides, validate_config
    from lmforge.data.stage import STAGE
    from lmforge.pipeline import StageContext, execute

    if args.config and (args.inputs or args.output):
        raise UserError("give either -c CONFIG or INPUT... -o OUTDIR, not both")
    if args.config:
        cfg = load_config(args.config, overrides)
        out_dir = cfg.run.path / "data"
    elif args.inputs:
        if args.output is None:
            raise UserError("INPUT... needs -o OUTDIR (where to write the splits)")
        extra = {"text_field": args.text_field} if args.text_field else {}
        raw = {"data": {"sources": [{"path": p, **extra} for p in args.inputs]}}
        cfg = validate_config(apply_overrides(raw, parse_overrides(overrides)))
        out_dir = args.output
    else:
        raise UserError("nothing to prepare: give INPUT... -o OUTDIR, or -c CONFIG")
    if args.workers is not None:
        cfg.data.workers = args.workers
    if args.strict:
        cfg.data.strict = True
    execute(STAGE, StageContext(cfg=cfg, out_dir=out_dir, inputs={}, resume=args.resume), {})
    return 0


def _stats(args: argparse.Namespace, overrides: list[str]) -> int:
    from rich.console import Console

    from lmforge.data.inspect import load_stats
    from lmforge.data.report import funnel_table, print_funnel

    stats = load_stats(args.dir)
    if args.source:
        Console().print(funnel_table(stats, args.source))
    else:
        print_funnel(stats)
    return 0


def _show(args: argparse.Namespace, overrides: list[str]) -> int:
    from rich.console import Console

    from lmforge.data.inspect import show

    Console().print(show(args.dir, args.reason, args.n))
    return 0


def _diff(args: argparse.Namespace, overrides: list[str]) -> int:
    from rich.console import Console

    from lmforge.data.inspect import diff

    Console().print(diff(args.a, args.b))
    return 0
