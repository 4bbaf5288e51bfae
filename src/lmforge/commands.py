"""Pipeline-level commands: `lmforge run` and `lmforge config show`."""

from __future__ import annotations

import argparse

from lmforge.config import dump_config, load_config


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run every stage that is missing or stale, in order",
        description="Run the pipeline: each stage whose config or inputs changed is redone, "
        "the others are skipped. Dotted overrides (--train.max_steps=100) change the config.",
    )
    run.add_argument("-c", "--config", required=True, help="run config (YAML)")
    run.add_argument("--resume", action="store_true", help="continue interrupted stages")
    run.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="redo STAGE even if up to date",
    )
    run.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    run.set_defaults(handler=_run, accepts_overrides=True)

    config = sub.add_parser("config", help="inspect the resolved config")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("-c", "--config", help="run config (YAML); defaults when omitted")
    show.set_defaults(handler=_show, accepts_overrides=True)


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.pipeline import console, run_pipeline
    from lmforge.report.page import write_report

    cfg = load_config(args.config, overrides)
    run_pipeline(cfg, force=args.force, resume=args.resume, until=args.until)
    console.print(f"[bold]report[/]: {write_report(cfg.run.path)}")
    return 0


def _show(args: argparse.Namespace, overrides: list[str]) -> int:
    print(dump_config(load_config(args.config, overrides)), end="")
    return 0
