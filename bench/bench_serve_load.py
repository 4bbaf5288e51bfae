"""The server under load: 1, 4, 16 and 64 concurrent streaming clients.

    python bench/bench_serve_load.py [--dim 128 --layers 4] [--tokens 64] [--device cuda]
                                     [--no-prefix-cache]

Writes a random-init model (default: the shakespeare-char shape, hidden 128, 4 layers) and a
char tokenizer to bench/_work/serve, starts `lmforge serve` on it in its own process (audit
log on, default engine settings with max_batch 64), and drives it with `loadgen` from this
process: each client sends --requests streaming completions of exactly --tokens tokens
(ignore_eos) one after another (at least --min-requests per level, so one client sends
enough to average). Every request has the same prompt, so with the prefix cache on (the
default) each one after the first is prefilled for its last token only; --no-prefix-cache
prefills every prompt whole. The sweep runs --rounds times; each round prints its tokens/s per level
and its own ratios to 1 client (both sides measured minutes apart, on the same server), and
at the end the best round of each level counts (the machine is shared). For every level it
prints requests/s, output tokens/s, time to first token and latency (P50/P99) and errors;
then it stops the server with SIGTERM (graceful shutdown) and counts the audit rows against
the requests sent. The machine's load average is printed before and after: other work on a
2-core machine takes CPU from the 16-client level (which could use both cores) more than
from the 1-client level (which waits on one request at a time).

Lines `name: ours=X peer=Y ratio=Z`: serve_scaling_cN compares the aggregate tokens/s at N
clients (ours) with 1 client (peer) on the same server in the same run (best rounds), with
the spread of the per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.files import save_model_dir
from lmforge.model.llama import Transformer
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.tokenizer.train import save_tokenizer, train_char
from loadgen import run_load, summarize

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "serve"
TEXT = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def write_model(args: argparse.Namespace) -> Path:
    cfg = TokenizerConfig(type="char")
    tokenizer = train_char(cfg, iter([TEXT]))
    save_tokenizer(tokenizer, cfg, WORK / "tokenizer")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True), dim=args.dim,
        n_layers=args.layers, n_heads=args.heads, ffn_dim=4 * args.dim, max_seq_len=512))
    save_model_dir(WORK / "model", model.state_dict(), model.cfg)
    return WORK / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, audit: Path, args: argparse.Namespace
                 ) -> subprocess.Popen:
    audit.unlink(missing_ok=True)
    command = [sys.executable, "-m", "lmforge", "serve", str(model), "--name", "bench",
               "--port", str(port), "--audit", str(audit), "--max-batch", "64",
               "--max-queue", "256", "--device", args.device,
               f"--serve.engine.prefix_cache={str(args.prefix_cache).lower()}"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--min-requests", type=int, default=32, help="requests per level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--device", default="cpu", help="the engine's device: cpu or cuda")
    parser.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                        help="prefill every prompt whole (every request sends the same one)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model = write_model(args)
    port, audit = free_port(), WORK / "audit.sqlite"
    server = start_server(model, port, audit, args)
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"model": "bench", "prompt": "To be, or not to be", "max_tokens": args.tokens,
            "temperature": 0.8, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    sent, summaries, ratios = 0, {}, {n: [] for n in args.clients}
    print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine: 2.0 is full)")
    try:
        asyncio.run(run_load(url, body, 2, 2))  # warm-up
        sent += 4
        for r in range(args.rounds):
            this_round = {}
            for n in args.clients:
                per_client = max(args.requests, -(-args.min_requests // n))
                results, wall = asyncio.run(run_load(url, body, n, per_client))
                sent += len(results)
                s = this_round[n] = summarize(results, wall)
                if n not in summaries or s["tokens_per_s"] > summaries[n]["tokens_per_s"]:
                    summaries[n] = s
            for n, s in this_round.items():
                if 1 in this_round:
                    ratios[n].append(s["tokens_per_s"] / this_round[1]["tokens_per_s"])
            print(f"round {r + 1}: " + "  ".join(
                f"c{n} {s['tokens_per_s']:.0f} tok/s" + (f" (x{ratios[n][-1]:.2f})" if n != 1
                                                         and ratios[n] else "")
                for n, s in this_round.items()), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for n, s in summaries.items():
        print(f"clients={n:3d}: {s['requests_per_s']:7.1f} req/s  "
              f"{s['tokens_per_s']:8.0f} tokens/s  TTFT p50 {s['ttft_p50_ms']:7.1f} ms "
              f"p99 {s['ttft_p99_ms']:7.1f} ms  latency p50 {s['latency_p50_ms']:7.1f} ms "
              f"p99 {s['latency_p99_ms']:7.1f} ms  errors {s['errors']}/{s['requests']}")
    rows = sqlite3.connect(audit).execute(
        "SELECT COUNT(*) FROM requests WHERE route = 'POST /v1/completions'").fetchone()[0]
    print(f"audit rows: {rows} for {sent} requests sent (lost: {sent - rows})")
    base = summaries.get(1)
    for n, s in summaries.items():
        if base and n != 1:
            ratio = s["tokens_per_s"] / base["tokens_per_s"]
            spread = (f"; per round {min(ratios[n]):.2f}-{max(ratios[n]):.2f}, median "
                      f"{statistics.median(ratios[n]):.2f}") if ratios[n] else ""
            print(f"serve_scaling_c{n}: ours={s['tokens_per_s']:.0f} "
                  f"peer={base['tokens_per_s']:.0f} ratio={ratio:.2f}  "
                  f"(tokens/s at {n} clients vs 1 client, same server{spread})")


if __name__ == "__main__":
    main()
