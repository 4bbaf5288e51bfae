"""Sampling with a KV cache: temperature, top-k, top-p (nucleus), seeded.

The prompt is run once (prefill) and each new token costs one position of attention over
the cache. When the context fills up, the cache is rebuilt from the last half of the
window and decoding continues.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from lmforge.model.kv_cache import KVCache
from lmforge.model.llama import Transformer


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set logits outside the top-k and outside the smallest set with mass >= top_p to -inf."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> Tensor:
    """One token id per row of (B, V) logits; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def stream(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 0.8,
           top_k: int | None = 50, top_p: float | None = None, seed: int | None = None,
           eos_id: int | None = None) -> Iterator[int]:
    """Yield new token ids one at a time (stops early at eos_id)."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    model.eval()
    cfg = model.cfg
    device = model.rope_cos.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    dtype = model.model.embed_tokens.weight.dtype
    cache = KVCache(cfg, 1, device=device, dtype=dtype)
    context = list(prompt[-cfg.max_seq_len:])
    logits = model(torch.tensor([context], device=device), cache=cache, last_only=True).logits
    for _ in range(max_new_tokens):
        token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        token_id = int(token.item())
        yield token_id
        if token_id == eos_id:
            return
        context.append(token_id)
        if cache.length >= cfg.max_seq_len:
            cache.reset()
            keep = context[-(cfg.max_seq_len // 2):]
            logits = model(torch.tensor([keep], device=device), cache=cache, last_only=True).logits
        else:
            logits = model(token.view(1, 1), cache=cache, last_only=True).logits


def generate(model: Transformer, prompt: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    """The new token ids as a list (see `stream` for the options)."""
    return list(stream(model, prompt, max_new_tokens, **kwargs))
