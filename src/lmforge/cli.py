"""The one entry point: `lmforge <command> ...`.

Each area registers its subcommands; handlers import heavy libraries only when they run,
so `lmforge --help` and `lmforge data stats` stay fast. A `UserError` anywhere becomes one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from lmforge import __version__
from lmforge.errors import UserError

# Modules with a `register(subparsers)` function, in the order their commands are listed.
COMMAND_MODULES = (
    "lmforge.commands",
    "lmforge.data.cli",
    "lmforge.tokenizer.cli",
    "lmforge.train.cli",
    "lmforge.finetune.cli",
    "lmforge.export.cli",
    "lmforge.compress.cli",
    "lmforge.eval.cli",
    "lmforge.eval.ablate_cli",
    "lmforge.serve.cli",
    "lmforge.report.cli",
)

Handler = Callable[[argparse.Namespace, list[str]], int]


class Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def build_parser() -> Parser:
    parser = Parser(
        prog="lmforge",
        description="Raw text to a trained, evaluated, compressed and served language model.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        if extra and not getattr(args, "accepts_overrides", False):
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        return handler(args, extra) or 0
    except UserError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
