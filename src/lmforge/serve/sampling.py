"""Choosing the next token for every row of a batch, each row with its own parameters.

Order, as in transformers and vLLM: penalties on the raw logits (repetition over prompt and
output, frequency and presence over the output), then temperature, top-k, top-p. A row
with temperature 0 is greedy. Sampling inverts the CDF at a uniform number drawn from the
request's own `random.Random(seed)`, so a seeded request gets the same tokens whatever
else shares its batch. Logprobs are the model's own (log-softmax of the raw logits), as the
OpenAI API reports them.

Every parameter lives per cache slot in a tensor set once when a request starts, so a step
costs the same few tensor ops whatever the mix of requests in the batch; the work that only
some requests need (penalties, top-k/top-p, logprobs) runs only while such a request is in
the batch.
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


class Sampler:
    """Per-slot sampling state for `slots` cache slots; `add` a request's parameters when
    it takes a slot, `sample` logits whose row i belongs to slot i (or to `slots[i]`)."""

    def __init__(self, slots: int, vocab: int, device: torch.device) -> None:
        self.slots, self.vocab, self.device = slots, vocab, device
        self.params: list[SamplingParams | None] = [None] * slots
        self.rngs: list[random.Random | None] = [None] * slots
        self.temperature = torch.ones(slots, device=device)  # 1 for greedy rows: no 0/0
        self.greedy = torch.ones(slots, dtype=torch.bool, device=device)
        self.top_k = torch.full((slots,), vocab, device=device)
        self.top_p = torch.ones(slots, device=device)
        self.penalty = torch.tensor([[1.0, 0.0, 0.0]], device=device).repeat(slots, 1)
        self.counts: Tensor | None = None  # (slots, V) output-token counts
        self.seen: Tensor | None = None  # (slots, V) prompt or output tokens
        self.sampled = self.filtered = self.penalized = self.logprobs = 0  # live slots that ...

    def add(self, slots: list[int], params: list[SamplingParams],
            prompts: list[list[int]]) -> None:
        """Requests start in `slots` (after their prompts)."""
        for slot, p in zip(slots, params, strict=True):
            self.remove(slot)
            self.params[slot] = p
            self.rngs[slot] = random.Random(
                p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little"))
            self._count(p, +1)
        index = torch.tensor(slots, device=self.device)
        self.greedy[index] = torch.tensor([p.greedy for p in params], device=self.device)
        self.temperature[index] = torch.tensor([1.0 if p.greedy else p.temperature
                                                for p in params], device=self.device)
        self.top_k[index] = torch.tensor([p.top_k or self.vocab for p in params],
                                         device=self.device)
        self.top_p[index] = torch.tensor([p.top_p for p in params], device=self.device)
        self.penalty[index] = torch.tensor(
            [[p.repetition_penalty, p.frequency_penalty, p.presence_penalty] for p in params],
            device=self.device)
        for slot, p, prompt in zip(slots, params, prompts, strict=True):
            if p.penalized:
                self._reset_counts(slot, prompt)

    def _reset_counts(self, slot: int, prompt: list[int]) -> None:
        if self.counts is None:
            self.counts = torch.zeros(self.slots, self.vocab, device=self.device)
            self.seen = torch.zeros(self.slots, self.vocab, dtype=torch.bool,
                                    device=self.device)
        self.counts[slot].zero_()
        self.seen[slot].zero_()
        if prompt:
            self.seen[slot, torch.tensor(prompt, device=self.device)] = True

    def remove(self, slot: int) -> None:
        """The slot's request is over."""
        params = self.params[slot]
        if params is not None:
            self._count(params, -1)
            self.params[slot] = self.rngs[slot] = None
            self.greedy[slot] = True

    def _count(self, params: SamplingParams, step: int) -> None:
        self.sampled += step * (not params.greedy)
        self.filtered += step * (not params.greedy and params.filtered)
        self.penalized += step * params.penalized
        self.logprobs += step * (params.logprobs is not None)

    def sample(self, logits: Tensor, slots: list[int] | None = None
               ) -> tuple[Tensor, list[TokenLogprob | None] | None]:
        """The next token of each row, (B,), and its logprobs when any row asked for them
        (None for rows that did not). Rows of idle slots get some token (to be ignored)."""
        b = logits.size(0)
        rows = slice(0, b) if slots is None else torch.tensor(slots, device=self.device)
        raw = logits.float()
        work = self._penalize(raw, rows) if self.penalized else raw
        tokens = work.argmax(dim=-1)
        slots = list(range(b)) if slots is None else slots
        if self.sampled:
            tokens = torch.where(self.greedy[rows], tokens, self._draw(work, rows, slots))
        if self.penalized:
            index = (torch.arange(b, device=self.device) if isinstance(rows, slice) else rows,
                     tokens)
            self.counts.index_put_(index, torch.ones(b, device=self.device), accumulate=True)
            self.seen.index_put_(index, torch.ones(b, dtype=torch.bool, device=self.device))
        if not self.logprobs:
            return tokens, None
        return tokens, self._logprobs(raw, tokens, slots)

    def _penalize(self, logits: Tensor, rows: slice | Tensor) -> Tensor:
        rep, freq, pres = self.penalty[rows].unbind(1)
        counts, seen = self.counts[rows], self.seen[rows]
        rep = rep[:, None]
        out = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
        return out - freq[:, None] * counts - pres[:, None] * (counts > 0)

    def _draw(self, logits: Tensor, rows: slice | Tensor, slots) -> Tensor:
        """Inverse-CDF sampling with temperature, top-k and top-p per row."""
        uniform = torch.tensor([min(rng.random(), MAX_UNIFORM) if rng is not None else 0.5
                                for rng in (self.rngs[s] for s in slots)], device=self.device)
        scaled = logits / self.temperature[rows, None]
        if not self.filtered:
            return _invert_cdf(scaled.softmax(dim=-1), uniform)
        values, order = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(logits.size(-1), device=logits.device)
        probs = values.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        keep = (rank[None, :] < self.top_k[rows, None]) & (mass_before < self.top_p[rows, None])
        picked = _invert_cdf(probs * keep, uniform)
        return order.gather(1, picked[:, None])[:, 0]

    def _logprobs(self, raw: Tensor, tokens: Tensor, slots: list[int]
                  ) -> list[TokenLogprob | None]:
        wanted = [(i, p.logprobs) for i, p in enumerate(self.params[s] for s in slots)
                  if p is not None and p.logprobs is not None]
        out: list[TokenLogprob | None] = [None] * len(slots)
        if not wanted:
            return out
        index = torch.tensor([i for i, _ in wanted])
        logprobs = raw[index].log_softmax(dim=-1)
        chosen_ids = tokens[index]
        chosen = logprobs.gather(1, chosen_ids[:, None])[:, 0].tolist()
        width = min(max(k for _, k in wanted), raw.size(-1))
        top_values, top_ids = logprobs.topk(width, dim=-1) if width else (None, None)
        for j, ((i, k), token) in enumerate(zip(wanted, chosen_ids.tolist(), strict=True)):
            top = list(zip(top_ids[j, :k].tolist(), top_values[j, :k].tolist(),
                           strict=True)) if k else []
            out[i] = TokenLogprob(token, chosen[j], top)
        return out


def _invert_cdf(probs: Tensor, uniform: Tensor) -> Tensor:
    """Index of the first token whose cumulative mass exceeds u * total. With u below
    MAX_UNIFORM the target stays below the total even after float32 rounding, so the
    index always lands on a token with mass (a filtered-out token is never picked)."""
    cdf = probs.cumsum(dim=-1)
    return torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True)[:, 0]
