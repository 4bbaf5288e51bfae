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

One request must never fail the others in its batch (issue 10). So `validate` checks a
request's parameters against RANGES before it joins a batch (the HTTP schema checks the same
ranges first), the sampler `clamp`s whatever reaches it into values float32 survives, and a
row whose logits still come out NaN or infinite (a broken model, say) is marked -1 and fails
alone: every token it returns can be fed to the model, whatever the row held.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

MAX_UNIFORM = 1.0 - 1e-6  # well above float32's epsilon (6e-8), see _invert_cdf
# name -> (lowest, highest, lowest excluded): OpenAI's ranges and vLLM's extensions (top_k
# -1 or 0 is off, above the vocabulary is all of it; repetition_penalty as this server had it)
RANGES: dict[str, tuple[float, float, bool]] = {
    "max_tokens": (1, math.inf, False),
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "top_k": (-1, math.inf, False),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "repetition_penalty": (0.0, 10.0, True),
    "logprobs": (0, math.inf, False),
}
INTEGERS = ("max_tokens", "top_k", "logprobs")
# Floors chosen so that a logit as large as 1e30 stays finite in float32 (< 3.4e38) after
# the penalty divides it and the temperature divides it again: 1e30 * 100 * 1e5.
TEMPERATURE_FLOOR = 1e-5  # below it a row is greedy, as vLLM's _SAMPLING_EPS
REPETITION_PENALTY_FLOOR = 1e-2
TOP_P_FLOOR = 1e-6  # a smaller top_p rounds to 0 in float32 and would keep no token
LOGPROB_FLOOR = -9999.0  # what OpenAI reports for a token of no chance; JSON has no -inf


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


def range_problem(value: float, low: float, high: float, low_excluded: bool) -> str | None:
    """What is wrong with `value` for the range, e.g. "must be in [0, 2], got nan"; None
    when it is inside (NaN never is)."""
    inside = (value > low if low_excluded else value >= low) and value <= high
    if inside:
        return None
    if high == math.inf:
        where = f"{'above' if low_excluded else 'at least'} {_number(low)}"
    else:
        where = f"in {'(' if low_excluded else '['}{_number(low)}, {_number(high)}]"
    return f"must be {where}, got {value!r}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def validate(params: SamplingParams) -> None:
    """ValueError naming the first parameter of the wrong type or outside RANGES."""
    for name, (low, high, low_excluded) in RANGES.items():
        value = getattr(params, name)
        if value is None and name == "logprobs":
            continue
        kinds = int if name in INTEGERS else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{name} must be {'an integer' if kinds is int else 'a number'}"
                             f", got {value!r}")
        problem = range_problem(value, low, high, low_excluded)
        if problem is not None:
            raise ValueError(f"{name} {problem}")
    if params.seed is not None and (isinstance(params.seed, bool)
                                    or not isinstance(params.seed, int)):
        raise ValueError(f"seed must be an integer, got {params.seed!r}")


