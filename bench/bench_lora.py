"""Benchmark: LoRA SFT against transformers + peft on the same HF model, and full vs LoRA.

The model is the 25m preset (dim 512, 8 layers, GQA 8/4, vocab 8192), random weights,
exported as an HF directory; both sides start from that directory. The data is 400 random
token conversations (a prompt, then a reply that carries the loss), packed by lmforge's
packer into rows of BLOCK tokens; both sides train on the same rows in the same order: rank
8, alpha 16, dropout 0.05 on q/k/v/o, AdamW (lr 2e-4, betas 0.9/0.95), grad clip 1.0.

  ours  lmforge's Trainer.train_step with the SFT objective, as `lmforge finetune` runs it
        (its packed loader, per-example attention, LR schedule, stability guard);
  peer  peft.get_peft_model over AutoModelForCausalLM and the plain loop (forward with
        position_ids, cross-entropy on the reply tokens, backward, clip, AdamW.step,
        zero_grad), the fastest way to drive them; it sees each row without the per-example
        attention mask, a little less work than ours.

Each measurement is its own process, so its peak RSS (ru_maxrss, imports included) is its
own; sides alternate for ROUNDS rounds, and each reports tokens/s (every position of the
rows) over STEPS steps after 3 warm-up steps. Medians are compared. Also ours with full
fine-tuning on the same rows: the memory and speed LoRA saves.

    python bench/bench_lora.py [--rounds 3] [--steps 10] [--threads 2] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from measure import line

WORK = Path(__file__).parent / "_work" / "lora"
BATCH, BLOCK, VOCAB, EXAMPLES = 4, 256, 8192, 400
LORA = {"rank": 8, "alpha": 16.0, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj",
                                                              "o_proj"]}
LR, WARMUP = 2e-4, 3


def examples():
    """Random conversations: 40-120 prompt tokens, 20-80 reply tokens (the loss)."""
    from lmforge.finetune.render import Encoded

    rng = random.Random(0)
    out = []
    for _ in range(EXAMPLES):
        prompt, reply = rng.randint(40, 120), rng.randint(20, 80)
        ids = [rng.randrange(VOCAB) for _ in range(prompt + reply)]
        out.append(Encoded(ids, [False] * prompt + [True] * reply))
    return out


def prepare() -> None:
    """The HF base dir and the rows both sides train on."""
    from lmforge.export.hf import write_hf_model
    from lmforge.finetune.pack import PackedBatches
    from lmforge.model.config import preset_config
    from lmforge.model.llama import Transformer

    torch.manual_seed(0)
    model = Transformer(preset_config("25m", VOCAB))
    write_hf_model(WORK / "base", model.state_dict(), model.cfg, None)
    batches = PackedBatches(examples(), BATCH, BLOCK, seed=0)
    rows = [batches.next_batch() for _ in range(64)]
    torch.save([(b.x, b.y, b.positions) for b in rows], WORK / "rows.pt")
    print(f"# 25m preset, {model.num_params() / 1e6:.1f}M parameters; batch {BATCH} x "
          f"{BLOCK}; {sum(b.trained_tokens for b in rows) / len(rows):.0f} reply tokens "
          "per batch", flush=True)


def run_ours(method: str, precision: str, steps: int) -> float:
    from lmforge.config import validate_config
    from lmforge.finetune.train import adapter_hook
    from lmforge.model.files import load_model
    from lmforge.train.objectives.sft import SFTObjective
    from lmforge.train.trainer import Trainer

    cfg = validate_config({"run": {"dir": str(WORK / "run")}, "finetune": {
        "method": method, "lora": LORA, "batch_size": BATCH, "block_size": BLOCK,
        "max_steps": 10**6, "warmup_steps": 10, "lr": LR, "precision": precision,
        "tensorboard": False, "threads": torch.get_num_threads(), "seed": 0}})
    model, _ = load_model(WORK / "base")
    tcfg = cfg.finetune
    objective = SFTObjective(examples(), [], [], tcfg, model.cfg.vocab, None)
    trainer = Trainer(tcfg, model.cfg, objective, WORK / f"out-{method}", name="finetune",
                      init_state=model.state_dict(), adapt=adapter_hook(cfg, None))
    del model
    return timed(trainer.train_step, steps)


def run_peer(precision: str, steps: int) -> float:
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(WORK / "base",
                                                              dtype=torch.float32)
    config = peft.LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"],
                             lora_dropout=LORA["dropout"], target_modules=LORA["targets"],
                             task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
    rows = torch.load(WORK / "rows.pt")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    state = {"i": 0}

    def step() -> None:
        x, y, positions = rows[state["i"] % len(rows)]
        state["i"] += 1
        with autocast:
            logits = model(input_ids=x, position_ids=positions).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(),
                                                 ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, steps)


def timed(step, steps: int) -> float:
    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH * BLOCK / (time.perf_counter() - start)


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.side == "peer":
        rate = run_peer(args.precision, args.steps)
    else:
        rate = run_ours(args.side.removeprefix("ours-"), args.precision, args.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens_per_s": rate, "peak_rss_mb": peak}))


def measure(side: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--side", side, "--steps", str(args.steps),
           "--threads", str(args.threads), "--precision", args.precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--side", choices=["ours-lora", "ours-full", "peer"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    prepare()
    print(f"# torch {torch.__version__}, {args.threads} threads, {args.precision}, "
          f"{args.rounds} rounds of {args.steps} steps per side", flush=True)
    results: dict[str, list[dict[str, float]]] = {"ours-lora": [], "peer": [], "ours-full": []}
    for _ in range(args.rounds):
        for side in results:
            results[side].append(measure(side, args))
            print(f"  {side}: {results[side][-1]}", flush=True)
    med = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for side, runs in results.items()}
    lora, peer, full = med["ours-lora"], med["peer"], med["ours-full"]
    tag = args.precision
    line(f"lora_sft_tokens_per_s_{tag}", lora["tokens_per_s"], peer["tokens_per_s"], ".0f")
    line(f"lora_sft_peak_rss_mb_{tag}", lora["peak_rss_mb"], peer["peak_rss_mb"], ".0f")
    print("# full_vs_lora below: ours=full fine-tuning, peer=ours with LoRA")
    line(f"full_vs_lora_tokens_per_s_{tag}", full["tokens_per_s"], lora["tokens_per_s"], ".0f")
    line(f"full_vs_lora_peak_rss_mb_{tag}", full["peak_rss_mb"], lora["peak_rss_mb"], ".0f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
