"""Every compression method on one briefly trained 25m-preset model, side by side.

    python bench/bench_compress.py [--steps 150] [--group-size 128] [--threads 2]

The model is the 25m preset (dim 512, 8 layers, GQA 8/4) trained `--steps` on
tinyshakespeare (../shared/data, else the built-in Python-docs corpus) with a BPE tokenizer
of 4096. For each method: size on disk, perplexity on the held-out split and on an external
text (the other corpus), a task metric (builtin:python_mc accuracy, near chance for such a
model, reported for the delta), and the serving engine's decode tokens/s at batch 1 and 8
against the fp32 model in the same process (alternating, best of three after a warm-up).

Benchmarks of issue 13 this prints:
1. `decode_int8: ours_fp32=X int8=Y ratio=Z` at batch 1 and 8 (goal >= 1.5x);
2. `int4_ppl: ours_*=+X% torchao_rtn=+Y%` at the same group size on the same projections
   (embedding and head left in fp32 on both sides), and the int4 size over bf16 with those
   quantized too (goal: ours lower, size <= 30%); torchao's round-to-nearest is its int4
   weight-only recipe
   (`_choose_qparams_affine_tinygemm` + quantize/dequantize, the qparams its Int4 tensors
   use), applied to the same projections, since torchao 0.18's int4 tensors do not run on
   this CPU (they need mslk or CUDA);
3. the table (method, size, ppl delta, task delta, tokens/s), also as bench/out/compress.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
SHAKESPEARE = ROOT.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
WORK = Path(tempfile.gettempdir()) / "lmforge-bench-compress"


def build(steps: int, threads: int) -> Path:
    """The trained run, made once and reused."""
    import yaml

    from lmforge.cli import main

    run = WORK / "run"
    if (run / "pretrain" / "manifest.json").is_file():
        return run
    WORK.mkdir(parents=True, exist_ok=True)
    source = ({"path": str(SHAKESPEARE), "format": "text"} if SHAKESPEARE.is_file()
              else {"builtin": "python-docs"})
    cfg = {"run": {"dir": str(run)}, "data": {"sources": [source], "steps": [],
           "split": {"mode": "contiguous", "train": 0.9, "val": 0.05, "test": 0.05}},
           "tokenizer": {"type": "bpe", "vocab_size": 4096},
           "model": {"preset": "25m", "max_seq_len": 256},
           "train": {"max_steps": steps, "batch_size": 8, "block_size": 256, "lr": 1e-3,
                     "warmup_steps": 20, "eval_every": 0, "ckpt_every": steps,
                     "threads": threads, "precision": "fp32", "tensorboard": False,
                     "plot": False, "sample_tokens": 0},
           "export": {"enabled": False}, "eval": {"enabled": False}}
    (WORK / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    if main(["run", "-c", str(WORK / "cfg.yaml")]) != 0:
        sys.exit("training the benchmark model failed")
    return run


def windows(run: Path, source: Path, count: int = 24):
    from lmforge.compress.calibrate import calibration_windows, read_calibration_texts
    from lmforge.model.tokenizer import load_tokenizer

    codec = load_tokenizer(run / "tokenizer")
    return calibration_windows(read_calibration_texts(source), codec.encode, 256, count)


def perplexity(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        losses = [float(model(ids[i:i + 4, :-1], ids[i:i + 4, 1:]).loss)
                  for i in range(0, len(ids), 4)]
    return float(torch.tensor(losses).mean().exp())


def torchao_rtn_int4(model: torch.nn.Module, group_size: int) -> torch.nn.Module:
    """torchao's int4 weight-only rounding (tinygemm qparams), dequantized in place."""
    from torchao.quantization.quant_primitives import (
        MappingType,
        _choose_qparams_affine_tinygemm,
        _dequantize_affine_tinygemm,
        _quantize_affine_tinygemm,
    )

    from lmforge.compress.prune import projections

    out = copy.deepcopy(model)
    for linear in projections(out).values():
        w = linear.weight.data.to(torch.bfloat16)
        block = (1, group_size)
        scale, zero = _choose_qparams_affine_tinygemm(
            w, MappingType.ASYMMETRIC, block, torch.int32, 0, 15, 1e-6, torch.bfloat16,
            torch.bfloat16)
        q = _quantize_affine_tinygemm(w, block, scale, zero, torch.int32, 0, 15)
        linear.weight.data = _dequantize_affine_tinygemm(
            q, block, scale, zero, torch.int32, 0, 15, output_dtype=torch.float32)
    return out


def task_accuracy(model_dir: Path, out: Path) -> float:
    from lmforge.eval.config import EvalConfig
    from lmforge.eval.stage import evaluate_model

    result = evaluate_model(model_dir, out, EvalConfig(tasks=["builtin:python_mc"],
                                                       perplexity=[]))
    return result["tasks"]["python_mc"]["acc"]


