"""Choosing the next token for every row of a batch, each row with its own parameters.

Order, as in transformers and vLLM: penalties on the raw logits (repetition over prompt and
output, frequency and presence over the output), then temperature, top-k, top-p. A row
with temperature 0 is greedy. Sampling inverts the CDF at a uniform number drawn from the
request's own `random.Random(seed)`, so a seeded request gets the same tokens whatever
else shares its batch. Logprobs are the model's own (log-softmax of the raw logits), as the
OpenAI API reports them.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import torch
from torch import Tensor

MAX_UNIFORM = 1.0 - 1e-6  # well above float32's epsilon (6e-8), see _invert_cdf

@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: and the top k

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0)

    @property
    def filtered(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SamplerState:
    """What the sampler keeps for one sequence: its random stream and its slot."""

    params: SamplingParams
    slot: int
    rng: random.Random

    @classmethod
    def create(cls, params: SamplingParams, slot: int) -> SamplerState:
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        return cls(params, slot, random.Random(seed))


class Sampler:
    """Samples for a batch. Penalty counts live per slot on the device, made on first use."""

    def __init__(self, slots: int, vocab: int, device: torch.device) -> None:
        self.slots, self.vocab, self.device = slots, vocab, device
        self.counts: Tensor | None = None  # (slots, V) output-token counts
        self.seen: Tensor | None = None  # (slots, V) prompt or output tokens

    def start(self, state: SamplerState, prompt: list[int]) -> None:
        """Reset the slot's penalty counts for a new sequence."""
        if not state.params.penalized:
            return
        if self.counts is None:
            self.counts = torch.zeros(self.slots, self.vocab, device=self.device)
            self.seen = torch.zeros(self.slots, self.vocab, dtype=torch.bool, device=self.device)
        self.counts[state.slot].zero_()
        self.seen[state.slot].zero_()
        self.seen[state.slot, torch.tensor(prompt, device=self.device)] = True

    def sample(self, logits: Tensor, rows: list[int],
               states: list[SamplerState]) -> tuple[list[int], list[TokenLogprob | None]]:
        """Next token of each state; `rows[i]` is the row of `logits` for `states[i]`."""
        params = [s.params for s in states]
        raw = logits if len(rows) == logits.size(0) else \
            logits.index_select(0, torch.tensor(rows, device=logits.device))
        if raw.dtype != torch.float32:
            raw = raw.float()
        work = self._penalize(raw, states)
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if not sampled:
            tokens = work.argmax(dim=-1)
        elif len(sampled) == len(params):
            tokens = self._draw(work, states)
        else:
            tokens = work.argmax(dim=-1)
            pick = torch.tensor(sampled, device=logits.device)
            tokens[pick] = self._draw(work.index_select(0, pick), [states[i] for i in sampled])
        token_list = tokens.tolist()
        return token_list, self._logprobs(raw, token_list, params)

    def _penalize(self, logits: Tensor, states: list[SamplerState]) -> Tensor:
        picked = [i for i, s in enumerate(states) if s.params.penalized]
        if not picked:
            return logits
        rows = torch.tensor(picked, device=logits.device)
        slots = torch.tensor([states[i].slot for i in picked], device=logits.device)
        p = [states[i].params for i in picked]
        rep = torch.tensor([x.repetition_penalty for x in p], device=logits.device)[:, None]
        freq = torch.tensor([x.frequency_penalty for x in p], device=logits.device)[:, None]
        pres = torch.tensor([x.presence_penalty for x in p], device=logits.device)[:, None]
        part = logits.index_select(0, rows)
        counts, seen = self.counts.index_select(0, slots), self.seen.index_select(0, slots)
        part = torch.where(seen, torch.where(part > 0, part / rep, part * rep), part)
        part = part - freq * counts - pres * (counts > 0)
        out = logits.clone()
        out[rows] = part
        return out

    def _draw(self, logits: Tensor, states: list[SamplerState]) -> Tensor:
        """Inverse-CDF sampling with temperature, top-k and top-p per row."""
        temps = {s.params.temperature for s in states}
        if len(temps) == 1:
            scaled = logits / temps.pop()
        else:
            scaled = logits / torch.tensor([s.params.temperature for s in states],
                                           device=logits.device)[:, None]
        uniform = torch.tensor([min(s.rng.random(), MAX_UNIFORM) for s in states],
                               device=logits.device)
        if not any(s.params.filtered for s in states):
            return _invert_cdf(scaled.softmax(dim=-1), uniform)
        values, order = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(logits.size(-1), device=logits.device)
        top_k = torch.tensor([s.params.top_k or logits.size(-1) for s in states],
                             device=logits.device)
        top_p = torch.tensor([s.params.top_p for s in states], device=logits.device)
        probs = values.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        keep = (rank[None, :] < top_k[:, None]) & (mass_before < top_p[:, None])
        picked = _invert_cdf(probs * keep, uniform)
        return order.gather(1, picked[:, None])[:, 0]

    def _logprobs(self, raw: Tensor, tokens: list[int],
                  params: list[SamplingParams]) -> list[TokenLogprob | None]:
        wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
        out: list[TokenLogprob | None] = [None] * len(params)
        if not wanted:
            return out
        logprobs = raw[wanted].log_softmax(dim=-1)
        width = min(max(params[i].logprobs for i in wanted), raw.size(-1))
        chosen = logprobs.gather(1, torch.tensor([[tokens[i]] for i in wanted],
                                                 device=raw.device))[:, 0].tolist()
        top_values, top_ids = (logprobs.topk(width, dim=-1) if width else (None, None))
        for j, i in enumerate(wanted):
            k = params[i].logprobs
            top = list(zip(top_ids[j, :k].tolist(), top_values[j, :k].tolist(),
                           strict=True)) if k else []
            out[i] = TokenLogprob(tokens[i], chosen[j], top)
        return out

    def observe(self, states: list[SamplerState], tokens: list[int]) -> None:
        """Count the new tokens of penalized sequences."""
        picked = [(s.slot, t) for s, t in zip(states, tokens, strict=True) if s.params.penalized]
        if not picked:
            return
        slots = torch.tensor([s for s, _ in picked], device=self.device)
        ids = torch.tensor([t for _, t in picked], device=self.device)
        self.counts.index_put_((slots, ids), torch.ones(len(picked), device=self.device),
                               accumulate=True)
        self.seen[slots, ids] = True


def _invert_cdf(probs: Tensor, uniform: Tensor) -> Tensor:
    """Index of the first token whose cumulative mass exceeds u * total. With u below
    MAX_UNIFORM the target stays below the total even after float32 rounding, so the
    index always lands on a token with mass (a filtered-out token is never picked)."""
    cdf = probs.cumsum(dim=-1)
    return torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True)[:, 0]
