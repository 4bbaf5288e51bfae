"""Benchmark 1: training-step throughput against transformers' LlamaForCausalLM.

Same shapes (vocab 65, hidden 128, 4 layers, 4 heads, intermediate 512, batch 12 x 64) and the
same initial weights: our weights are loaded into HF's model and the logits are checked equal
first. Ours runs `Trainer.train_step` (loader, LR schedule, autocast, clip, stability guard,
fused AdamW); HF runs the usual loop (forward with labels, backward, clip 1.0, AdamW, zero_grad)
on batches prepared in advance. Both sides alternate in blocks, in one process, and the
figure is the ratio of median tokens/s. Both sides use the same number of torch threads.
`--compile` runs ours with `train.compile` (each block through torch.compile; the first steps
compile, before the timing) against HF eager.

    python bench/bench_train_throughput.py [--rounds 7] [--steps 20] [--threads N] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from corpus import random_tokens
from lmforge.config import validate_config
from lmforge.model.hf import load_into_hf
from lmforge.train.runtime import auto_threads
from lmforge.train.stage import pretrainer
from lmforge.train.trainer import Trainer

WORK = Path(__file__).parent / "_work" / "throughput"
MODEL = {"dim": 128, "n_layers": 4, "n_heads": 4, "ffn_dim": 512, "max_seq_len": 64}
BATCH, BLOCK, VOCAB = 12, 64, 65


def token_dir() -> Path:
    return random_tokens(WORK / "tokens", VOCAB, {"train": 400_000, "val": 20_000}, 1)


def our_trainer(precision: str, threads: int | None = None, compile: bool = False) -> Trainer:
    raw = {"run": {"dir": str(WORK / "run")}, "model": MODEL, "train": {
        "batch_size": BATCH, "block_size": BLOCK, "max_steps": 10**6, "warmup_steps": 10,
        "lr": 1e-3, "precision": precision, "tensorboard": False, "peak_tflops": 1.0,
        "threads": threads or torch.get_num_threads(), "compile": compile}}
    return pretrainer(validate_config(raw), WORK / f"out-{precision}", token_dir())


def hf_step_fn(model: torch.nn.Module, precision: str, batches: list[torch.Tensor]):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    state = {"i": 0}

    def step() -> None:
        x = batches[state["i"] % len(batches)]
        state["i"] += 1
        with autocast:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def check_logits(trainer: Trainer) -> tuple[torch.nn.Module, float]:
    hf = load_into_hf(trainer.model, trainer.model_cfg)
    x = torch.randint(0, VOCAB, (BATCH, BLOCK), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (trainer.model(x).logits - hf(x).logits).abs().max().item()
    return hf.train(), diff


def measure(sides: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median tokens/s per side, alternating sides every `steps` steps."""
    for fn in sides.values():
        for _ in range(5):
            fn()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[name].append(steps * BATCH * BLOCK / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def profile(trainer: Trainer) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            trainer.train_step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", type=int, help="both sides; default: what lmforge picks")
    parser.add_argument("--compile", action="store_true",
                        help="ours with train.compile (torch.compile per block); HF eager")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or auto_threads())
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; shapes "
          f"{yaml.safe_dump(MODEL, default_flow_style=True).strip()}, batch {BATCH} x {BLOCK}")
    results = {}
    for precision in ("fp32", "bf16"):
        ours = our_trainer(precision, compile=args.compile)
        hf, diff = check_logits(ours)
        print(f"logits_max_abs_diff_{precision}_init: ours=0 peer={diff:.3g} (equal weights)")
        batches = [ours.loader.next_batch().x for _ in range(16)]
        rates = measure({"ours": ours.train_step, "hf": hf_step_fn(hf, precision, batches)},
                        args.rounds, args.steps)
        results[precision] = rates
        name = f"train_tokens_per_s_{precision}{'_compiled' if args.compile else ''}"
        print(f"{name}: ours={rates['ours']:.0f} peer={rates['hf']:.0f} "
              f"ratio={rates['ours'] / rates['hf']:.2f}")
        if args.profile:
            profile(ours)
        ours.loader.close()
    best = max(results["fp32"]["ours"], results["bf16"]["ours"])
    print(f"train_tokens_per_s_best_vs_hf_fp32: ours={best:.0f} "
          f"peer={results['fp32']['hf']:.0f} ratio={best / results['fp32']['hf']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
