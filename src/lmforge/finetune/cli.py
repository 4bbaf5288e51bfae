"""`lmforge finetune -c CFG [--resume] [--section.key=value ...]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    finetune = sub.add_parser(
        "finetune", help="fine-tune a model on conversations (full, LoRA, QLoRA)",
        description="Run the finetune stage alone into RUN/finetune: the base is "
        "model.init_from (an HF model dir, a run, a model dir or a checkpoint), else the run's "
        "pretrained model. Dotted overrides such as --finetune.max_steps=100 change the config.",
    )
    finetune.add_argument("-c", "--config", required=True, help="run config (YAML)")
    finetune.add_argument("--resume", action="store_true",
                          help="continue from the newest readable checkpoint")
    finetune.set_defaults(handler=_finetune, accepts_overrides=True)


def _finetune(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.config import load_config
    from lmforge.finetune.stage import STAGE
    from lmforge.pipeline import StageContext, execute, require_input
    from lmforge.progress import console

    cfg = load_config(args.config, overrides)
    run_dir = cfg.run.path
    upstream = {}
    if not cfg.model.init_from:
        hint = f"lmforge run -c {args.config} --until pretrain"
        upstream = {name: require_input(run_dir, name, hint) for name in STAGE.inputs}
    ctx = StageContext(cfg=cfg, out_dir=run_dir / STAGE.name,
                       inputs={name: run_dir / name for name in upstream},
                       resume=args.resume, options={})
    manifest = execute(STAGE, ctx, upstream)
    console.print(f"[bold]finetune[/]: done in {manifest['wall_time_s']:.1f}s -> {ctx.out_dir}")
    return 0

