"""`lmforge ablate -c CFG --recipe A.yaml --recipe B.yaml`: data recipes compared fairly."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    ablate = sub.add_parser(
        "ablate", help="train one model per data recipe and compare them on a shared held-out set",
        description="Train the same model for the same number of tokens on each data recipe "
        "(a YAML file of data: keys merged over the config), score every model on one "
        "held-out set that no recipe trained on, and report bits-per-byte with paired "
        "bootstrap CIs against the first recipe. Writes OUT/<recipe>/ (a pipeline run up "
        "to pretrain, skipped when up to date), heldout.jsonl, ablation.json, ablation.png "
        "and ablation.html. Dotted overrides (--train.max_steps=100) change the base config.")
    ablate.add_argument("-c", "--config", required=True, help="base run config (YAML)")
    ablate.add_argument("--recipe", action="append", required=True, metavar="YAML",
                        help="a data recipe; repeat it, the first is the baseline")
    ablate.add_argument("-o", "--output", help="ablation directory (default: RUN/ablate)")
    ablate.add_argument("--heldout", metavar="NAME",
                        help="recipe whose test split is the held-out set (default: the one "
                        "with the config's own data section, else the first)")
    ablate.set_defaults(handler=_ablate, accepts_overrides=True)


def _ablate(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.config import load_config
    from lmforge.eval.ablate import run_ablation
    from lmforge.eval.ablate_report import print_table, write_report
    from lmforge.progress import console

    cfg = load_config(args.config, overrides)
    out = Path(args.output) if args.output else None
    result = run_ablation(cfg, [Path(p) for p in args.recipe], out, args.heldout)
    write_report(result, Path(result["out"]))
    print_table(result)
    console.print(f"[bold]ablate[/]: done in {result['wall_time_s']:.0f}s -> "
                  f"{Path(result['out']) / 'ablation.html'}")
    return 0
