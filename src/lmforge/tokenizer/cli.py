"""`lmforge tokenizer train | inspect` and `lmforge tokenize`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    tokenizer = sub.add_parser("tokenizer", help="train or inspect a tokenizer")
    actions = tokenizer.add_subparsers(dest="tokenizer_command", metavar="ACTION")

    train = actions.add_parser(
        "train",
        help="train a byte-level BPE (or char) tokenizer on a data output's train split",
        description="Either DATA_DIR -o TOK_DIR, or -c CONFIG (the run's tokenizer stage, "
        "RUN_DIR/data -> RUN_DIR/tokenizer). Dotted overrides such as "
        "--tokenizer.min_frequency=3 change the recipe.",
    )
    train.add_argument(
        "data_dir", nargs="?", type=Path, metavar="DATA_DIR", help="data-stage output"
    )
    train.add_argument("-o", "--output", type=Path, help="tokenizer directory to write")
    train.add_argument("-c", "--config", help="run config (YAML)")
    train.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default 8192)")
    train.add_argument("--type", choices=("bpe", "char"), help="tokenizer type (default bpe)")
    train.add_argument("--path", type=Path, help="adopt this tokenizer.json instead of training")
    train.set_defaults(handler=_train, accepts_overrides=True)

    inspect = actions.add_parser(
        "inspect", help="vocabulary, compression per split and language, notable tokens"
    )
    inspect.add_argument("dir", type=Path, help="tokenizer directory")
    inspect.add_argument(
        "--data", type=Path, metavar="DATA_DIR", help="measure on this data output"
    )
    inspect.add_argument("--top", type=int, default=15, help="how many tokens to list (default 15)")
    inspect.add_argument(
        "--sample-mb", type=float, default=4.0, help="text measured per split (default 4 MB)"
    )
    inspect.set_defaults(handler=_inspect)

    tokenize = sub.add_parser(
        "tokenize",
        help="encode a data output into token shards (.bin/.idx + meta.json)",
        description="Either DATA_DIR --tokenizer TOK_DIR -o TOKENS_DIR, or -c CONFIG (the run's "
        "tokenize stage). Writes TOKENS_DIR/{train,val,test}.bin + .idx + meta.json.",
    )
    tokenize.add_argument(
        "data_dir", nargs="?", type=Path, metavar="DATA_DIR", help="data-stage output"
    )
    tokenize.add_argument("--tokenizer", type=Path, metavar="TOK_DIR", help="tokenizer directory")
    tokenize.add_argument("-o", "--output", type=Path, help="tokens directory to write")
    tokenize.add_argument("-c", "--config", help="run config (YAML)")
    tokenize.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    tokenize.add_argument(
        "--resume", action="store_true", help="keep shards an interrupted run finished"
    )
    tokenize.set_defaults(handler=_tokenize, accepts_overrides=True)


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.tokenizer.stage import TOKENIZER

    direct = {"vocab_size": args.vocab_size, "type": args.type, "path": args.path}
    direct = {k: str(v) if isinstance(v, Path) else v for k, v in direct.items() if v is not None}
    if args.config:
        if args.data_dir or args.output:
            raise UserError("give either -c CONFIG or DATA_DIR -o TOK_DIR, not both")
        cfg, run_dir = _config(args.config, overrides, "tokenizer", direct)
        inputs = {"data": run_dir / "data"} if cfg.tokenizer.path is None else {}
        _execute(TOKENIZER, cfg, run_dir / "tokenizer", inputs, resume=False)
        return 0
    if args.output is None:
        raise UserError("say where to write the tokenizer: DATA_DIR -o TOK_DIR (or -c CONFIG)")
    if args.data_dir is None and args.path is None:
        raise UserError(
            "give the data output to train on: lmforge tokenizer train DATA_DIR -o TOK_DIR"
        )
    cfg = _one_off_config(overrides, "tokenizer", direct)
    inputs = {"data": args.data_dir} if args.data_dir is not None else {}
    _execute(TOKENIZER, cfg, args.output, inputs, resume=False)
    return 0


def _tokenize(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.tokenizer.stage import TOKENIZE

    direct = {"workers": args.workers} if args.workers is not None else {}
    if args.config:
        if args.data_dir or args.output or args.tokenizer:
            raise UserError(
                "give either -c CONFIG or DATA_DIR --tokenizer TOK_DIR -o OUT, not both"
            )
        cfg, run_dir = _config(args.config, overrides, "tokenize", direct)
        inputs = {"data": run_dir / "data", "tokenizer": run_dir / "tokenizer"}
        _execute(TOKENIZE, cfg, run_dir / "tokenize", inputs, resume=args.resume)
        return 0
    if args.data_dir is None or args.tokenizer is None or args.output is None:
        raise UserError("usage: lmforge tokenize DATA_DIR --tokenizer TOK_DIR -o TOKENS_DIR")
    cfg = _one_off_config(overrides, "tokenize", direct)
    inputs = {"data": args.data_dir, "tokenizer": args.tokenizer}
    _execute(TOKENIZE, cfg, args.output, inputs, resume=args.resume)
    return 0


def _inspect(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.tokenizer.inspect import inspect_tokenizer, print_report

    print_report(inspect_tokenizer(args.dir, args.data, top=args.top, sample_mb=args.sample_mb))
    return 0


def _config(
    path: str, overrides: list[str], section: str, direct: dict[str, Any]
) -> tuple[Any, Path]:
    from lmforge.config import load_config

    flags = [f"--{section}.{key}={value}" for key, value in direct.items()]
    cfg = load_config(path, [*overrides, *flags])
    return cfg, cfg.run.path


def _one_off_config(overrides: list[str], section: str, direct: dict[str, Any]) -> Any:
    from lmforge.config import apply_overrides, parse_overrides, validate_config

    raw = apply_overrides({section: dict(direct)}, parse_overrides(overrides))
    return validate_config(raw)


def _execute(stage: Any, cfg: Any, out_dir: Path, inputs: dict[str, Path], resume: bool) -> None:
    """Run one stage outside `lmforge run`, still writing its manifest."""
    from lmforge.pipeline import StageContext, execute, read_manifest

    for name, directory in inputs.items():
        if not Path(directory).is_dir():
            raise UserError(
                f"{name} directory {directory} not found; check the path or run that stage"
            )
    upstream = {name: m for name, d in inputs.items() if (m := read_manifest(Path(d))) is not None}
    execute(stage, StageContext(cfg=cfg, out_dir=out_dir, inputs=inputs, resume=resume), upstream)
