"""Command: `lmforge export SRC -o DIR [--format hf|onnx|gguf|triton]`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.model.llama import Transformer

FORMATS = ("hf", "onnx", "gguf", "triton")


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export", help="write a model as an HF directory, ONNX, GGUF or a Triton repository",
        description="Write any model lmforge loads (a run dir, checkpoint .pt, model dir or "
        "HF dir) as a Hugging Face model directory (config.json, generation_config.json, "
        "safetensors weights and the tokenizer with its chat template), or with --format: "
        "an ONNX decoder graph with its KV cache (checked against torch), one GGUF file "
        "for llama.cpp, or a Triton Inference Server model repository around the ONNX graph.",
    )
    export.add_argument("source", help="run dir, checkpoint, model dir, HF dir, fine-tuned run "
                        "(RUN or RUN/finetune) or adapter dir")
    export.add_argument("-o", "--output", required=True, help="directory to write")
    export.add_argument("--format", default="hf", choices=FORMATS,
                        help="hf (default), onnx, gguf or triton; see docs/export.md")
    export.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weight dtype of --format hf (ONNX graphs are float32)")
    export.add_argument("--max-shard-mb", type=float, default=5000.0,
                        help="split weights above this size into shards (default 5000)")
    export.add_argument("--tokenizer", help="tokenizer dir (default: found next to the model)")
    export.add_argument("--merge-lora", action="store_true",
                        help="fold a fine-tuned LoRA adapter into the weights (default: write "
                        "the base and copy the adapter to DIR/adapter); onnx, gguf and "
                        "triton always merge it")
    export.add_argument("--onnx-int8", action="store_true",
                        help="also write model.int8.onnx (ONNX Runtime dynamic int8) and its "
                        "perplexity delta")
    export.add_argument("--eval-text", help="text file the int8 perplexity delta is measured "
                        "on (default: a short built-in English paragraph)")
    export.add_argument("--gguf-type", choices=("f16", "q8_0"),
                        help="GGUF tensor type (default f16)")
    export.add_argument("--triton-name", help="Triton model name (default lmforge)")
    export.add_argument("--max-batch-size", type=int,
                        help="Triton's max_batch_size (default 8)")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.export.stage import STAGE, export_model
    from lmforge.outputs import claim, seal

    out, source = Path(args.output), Path(args.source)
    if not source.exists():
        raise UserError(f"{source} does not exist; pass a run dir, checkpoint, model dir or "
                        "HF dir")
    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    _check_options(args)
    text = _read_text(Path(args.eval_text)) if args.eval_text else None
    claim(out, STAGE.name, clear=True)  # refuses a directory that holds what lmforge did not write
    if args.format == "hf":
        export_model(source, out, args.dtype, args.max_shard_mb, tokenizer, args.merge_lora)
    else:
        _export_other(args, source, out, tokenizer, text)
    seal(out, STAGE.name)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Each format's options with that format only: a flag that would do nothing is a
    mistake worth one line."""
    owners = {"--onnx-int8": (args.onnx_int8, "onnx"), "--eval-text": (args.eval_text, "onnx"),
              "--gguf-type": (args.gguf_type, "gguf"),
              "--triton-name": (args.triton_name, "triton"),
              "--max-batch-size": (args.max_batch_size, "triton"),
              "--dtype": (args.dtype != "float32", "hf")}
    for flag, (given, fmt) in owners.items():
        if given and args.format != fmt:
            raise UserError(f"{flag} is for --format {fmt}, not {args.format}; drop it or "
                            f"pass --format {fmt}")
    if args.eval_text and not args.onnx_int8:
        raise UserError("--eval-text measures the int8 graph; add --onnx-int8 or drop it")
    if args.format == "triton":
        from lmforge.export.triton import check_repository_options

        check_repository_options(args.triton_name or "lmforge", args.max_batch_size or 8)


def _export_other(args: argparse.Namespace, source: Path, out: Path,
                  tokenizer: Path | None, text: str | None) -> None:
    from lmforge.progress import console

    model, tokenizer_dir = _merged_model(source, tokenizer)
    if args.format == "onnx":
        from lmforge.export.onnx import export_onnx

        config = export_onnx(model, tokenizer_dir, out, args.onnx_int8, text)
        console.print(f"  export: ONNX graph -> {out / config['graph']}, "
                      f"{_parity_line(config['parity'])}")
        if "int8" in config:
            q = config["int8"]
            console.print(f"  export: int8 graph -> {out / q['graph']}, perplexity "
                          f"{q['ppl_fp32']:.3f} -> {q['ppl_int8']:.3f} "
                          f"({q['ppl_delta_pct']:+.2f}%) on {q['eval_tokens']} tokens")
    elif args.format == "gguf":
        from lmforge.export.gguf import export_gguf

        written = export_gguf(model, tokenizer_dir, out, args.gguf_type or "f16")
        console.print(f"  export: GGUF {written['type']}, {written['tensors']} tensors, "
                      f"{written['bytes'] / 1e6:.1f} MB -> {out / written['file']}")
    else:
        from lmforge.export.triton import export_triton

        name = args.triton_name or "lmforge"
        config = export_triton(model, tokenizer_dir, out, name, args.max_batch_size or 8)
        console.print(f"  export: Triton repository {out} (model {name}), "
                      f"{_parity_line(config['parity'])}")


def _parity_line(parity: dict[str, float]) -> str:
    return (f"ONNX Runtime vs torch max |dlogit| {parity['max_abs_dlogit_prefill']:.1e} "
            f"prefill, {parity['max_abs_dlogit_decode']:.1e} decode")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --eval-text {path} ({e}); pass a UTF-8 text file") from None


def _merged_model(source: Path, tokenizer: Path | None) -> tuple[Transformer, Path]:
    """The model as one set of weights (a LoRA adapter merged in) and its tokenizer dir
    (next to the model, else, for an adapter, next to its base)."""
    from lmforge.model.files import load_model
    from lmforge.model.lora import lora_modules, merge_lora
    from lmforge.model.peft import read_config
    from lmforge.sources import find_tokenizer

    model, loaded_from = load_model(source)
    if lora_modules(model):
        merge_lora(model)
    if tokenizer is None:
        try:
            tokenizer = find_tokenizer(loaded_from)
        except UserError:
            if not (loaded_from / "adapter_config.json").is_file():
                raise
            tokenizer = find_tokenizer(Path(read_config(loaded_from)["base_model_name_or_path"]))
    return model, tokenizer
