"""Commands: `lmforge pretrain`, `lmforge generate`, `lmforge estimate`."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.train import clock  # noqa: F401 - notes the start time early (non-Linux)


def register(sub: argparse._SubParsersAction) -> None:
    pretrain = sub.add_parser(
        "pretrain", help="train the model on existing token shards",
        description="Run the pretrain stage alone (the data, tokenizer and tokenize stages "
        "must have run: `lmforge run -c CFG --until tokenize`). Dotted overrides such as "
        "--train.max_steps=200 change the config.",
    )
    pretrain.add_argument("-c", "--config", required=True, help="run config (YAML)")
    pretrain.add_argument("--resume", nargs="?", const="latest", metavar="CKPT",
                          help="continue from the latest checkpoint (or the one given)")
    pretrain.set_defaults(handler=_pretrain, accepts_overrides=True)

    gen = sub.add_parser(
        "generate", help="sample text from a trained model",
        description="Sample from a checkpoint (.pt), a model or HF export directory, or a run "
        "directory.",
    )
    gen.add_argument("checkpoint",
                     help="checkpoint file, pretrain/model dir, HF export dir, or run dir")
    gen.add_argument("-p", "--prompt", default="\n", help="text to continue")
    gen.add_argument("-n", "--max-new-tokens", type=int, default=200)
    gen.add_argument("-t", "--temperature", type=float, default=0.8, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=50, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus mass; 1.0 = off")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--num-samples", type=int, default=1)
    gen.add_argument("--tokenizer", help="tokenizer dir (default: found next to the model)")
    gen.add_argument("--device", default="cpu", help="cpu or cuda")
    gen.add_argument("--ignore-eos", action="store_true",
                     help="go on past eos and the end-of-turn token (default: stop there)")
    gen.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                     help="onnx: run an `lmforge export --format onnx` directory with ONNX "
                     "Runtime on the CPU, without importing torch")
    gen.set_defaults(handler=_generate)

    est = sub.add_parser(
        "estimate", help="memory per GPU, FLOPs, time and cost of a training run",
        description="Estimate memory per GPU for each ZeRO/FSDP stage, 6ND training FLOPs, "
        "wall time at a stated MFU and cost, e.g. "
        "`lmforge estimate --model 7b --tokens 500M --gpu a100-80g --gpus 8 --zero 3 --price 2.0`",
    )
    est.add_argument("--model", default="7b", help="preset name (tiny ... 7b)")
    est.add_argument("-c", "--config", help="take the model section of this run config instead")
    est.add_argument("--tokens", required=True, help="training tokens, e.g. 500M, 2B, 1T")
    est.add_argument("--gpu", default="a100-80g", help="GPU type")
    est.add_argument("--gpus", type=int, default=1)
    est.add_argument("--zero", type=int, default=3, help="ZeRO stage of the run (3 = FSDP)")
    est.add_argument("--price", type=float, help="on-demand dollars per GPU-hour")
    est.add_argument("--spot-price", type=float, help="spot dollars per GPU-hour")
    est.add_argument("--spot-factor", type=float, default=0.4,
                     help="spot price as a fraction of --price when --spot-price is not given")
    est.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization to assume")
    est.add_argument("--seq-len", type=int, help="tokens per sequence (default: the model's)")
    est.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per pass")
    est.set_defaults(handler=_estimate)


def _pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.config import load_config
    from lmforge.pipeline import StageContext, execute, require_input
    from lmforge.train import checkpoint, distributed
    from lmforge.train.stage import STAGE

    cfg = load_config(args.config, overrides)
    run_dir = cfg.run.path
    hint = f"lmforge run -c {args.config} --until tokenize"
    upstream = {name: require_input(run_dir, name, hint) for name in STAGE.inputs}
    options = {}
    if args.resume not in (None, "latest"):
        options["resume_from"] = checkpoint.resolve(args.resume)
    ctx = StageContext(cfg=cfg, out_dir=run_dir / STAGE.name,
                       inputs={name: run_dir / name for name in STAGE.inputs},
                       resume=args.resume is not None, options=options)
    if distributed.detect().is_main:
        from lmforge.train.monitor import console

        manifest = execute(STAGE, ctx, upstream)
        console.print(f"[bold]pretrain[/]: done in {manifest['wall_time_s']:.1f}s -> "
                              f"{ctx.out_dir}")
    else:
        STAGE.run(ctx)
    return 0


def _generate(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0 or args.temperature < 0:
        raise UserError("--top-k and --temperature must be >= 0")
    if args.backend == "onnx":  # numpy, onnxruntime and tokenizers only: torch stays unloaded
        from lmforge.export.onnx_runner import OnnxLM

        if args.device != "cpu":
            raise UserError("--backend onnx runs on the CPU; drop --device")
        lm = OnnxLM(Path(args.checkpoint), Path(args.tokenizer) if args.tokenizer else None)
        return _write_samples(args, lm.tokenizer, lm.encode(args.prompt), lm.stop_ids,
                              lm.stream)
    import torch

    from lmforge.model.files import load_model
    from lmforge.model.generate import stream
    from lmforge.sources import find_tokenizer
    from lmforge.tokenizer.chat_tokenizer import ChatTokenizer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu")
    model, source = load_model(args.checkpoint, args.device)
    tok = ChatTokenizer(Path(args.tokenizer) if args.tokenizer else find_tokenizer(source))
    return _write_samples(args, tok, tok.encode(args.prompt), tok.chat_stop_ids(),
                          functools.partial(stream, model))


def _write_samples(args: argparse.Namespace, tok: Any, prompt: list[int],
                   stop_ids: frozenset[int], stream: Callable[..., Iterator[int]]) -> int:
    """Print --num-samples continuations of the prompt as they are generated."""
    if not prompt:
        raise UserError("the prompt encodes to no tokens; pass a non-empty --prompt")
    stops = () if args.ignore_eos else stop_ids
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        sys.stdout.write(args.prompt)
        for text in decoded(tok, stream(prompt, args.max_new_tokens,
                                        temperature=args.temperature, top_k=args.top_k or None,
                                        top_p=args.top_p, seed=seed, stop_ids=stops)):
            sys.stdout.write(text)
            sys.stdout.flush()
        sys.stdout.write("\n" + ("-" * 40 + "\n" if i < args.num_samples - 1 else ""))
    return 0


def decoded(tok: Any, tokens: Iterator[int]) -> Iterator[str]:
    """The text of a token stream as it grows (whole characters; special tokens left out)."""
    ids: list[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = tok.decode(ids)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text


def _estimate(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.train.estimate import make_estimate
    from lmforge.train.estimate_report import print_estimate

    model = args.model
    if args.config:
        from lmforge.config import load_config

        cfg = load_config(args.config)
        model = cfg.model.with_vocab(cfg.model.vocab_size or cfg.tokenizer.vocab_size)
    est = make_estimate(model, args.tokens, args.gpu, args.gpus, args.zero, args.price,
                        args.spot_price, args.spot_factor, args.mfu, args.seq_len,
                        args.micro_batch)
    print_estimate(est)
    return 0
