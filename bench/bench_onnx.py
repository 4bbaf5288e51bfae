"""Single-sequence decode latency: the ONNX export in ONNX Runtime against torch eager.

    python bench/bench_onnx.py [--threads 1] [--repeats 5] [--new-tokens 128] [--preset 25m]

Same weights on both sides: a random-init preset (25m: dim 512, 8 layers, 8 heads over 4 KV
heads, SwiGLU 1408, vocab 8192), traced by `lmforge.export.onnx.trace` and parity-checked as
`lmforge export --format onnx` checks it. A prompt of 32 tokens, then greedy decoding:

- peer: torch eager, the model with its preallocated KVCache, one `model(token, cache=...,
  last_only=True)` and an argmax per token (what `lmforge generate` runs);
- ours (onnx): `OnnxDecoder.step` (ONNX Runtime CPU, the cache fed back as numpy arrays)
  and an argmax per token (what `lmforge generate --backend onnx` runs);
- ours (onnx-int8): the same with ONNX Runtime's dynamic int8 quantization of the graph.

Both sides run alternately `--repeats` times in this process with the same thread count;
the best run of each counts (the machine is shared). Greedy tokens of fp32 ONNX and torch
must be identical. Prints the parity figures, a table of ms/token and
`name: ours=X peer=Y ratio=Z` lines (ms per decoded token; ratio < 1: ours is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.export.onnx import check_parity, quiet, trace
from lmforge.export.onnx_runner import OnnxDecoder
from lmforge.model.config import preset_config
from lmforge.model.kv_cache import KVCache
from lmforge.model.llama import Transformer

PROMPT = 32


@torch.no_grad()
def run_torch(model: Transformer, prompt: list[int], new: int) -> tuple[float, list[int]]:
    cache = KVCache(model.cfg, 1, max_len=len(prompt) + new)
    token = model(torch.tensor([prompt]), cache=cache, last_only=True).logits[0, -1].argmax()
    tokens = [int(token)]
    start = time.perf_counter()
    for _ in range(new - 1):
        token = model(token.view(1, 1), cache=cache, last_only=True).logits[0, -1].argmax()
        tokens.append(int(token))
    return (time.perf_counter() - start) / (new - 1), tokens


def run_onnx(decoder: OnnxDecoder, prompt: list[int], new: int) -> tuple[float, list[int]]:
    logits, past = decoder.step(np.array([prompt]), decoder.empty_past(1))
    tokens = [int(logits[0, -1].argmax())]
    start = time.perf_counter()
    for _ in range(new - 1):
        logits, past = decoder.step(np.array([[tokens[-1]]]), past)
        tokens.append(int(logits[0, -1].argmax()))
    return (time.perf_counter() - start) / (new - 1), tokens


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads, both sides")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--preset", default="25m")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(preset_config(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        graph, int8_graph = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        started = time.perf_counter()
        trace(model, graph)
        export_s = time.perf_counter() - started
        with quiet():
            quantize_dynamic(graph, int8_graph, weight_type=QuantType.QInt8)
        decoders = {"onnx": OnnxDecoder(graph, args.threads),
                    "onnx-int8": OnnxDecoder(int8_graph, args.threads)}
        parity = check_parity(model, decoders["onnx"])
        sizes = {"onnx": graph.stat().st_size, "onnx-int8": int8_graph.stat().st_size}
        prompt = torch.randint(0, model.cfg.vocab, (PROMPT,),
                               generator=torch.Generator().manual_seed(1)).tolist()
        new = args.new_tokens
        print(f"model: {args.preset}, {model.num_params():,} params, threads {args.threads}, "
              f"prompt {PROMPT} tokens, {new} new tokens greedy; export {export_s:.1f}s; "
              f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
        print(f"parity (fp32, batch {parity['batch']}, {parity['prompt_tokens']}-token prefill "
              f"+ {parity['decode_steps']} decode steps): max |dlogit| prefill "
              f"{parity['max_abs_dlogit_prefill']:.2e}, decode "
              f"{parity['max_abs_dlogit_decode']:.2e} (logits up to "
              f"{parity['max_abs_logit']:.2f}; tolerance {parity['tolerance']:g})")
        run_torch(model, prompt, 8)  # warm-up
        for decoder in decoders.values():
            run_onnx(decoder, prompt, 8)
        times: dict[str, list[float]] = {"torch": [], "onnx": [], "onnx-int8": []}
        tokens: dict[str, list[int]] = {}
        for _ in range(args.repeats):
            seconds, tokens["torch"] = run_torch(model, prompt, new)
            times["torch"].append(seconds)
            for name, decoder in decoders.items():
                seconds, tokens[name] = run_onnx(decoder, prompt, new)
                times[name].append(seconds)
    best = {k: min(v) * 1e3 for k, v in times.items()}
    spread = {k: statistics.median(v) / min(v) for k, v in times.items()}
    print(f"{'backend':<11} {'ms/token':>9} {'median/best':>12} {'graph MB':>9}")
    for name in times:
        size = f"{sizes[name] / 1e6:9.1f}" if name in sizes else f"{'-':>9}"
        print(f"{name:<11} {best[name]:9.3f} {spread[name]:12.2f} {size}")
    for name in ("onnx", "onnx-int8"):
        print(f"decode_b1_{name.replace('-', '_')}: ours={best[name]:.3f} "
              f"peer={best['torch']:.3f} ratio={best[name] / best['torch']:.2f}  "
              "(ms/token vs torch eager)")
    agree = sum(a == b for a, b in zip(tokens["onnx-int8"], tokens["torch"], strict=True))
    print(f"  greedy tokens identical, onnx vs torch: {tokens['onnx'] == tokens['torch']}; "
          f"int8 agrees on {agree}/{new}")


if __name__ == "__main__":
    main()
