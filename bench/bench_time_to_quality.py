"""Benchmark 2: wall time from raw text to val loss <= 1.886 on tinyshakespeare (chars).

ours: `lmforge run -c configs/shakespeare-char.yaml` in a fresh run directory (data, char
tokenizer, tokenize and pretrain stages, process start-up included); the time is the
`elapsed_s` (seconds since the process started) of the first eval row with val_loss <= 1.886.

peer: nanoGPT's README CPU recipe (`train.py config/train_shakespeare_char.py --device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`), reimplemented
below from nanoGPT's description: prepare.py's char encoding and 90/10 split, the GPT-2 model
(learned positions, LayerNorm without bias, GELU MLP, tied head, SDPA), AdamW (0.9, 0.99),
wd 0.1 on matrices, LR 1e-3 with 100 warmup steps and cosine to 1e-4 at 2000, clip 1.0,
fp32, evals every 250 steps on 20 train and 20 val batches, checkpoint on improvement. Its
time is the first eval at or below 1.886, else its final eval (nanoGPT's own run ends at
1.8857). Both run as fresh processes, one after the other, in this bench run, with the same
number of torch threads (lmforge picks its count from the machine's load; on a shared box an
extra thread on a busy core slows every op, and the peer gets the same count).

    python bench/bench_time_to_quality.py [--text PATH] [--skip-peer]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "time_to_quality"
TARGET = 1.886
DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def run_ours(text: Path, threads: int | None) -> tuple[float | None, float, list, int]:
    run_dir = WORK / "ours"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = ROOT / "configs" / "shakespeare-char.yaml"
    cmd = [sys.executable, "-m", "lmforge", "run", "-c", str(config), f"--run.dir={run_dir}",
           f"--data.sources.0.path={text}", *([f"--train.threads={threads}"] if threads else [])]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"lmforge run failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "pretrain/metrics.jsonl").open()]
    evals = [(r["step"], r["val_loss"], r["elapsed_s"]) for r in rows if "val_loss" in r]
    hit = next((t for _, loss, t in evals if loss <= TARGET), None)
    return hit, wall, evals, rows[0]["threads"]


def run_peer(text: Path, threads: int | None) -> tuple[float | None, float, list]:
    """nanoGPT's recipe in a fresh process; `threads` pins torch's CPU threads (None: default)."""
    out = WORK / "peer"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.time()
    cmd = [sys.executable, __file__, "--peer-worker", str(out), "--text", str(text)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"peer failed:\n{proc.stderr[-3000:]}")
    evals = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    evals = [(e["step"], e["val_loss"], e["elapsed_s"]) for e in evals]
    hit = next((t for _, loss, t in evals if loss <= TARGET), None)
    return hit if hit is not None else evals[-1][2], wall, evals


# -- the peer: nanoGPT's shakespeare_char CPU recipe ---------------------------------------


def peer_worker(out: Path, text: Path) -> None:
    """Runs in its own process; prints one JSON line per eval."""
    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F

    started = time.time() - _process_age()
    data = text.read_text(encoding="utf-8")
    chars = sorted(set(data))
    stoi = {c: i for i, c in enumerate(chars)}
    split = int(len(data) * 0.9)
    np.array([stoi[c] for c in data[:split]], dtype=np.uint16).tofile(out / "train.bin")
    np.array([stoi[c] for c in data[split:]], dtype=np.uint16).tofile(out / "val.bin")

    block, batch, n_layer, n_head, n_embd, vocab = 64, 12, 4, 4, 128, len(chars)
    max_iters, warmup, lr_max, lr_min, eval_every, eval_iters = 2000, 100, 1e-3, 1e-4, 250, 20

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
            self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = self.c_attn(x).split(n_embd, dim=2)
            q, k, v = (z.view(b, t, n_head, c // n_head).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd, bias=False)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(n_embd, bias=False)
            self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
            self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln_1(x))
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(vocab, n_embd)
            self.wpe = nn.Embedding(block, n_embd)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd, bias=False)
            self.lm_head = nn.Linear(n_embd, vocab, bias=False)
            self.wte.weight = self.lm_head.weight
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
            for blk in self.h:
                x = blk(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    torch.manual_seed(1337)
    model = GPT()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr_max, betas=(0.9, 0.99))

    def get_batch(split_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        arr = np.memmap(out / f"{split_name}.bin", dtype=np.uint16, mode="r")
        ix = torch.randint(len(arr) - block, (batch,))
        x = torch.stack([torch.from_numpy(arr[i:i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(arr[i + 1:i + 1 + block].astype(np.int64)) for i in ix])
        return x, y

    def get_lr(it: int) -> float:
        if it < warmup:
            return lr_max * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / (max_iters - warmup)
        return lr_min + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr_max - lr_min)

    best = 1e9
    for it in range(max_iters + 1):
        for group in opt.param_groups:
            group["lr"] = get_lr(it)
        if it % eval_every == 0:
            model.eval()
            losses = {}
            with torch.no_grad():
                for name in ("train", "val"):
                    losses[name] = sum(model(*get_batch(name)).item()
                                       for _ in range(eval_iters)) / eval_iters
            model.train()
            print(json.dumps({"step": it, "val_loss": losses["val"],
                              "elapsed_s": round(time.time() - started, 3)}), flush=True)
            if losses["val"] < best:
                best = losses["val"]
                if it > 0:
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()},
                               out / "ckpt.pt")
        if it == max_iters:
            break
        loss = model(*get_batch("train"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        print(f"iter {it}: loss {loss.item():.4f}", file=sys.stderr)


def _process_age() -> float:
    """Seconds since this process started (so start-up counts, as for lmforge)."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--peer-default-threads", action="store_true",
                        help="let the peer use torch's default threads instead of ours")
    parser.add_argument("--threads", type=int, help="pin both sides (default: lmforge picks)")
    parser.add_argument("--peer-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_worker is not None:
        peer_worker(args.peer_worker, args.text)
        return 0
    if not args.text.is_file():
        raise SystemExit(f"{args.text} not found; pass --text tinyshakespeare.txt")
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    ours, ours_wall, ours_evals, threads = run_ours(args.text, args.threads)
    print(f"# ours ({threads} threads) evals (step, val_loss, elapsed_s): {ours_evals}; "
          f"whole command {ours_wall:.1f}s")
    if args.skip_peer:
        print(f"time_to_val_{TARGET}_s: ours={ours} peer=skipped ratio=-")
        return 0
    peer_threads = None if args.peer_default_threads else threads
    peer, peer_wall, peer_evals = run_peer(args.text, peer_threads)
    print(f"# peer threads: {peer_threads or 'torch default'}")
    print(f"# peer evals (step, val_loss, elapsed_s): {peer_evals}; whole run {peer_wall:.1f}s")
    print(f"# load average {os.getloadavg()[0]:.2f} at end")
    if ours is None:
        print(f"time_to_val_{TARGET}_s: ours=not reached peer={peer:.1f} ratio=-")
        return 1
    print(f"time_to_val_{TARGET}_s: ours={ours:.1f} peer={peer:.1f} ratio={ours / peer:.3f} "
          f"(speed-up {peer / ours:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
