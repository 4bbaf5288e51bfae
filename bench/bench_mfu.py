"""Benchmark 3: model FLOPs utilization of a ~25M-parameter preset on this CPU.

The peer is the machine itself: the best throughput of one large square matmul (4096^3) in
the same dtype and on the same number of threads, measured in this process right before the
training steps.
MFU = tokens/s x training FLOPs per token (6N + attention, PaLM convention) / that peak.

    python bench/bench_mfu.py [--steps 6] [--batch 4] [--block 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from corpus import random_tokens
from lmforge.config import validate_config
from lmforge.model.config import count_params, flops_per_token
from lmforge.train.mfu import measure_matmul_tflops
from lmforge.train.runtime import auto_threads
from lmforge.train.stage import pretrainer
from lmforge.train.trainer import Trainer

WORK = Path(__file__).parent / "_work" / "mfu"
VOCAB = 8192


def token_dir() -> Path:
    return random_tokens(WORK / "tokens", VOCAB, {"train": 1_000_000, "val": 50_000}, 4)


def trainer(precision: str, batch: int, block: int, threads: int) -> Trainer:
    raw = {"run": {"dir": str(WORK / "run")}, "model": {"preset": "25m"}, "train": {
        "batch_size": batch, "block_size": block, "max_steps": 10**6, "warmup_steps": 10,
        "precision": precision, "tensorboard": False, "peak_tflops": 1.0, "threads": threads}}
    return pretrainer(validate_config(raw), WORK / f"out-{precision}", token_dir())


def tokens_per_s(t: Trainer, steps: int, rounds: int = 3) -> float:
    t.train_step()
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            t.train_step()
        rates.append(steps * t.tcfg.tokens_per_step / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--threads", type=int, help="default: what the trainer would pick")
    args = parser.parse_args()
    threads = args.threads or auto_threads()
    torch.set_num_threads(threads)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        peak = measure_matmul_tflops(dtype, size=4096, seconds=3.0) * 1e12
        t = trainer(precision, args.batch, args.block, threads)
        rate = tokens_per_s(t, args.steps)
        fpt = flops_per_token(t.model_cfg, args.block)
        achieved = rate * fpt
        if precision == "bf16":
            print(f"# preset 25m: {count_params(t.model_cfg)['total'] / 1e6:.1f}M parameters, "
                  f"{fpt / 1e6:.0f} MFLOPs/token at context {args.block}, batch {args.batch}, "
                  f"{torch.get_num_threads()} threads")
        print(f"mfu_{precision}: ours={achieved / 1e9:.1f} GFLOP/s ({rate:.0f} tok/s) "
              f"peer={peak / 1e9:.1f} GFLOP/s (4096^3 matmul peak) ratio={achieved / peak:.3f}")
        t.loader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
