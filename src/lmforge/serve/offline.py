"""Offline generation: the serving engine's core driven in this process, for batch jobs.

What vLLM's `LLM.generate` is to its server: the same scheduler, continuous batching,
runner and sampler as `lmforge serve`, and the same text stream with its stop strings, but
no core process and no pipe, since a batch job (evaluation) has no HTTP side to keep
responsive. Every prompt is queued at once; `max_batch` sequences decode together and a
finished one's slot goes to the next prompt at the next step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmforge.model.llama import Transformer
from lmforge.model.prompt_tuning import prompt_prefix
from lmforge.model.sampling import SamplingParams
from lmforge.serve.config import EngineConfig
from lmforge.serve.core import EngineCore
from lmforge.serve.textstream import TextStream


def generate(model: Transformer, decode: Callable[[list[int]], str],
             prompts: Sequence[list[int]], params: SamplingParams, *, max_batch: int,
             stop_token_ids: frozenset[int] = frozenset(),
             on_done: Callable[[int], None] | None = None) -> list[str]:
    """Each prompt's completion text, cut before the first of `params.stop` (prompt tuning's
    virtual tokens go first, as the engine puts them)."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    cfg = EngineConfig(max_batch=max_batch, prefix_cache=False, device=str(device))
    virtual = prompt_prefix(model)
    texts = [""] * len(prompts)
    with torch.inference_mode():
        core = EngineCore(model, cfg, dtype, stop_token_ids)
        streams = [TextStream(decode, list(p), params.stop) for p in prompts]
        for rid, prompt in enumerate(prompts):
            core.add(rid, virtual + list(prompt), params)
        while core.busy:
            for rid, token, _, finish, error in core.step():
                if error is not None:
                    raise RuntimeError(f"generation failed: {error}")
                stream = streams[rid]
                if finish != "stop":
                    texts[rid] += stream.push(token)
                if stream.stopped:  # a stop string: the rest is not wanted
                    core.abort(rid)
                elif finish is not None:
                    texts[rid] += stream.finish()
                if (stream.stopped or finish is not None) and on_done is not None:
                    on_done(1)
    return texts