def clamp(params: SamplingParams, vocab: int) -> SamplingParams:
    """The parameters a row is sampled with: each number moved into RANGES (open lower ends
    to the floors above), NaN to the neutral value, a temperature below TEMPERATURE_FLOOR
    to greedy, top_k at or above the vocabulary to off, logprobs to the vocabulary."""
    def within(name: str, neutral: float, floor: float | None = None) -> float:
        value = getattr(params, name)
        low, high, _ = RANGES[name]
        return neutral if value != value else min(max(value, floor or low), high)  # NaN

    temperature = within("temperature", 0.0)
    logprobs = params.logprobs
    return replace(
        params,
        temperature=temperature if temperature >= TEMPERATURE_FLOOR else 0.0,
        top_k=params.top_k if 0 < params.top_k < vocab else 0,
        top_p=within("top_p", 1.0, TOP_P_FLOOR),
        repetition_penalty=within("repetition_penalty", 1.0, REPETITION_PENALTY_FLOOR),
        frequency_penalty=within("frequency_penalty", 0.0),
        presence_penalty=within("presence_penalty", 0.0),
        logprobs=None if logprobs is None else min(max(logprobs, 0), vocab))


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class Sampler:
    """Per-slot sampling state for `slots` cache slots; `add` a request's parameters when
    it takes a slot (they are `clamp`ed), `sample` logits whose row i belongs to slot i (or
    to `slots[i]`)."""

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
        params = [clamp(p, self.vocab) for p in params]
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
        (None for rows that did not). Rows of idle slots get some token (to be ignored). A
        row that cannot be sampled (NaN or infinite logits) gets -1."""
        b = logits.size(0)
        rows = slice(0, b) if slots is None else torch.tensor(slots, device=self.device)
        raw = logits.float()
        work = self._penalize(raw, rows) if self.penalized else raw
        best, tokens = work.max(dim=-1)
        ok = best.isfinite()  # False with a NaN or +inf anywhere in the row, or all -inf
        slots = list(range(b)) if slots is None else slots
        if self.sampled:
            drawn, drawn_ok = self._draw(work, rows, slots)
            greedy = self.greedy[rows]
            tokens = torch.where(greedy, tokens, drawn)
            ok &= greedy | drawn_ok
        if self.penalized:
            index = (torch.arange(b, device=self.device) if isinstance(rows, slice) else rows,
                     tokens)
            self.counts.index_put_(index, torch.ones(b, device=self.device), accumulate=True)
            self.seen.index_put_(index, torch.ones(b, dtype=torch.bool, device=self.device))
        logprobs = self._logprobs(raw, tokens, slots) if self.logprobs else None
        return torch.where(ok, tokens, -1), logprobs

    def _penalize(self, logits: Tensor, rows: slice | Tensor) -> Tensor:
        rep, freq, pres = self.penalty[rows].unbind(1)
        counts, seen = self.counts[rows], self.seen[rows]
        rep = rep[:, None]
        out = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
        return out - freq[:, None] * counts - pres[:, None] * (counts > 0)

    def _draw(self, logits: Tensor, rows: slice | Tensor, slots) -> tuple[Tensor, Tensor]:
        """Inverse-CDF sampling with temperature, top-k and top-p per row; the tokens and
        whether each row had any probability mass to draw from."""
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
        picked, ok = _invert_cdf(probs * keep, uniform)
        return order.gather(1, picked[:, None])[:, 0], ok

    def _logprobs(self, raw: Tensor, tokens: Tensor, slots: list[int]
                  ) -> list[TokenLogprob | None]:
        wanted = [(i, p.logprobs) for i, p in enumerate(self.params[s] for s in slots)
                  if p is not None and p.logprobs is not None]
        out: list[TokenLogprob | None] = [None] * len(slots)
        if not wanted:
            return out
        index = torch.tensor([i for i, _ in wanted])
        logprobs = raw[index].log_softmax(dim=-1).clamp(min=LOGPROB_FLOOR)
        chosen_ids = tokens[index]
        chosen = logprobs.gather(1, chosen_ids[:, None])[:, 0].tolist()
        width = min(max(k for _, k in wanted), raw.size(-1))
        top_values, top_ids = logprobs.topk(width, dim=-1) if width else (None, None)
        for j, ((i, k), token) in enumerate(zip(wanted, chosen_ids.tolist(), strict=True)):
            top = list(zip(top_ids[j, :k].tolist(), top_values[j, :k].tolist(),
                           strict=True)) if k else []
            out[i] = TokenLogprob(token, chosen[j], top)
        return out


def _invert_cdf(probs: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the first token whose cumulative mass exceeds u * total, and whether the
    row had mass (a NaN or all-zero row does not; its index is kept in range anyway). With u
    below MAX_UNIFORM the target stays below the total even after float32 rounding, so the
    index always lands on a token with mass (a filtered-out token is never picked)."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    index = torch.searchsorted(cdf, uniform[:, None] * total, right=True)[:, 0]
    return index.clamp(max=probs.size(-1) - 1), total[:, 0] > 0
