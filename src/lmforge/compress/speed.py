"""Decode speed of the serving engine on the original and the compressed model, side by side.

Both run through `serve.offline.generate` (the engine's scheduler, runner and sampler) at
batch 1 and 8, greedy, `tokens` new tokens per sequence with eos ignored, alternately, best
of three timed runs after a warm-up (the machine is shared; a ratio measured in one process is
what counts). The greedy tokens of the two are compared too: the share of sequences whose
tokens are identical, and the mean share of each sequence's tokens before the first
difference (rounding moves a near-tie, after which the sequences part ways).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

PROMPTS = ("The", "In the beginning", "def main():", "Once upon a time", "import os",
           "A list of", "To be or not", "class Model")


def decode_speed(original: Path, compressed: Path, tokens: int) -> dict[str, Any]:
    from lmforge.model.files import load_model
    from lmforge.model.lora import lora_modules, merge_lora
    from lmforge.model.tokenizer import load_tokenizer
    from lmforge.sources import find_tokenizer

    models = {"original": load_model(original)[0], "compressed": load_model(compressed)[0]}
    if lora_modules(models["original"]):  # a fine-tuned run: the engine runs it merged
        merge_lora(models["original"])
    codec = load_tokenizer(find_tokenizer(compressed / "model.safetensors"))
    prompts = [codec.encode(p) or [0] for p in PROMPTS]
    out: dict[str, Any] = {"tokens": tokens}
    texts: dict[str, list[list[int]]] = {}
    for batch in (1, 8):
        rates: dict[str, list[float]] = {name: [] for name in models}
        for round_ in range(4):
            for name, model in models.items():
                seconds, ids = _generate(model, prompts[:batch], tokens)
                if round_:  # the first round warms up
                    rates[name].append(batch * tokens / seconds)
                texts[name] = ids
        best = {name: max(r) for name, r in rates.items()}
        out[f"batch_{batch}"] = {"original_tok_s": round(best["original"], 1),
                                 "compressed_tok_s": round(best["compressed"], 1),
                                 "speedup": round(best["compressed"] / best["original"], 3)}
    out["greedy_agreement"] = agreement(texts["original"], texts["compressed"])
    return out


def _generate(model: torch.nn.Module, prompts: list[list[int]], tokens: int
              ) -> tuple[float, list[list[int]]]:
    from lmforge.model.sampling import SamplingParams
    from lmforge.serve.offline import generate

    collected: list[list[int]] = [[] for _ in prompts]

    def decode(ids: list[int]) -> str:
        return " ".join(map(str, ids))

    params = SamplingParams(tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    texts = generate(model, decode, prompts, params, max_batch=len(prompts))
    seconds = time.perf_counter() - start
    for i, text in enumerate(texts):
        collected[i] = [int(t) for t in text.split()]
    return seconds, collected


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    identical = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    prefix = []
    for x, y in zip(a, b, strict=True):
        pairs = zip(x, y, strict=False)
        same = next((i for i, (p, q) in enumerate(pairs) if p != q), min(len(x), len(y)))
        prefix.append(same / max(len(x), 1))
    return {"identical_sequences": identical, "mean_prefix_share": sum(prefix) / len(prefix)}
