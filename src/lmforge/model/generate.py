"""Generation with a KV cache, drawing each token with the server's sampler.

The prompt is run once (prefill) and each new token costs one position of attention over
the cache. Tokens are chosen by `Sampler` (model/sampling.py), the one the server batches
with, so `lmforge generate` and the API give a seeded request the same tokens. Generation
ends at a stop token (eos, the chat template's end-of-turn) or at the token limit; when the
context fills up, the cache is rebuilt from the last half of the window and decoding goes on.
A prompt-tuned model's virtual tokens go in front of the prompt (and stay there).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch

from lmforge.model.kv_cache import KVCache
from lmforge.model.llama import Transformer
from lmforge.model.prompt_tuning import prompt_prefix
from lmforge.model.sampling import Sampler, SamplingParams


@torch.no_grad()
def stream(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 0.8,
           top_k: int | None = 50, top_p: float | None = None, seed: int | None = None,
           eos_id: int | None = None, stop_ids: Collection[int] = ()) -> Iterator[int]:
    """Yield new token ids one at a time; the stop token that ends it is yielded last."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    model.eval()
    cfg = model.cfg
    device = model.rope_cos.device
    stops = {*stop_ids, *(() if eos_id is None else (eos_id,))}
    sampler = Sampler(1, cfg.vocab, device)
    params = SamplingParams(max_new_tokens, temperature=temperature, top_k=top_k or 0,
                            top_p=1.0 if top_p is None else top_p, seed=seed)
    sampler.add([0], [params], [prompt])
    cache = KVCache(cfg, 1, device=device, dtype=model.model.norm.weight.dtype)
    prefix = prompt_prefix(model)
    room = cfg.max_seq_len - len(prefix)
    context = list(prompt[-room:])
    logits = model(torch.tensor([prefix + context], device=device), cache=cache,
                   last_only=True).logits
    for _ in range(max_new_tokens):
        tokens, _ = sampler.sample(logits[:, -1])
        token_id = int(tokens[0])
        if token_id < 0:
            raise RuntimeError("the model's logits are not finite; the weights are broken")
        yield token_id
        if token_id in stops:
            return
        context.append(token_id)
        if cache.length >= cfg.max_seq_len:
            cache.reset()
            keep = prefix + context[-(room // 2):]
            logits = model(torch.tensor([keep], device=device), cache=cache, last_only=True).logits
        else:
            logits = model(tokens.view(1, 1), cache=cache, last_only=True).logits


def generate(model: Transformer, prompt: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    """The new token ids as a list (see `stream` for the options)."""
    return list(stream(model, prompt, max_new_tokens, **kwargs))
