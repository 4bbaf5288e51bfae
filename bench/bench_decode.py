"""Decode throughput of the serving engine against transformers' `generate()`.

    python bench/bench_decode.py [--threads 1] [--repeats 5] [--new-tokens 256]

Same weights on both sides: a random-init Llama (hidden 128, 4 layers, 4 heads, SwiGLU 512,
vocab 65: the shakespeare-char shape), loaded into transformers' LlamaForCausalLM with
`load_into_hf`. Prompts of 8 tokens, 256 new tokens, greedy, batch 1 and batch 8:

- peer: `model.generate(ids, do_sample=False, use_cache=True, max_new_tokens=256)`;
- ours (engine): B requests submitted to a running `Engine` and read back as text deltas,
  i.e. the whole serving path (queue, the core process, prefill, continuous batching,
  sampling, one message per step back, detokenization, delivery to the consumer thread);
- ours (step): the decode step alone (`Runner.decode` + argmax), what one token costs.

Both sides run alternately `--repeats` times in this process with the same torch thread
count; the best run of each counts (the machine is shared). Greedy tokens of both sides
must be identical. Prints `name: ours=X peer=Y ratio=Z` lines (tokens per second).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lmforge.model.config import ModelConfig
from lmforge.model.hf import load_into_hf
from lmforge.model.llama import Transformer
from lmforge.model.sampling import SamplingParams
from lmforge.serve.config import EngineConfig
from lmforge.serve.engine import Engine
from lmforge.serve.runner import Runner

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65 symbols


def build_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=len(CHARS), dim=128, n_layers=4, n_heads=4, ffn_dim=512,
                      max_seq_len=512)
    return Transformer(cfg).eval()


def decode_text(ids: list[int]) -> str:
    return "".join(CHARS[i] for i in ids)


def run_hf(hf, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    with torch.no_grad():
        start = time.perf_counter()
        out = hf.generate(prompts, do_sample=False, use_cache=True, max_new_tokens=new,
                          pad_token_id=0)  # no eos in the config: always `new` tokens
        seconds = time.perf_counter() - start
    return seconds, out[:, prompts.size(1):].tolist()


def run_engine(engine: Engine, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    requests = [engine.submit(p.tolist(), params) for p in prompts]
    outputs = [engine.wait(r).token_ids for r in requests]
    return time.perf_counter() - start, outputs


def run_steps(runner: Runner, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    """Prefill each row into its slot, then only decode steps with an on-device argmax."""
    b = prompts.size(0)
    tokens = runner.prefill(list(range(b)), prompts.tolist()).argmax(dim=-1)
    positions = torch.full((b,), prompts.size(1))
    steps = [tokens]
    start = time.perf_counter()
    for _ in range(new - 1):
        tokens = runner.decode(tokens, positions, int(positions[0]) + 1).argmax(dim=-1)
        positions += 1
        steps.append(tokens)
    seconds = time.perf_counter() - start
    outputs = torch.stack(steps, dim=1).tolist()
    for slot in range(b):
        runner.free(slot)
    return seconds, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model()
    hf = load_into_hf(model, model.cfg)
    new = args.new_tokens
    print(f"model: {model.num_params():,} params, torch threads {args.threads}, "
          f"{new} new tokens, greedy, prompt 8 tokens; load average "
          f"{os.getloadavg()[0]:.2f} (2-core machine)")
    for b in args.batches:
        prompts = torch.randint(0, len(CHARS), (b, 8), generator=torch.Generator().manual_seed(b))
        engine = Engine(model, decode_text, EngineConfig(max_batch=b, threads=args.threads),
                        name="bench").start()
        runner = Runner(model, b, torch.float32, torch.device("cpu"))
        times = {"hf": [], "engine": [], "step": []}
        outputs = {}
        run_hf(hf, prompts, 8)  # warm-up
        run_engine(engine, prompts, 8)
        for _ in range(args.repeats):
            for name, fn, target in (("hf", run_hf, hf), ("engine", run_engine, engine),
                                     ("step", run_steps, runner)):
                seconds, outputs[name] = fn(target, prompts, new)
                times[name].append(seconds)
        engine.stop()
        same = outputs["hf"] == outputs["engine"] == outputs["step"]
        tps = {k: b * new / min(v) for k, v in times.items()}
        step_ms = {k: min(v) / new * 1e3 for k, v in times.items()}
        spread = {k: statistics.median(v) / min(v) for k, v in times.items()}
        print(f"decode_b{b}_engine: ours={tps['engine']:.0f} peer={tps['hf']:.0f} "
              f"ratio={tps['engine'] / tps['hf']:.2f}  (tokens/s; ms/step ours "
              f"{step_ms['engine']:.3f} peer {step_ms['hf']:.3f})")
        print(f"decode_b{b}_step: ours={tps['step']:.0f} peer={tps['hf']:.0f} "
              f"ratio={tps['step'] / tps['hf']:.2f}  (decode step alone: "
              f"{step_ms['step']:.3f} ms)")
        print(f"  greedy tokens identical to HF: {same}; median/best spread "
              + ", ".join(f"{k} {v:.2f}" for k, v in spread.items()))


if __name__ == "__main__":
    main()