METHODS = [("int8-weight", {}), ("int8-dynamic", {}),
           ("int4-weight", {"calibration": "rtn"}), ("int4-weight", {"calibration": "gptq"}),
           ("int4-weight", {"calibration": "awq"}),
           ("int4-weight", {"calibration": "rtn", "embeddings": False}),
           ("int4-weight", {"calibration": "gptq", "embeddings": False}),
           ("int4-weight", {"calibration": "awq", "embeddings": False}),
           ("magnitude", {"sparsity": 0.5}),
           ("wanda", {"sparsity": 0.5}), ("2:4", {}),
           ("structured", {"head_ratio": 0.25, "channel_ratio": 0.25})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(args.threads)
    from lmforge.compress.config import CompressConfig
    from lmforge.compress.run import apply_method, save_compressed, sizes
    from lmforge.compress.speed import decode_speed
    from lmforge.model.files import load_model

    run = build(args.steps, args.threads)
    held_out = windows(run, run / "data" / "test")
    external_text = ROOT.parent / "README.md"
    external = windows(run, external_text, 8)
    original, source = load_model(run)
    base = {"val": perplexity(original, held_out), "ext": perplexity(original, external)}
    base_acc = task_accuracy(run, WORK / "eval-original")
    rows = []
    for method, extra in METHODS:
        ccfg = CompressConfig(method=method, group_size=args.group_size,
                              calibration_data="train", **extra)
        label = method + (f" {extra['calibration']}" if "calibration" in extra else "") + (
            " (projections only)" if extra.get("embeddings") is False else "")
        model, _ = apply_method(copy.deepcopy(original), ccfg, run / "tokenizer", run / "data")
        out = WORK / label.replace(" ", "-").replace(":", "_")
        save_compressed(model, out / "model", run / "tokenizer", ccfg)
        size = sizes(source, out / "model", original.num_params())
        speed = decode_speed(run, out / "model", args.tokens)
        rows.append({"method": label, "mb": size["compressed_bytes"] / 1e6,
                     "of_bf16": size["ratio_to_bf16"],
                     "val": perplexity(model, held_out) / base["val"] - 1,
                     "ext": perplexity(model, external) / base["ext"] - 1,
                     "acc": task_accuracy(out, out / "eval") - base_acc,
                     "b1": speed["batch_1"], "b8": speed["batch_8"]})
        print(f"# {label}: done", flush=True)
    torchao = perplexity(torchao_rtn_int4(original, args.group_size), held_out) / base["val"] - 1
    report(rows, base, base_acc, torchao, args.group_size)


def report(rows: list[dict], base: dict, base_acc: float, torchao: float, group: int) -> None:
    lines = [f"fp32: val ppl {base['val']:.3f}, external ppl "
             f"{base['ext']:.3f}, python_mc acc {base_acc:.3f}", "",
             "| method | MB | of bf16 | val ppl Δ | external ppl Δ | python_mc Δ | tok/s b1 "
             "(x fp32) | tok/s b8 (x fp32) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['mb']:.1f} | {r['of_bf16']:.0%} | {r['val']:+.2%} | "
                     f"{r['ext']:+.2%} | {r['acc']:+.3f} | {r['b1']['compressed_tok_s']:.0f} "
                     f"({r['b1']['speedup']:.2f}x) | {r['b8']['compressed_tok_s']:.0f} "
                     f"({r['b8']['speedup']:.2f}x) |")
    table = "\n".join(lines)
    print(table)
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out" / "compress.md").write_text(table + "\n")
    by = {r["method"]: r for r in rows}
    for batch in ("b1", "b8"):
        s = by["int8-weight"][batch]
        print(f"decode_int8_{batch}: fp32={s['original_tok_s']:.0f} "
              f"int8={s['compressed_tok_s']:.0f} ratio={s['speedup']:.2f}")
        s = by["int8-dynamic"][batch]
        print(f"decode_int8dyn_{batch}: fp32={s['original_tok_s']:.0f} "
              f"int8dyn={s['compressed_tok_s']:.0f} ratio={s['speedup']:.2f}")
    proj = {c: by[f"int4-weight {c} (projections only)"]["val"] for c in ("rtn", "gptq", "awq")}
    print(f"int4_ppl_g{group} (the same projections as torchao's): "
          + " ".join(f"ours_{c}={v:+.3%}" for c, v in proj.items())
          + f" torchao_rtn={torchao:+.3%} ours_awq_lower={proj['awq'] < torchao}")
    print(f"int4_size: {by['int4-weight awq']['of_bf16']:.1%} of bf16 (embedding and head "
          "quantized too)")


if __name__ == "__main__":
    main()
