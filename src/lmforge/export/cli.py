"""Command: `lmforge export SRC -o DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export", help="write a model as an HF directory (transformers, vLLM)",
        description="Write any model lmforge loads (a run dir, checkpoint .pt, model dir or "
        "HF dir) as a Hugging Face model directory: config.json, generation_config.json, "
        "safetensors weights and the tokenizer with its chat template.",
    )
    export.add_argument("source", help="run dir, checkpoint, model dir, HF dir, fine-tuned run "
                        "(RUN or RUN/finetune) or adapter dir")
    export.add_argument("-o", "--output", required=True, help="directory to write")
    export.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    export.add_argument("--max-shard-mb", type=float, default=5000.0,
                        help="split weights above this size into shards (default 5000)")
    export.add_argument("--tokenizer", help="tokenizer dir (default: found next to the model)")
    export.add_argument("--merge-lora", action="store_true",
                        help="fold a fine-tuned LoRA adapter into the weights (default: write "
                        "the base and copy the adapter to DIR/adapter)")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.export.stage import STAGE, export_model
    from lmforge.outputs import claim, seal

    out, source = Path(args.output), Path(args.source)
    if not source.exists():
        raise UserError(f"{source} does not exist; pass a run dir, checkpoint, model dir or "
                        "HF dir")
    claim(out, STAGE.name, clear=True)  # refuses a directory that holds what lmforge did not write
    export_model(source, out, args.dtype, args.max_shard_mb,
                 Path(args.tokenizer) if args.tokenizer else None, args.merge_lora)
    seal(out, STAGE.name)
    return 0
