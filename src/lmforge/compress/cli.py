"""Command: `lmforge compress MODEL -o DIR --method M`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.compress.config import PRUNE_METHODS, QUANT_METHODS
from lmforge.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    compress = sub.add_parser(
        "compress", help="quantize (int8, int4 + AWQ) or prune a model; measure the cost",
        description="Quantize or prune any model lmforge loads into DIR/model (a directory "
        "generate, serve, eval, export and chat load), evaluate the original and the "
        "compressed model on the same perplexity sets and tasks with a paired comparison, "
        "time decode at batch 1 and 8, and write DIR/report.json and DIR/report.html. "
        "Config keys of the compress: section can be given as --compress.KEY=VALUE.")
    compress.add_argument("model", help="run dir, checkpoint, model dir, HF dir or hf:ORG/NAME")
    compress.add_argument("-o", "--output", required=True, help="directory to write")
    compress.add_argument("--method", choices=QUANT_METHODS + PRUNE_METHODS,
                          help="default: the config's compress.method (int8-weight)")
    compress.add_argument("-c", "--config", help="run config: its compress: section")
    compress.add_argument("--group-size", type=int, choices=(32, 64, 128))
    compress.add_argument("--calibration", choices=("gptq", "awq", "rtn"),
                          help="int4: gptq (default), awq, or rtn (round to nearest)")
    compress.add_argument("--calibration-data", metavar="SRC",
                          help="a split of the run's data (train, val) or a .txt/.jsonl file")
    compress.add_argument("--sparsity", type=float, help="magnitude/wanda: share zeroed")
    compress.add_argument("--tasks", nargs="+", metavar="TASK",
                          help="eval tasks scored before and after (YAML files or builtin:NAME)")
    compress.add_argument("--perplexity", nargs="*", metavar="SRC",
                          help="perplexity sets (a split or a .txt/.jsonl file); none: skip")
    compress.add_argument("--max-ppl-increase", type=float,
                          help="fail when perplexity rises by more than this (0.02 = 2%%)")
    compress.add_argument("--tokenizer", help="tokenizer dir (default: found next to the model)")
    compress.set_defaults(handler=_compress, accepts_overrides=True)


def _compress(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.compress.config import CompressConfig
    from lmforge.compress.run import compress_model
    from lmforge.compress.stage import STAGE
    from lmforge.config import load_config
    from lmforge.outputs import claim, seal
    from lmforge.sources import local_path

    cfg = load_config(args.config, overrides) if args.config or overrides else None
    ccfg = cfg.compress if cfg is not None else CompressConfig()
    chosen = {"method": args.method, "group_size": args.group_size,
              "calibration": args.calibration, "calibration_data": args.calibration_data,
              "sparsity": args.sparsity, "tasks": args.tasks, "perplexity": args.perplexity,
              "max_ppl_increase": args.max_ppl_increase}
    try:
        ccfg = CompressConfig.model_validate(
            ccfg.model_dump() | {k: v for k, v in chosen.items() if v is not None})
    except ValueError as e:  # pydantic's ValidationError: first problem, one line
        problem = e.errors()[0] if hasattr(e, "errors") else {"loc": (), "msg": str(e)}
        where = ".".join(str(x) for x in problem["loc"])
        raise UserError(f"compress.{where}: {problem['msg']}; see lmforge compress --help"
                        ) from None
    source = local_path(args.model)
    if not source.exists():
        raise UserError(f"{source} does not exist; pass a run dir, checkpoint, model dir or "
                        "HF dir")
    data_dir = source / "data" if (source / "data" / "manifest.json").is_file() else None
    if data_dir is None and ccfg.perplexity == ["held-out"]:
        ccfg = ccfg.model_copy(update={"perplexity": []})  # a lone model has no held-out split
    tasks = ccfg.tasks if ccfg.tasks is not None else (cfg.eval.tasks if cfg else [])
    out = Path(args.output)
    claim(out, STAGE.name, clear=True)
    compress_model(source, out, ccfg, data_dir, tasks,
                   Path(args.tokenizer) if args.tokenizer else None)
    seal(out, STAGE.name)
    return 0
