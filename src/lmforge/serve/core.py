"""The engine core: prefill, decode and sampling for every request, in a process of its own.

    server process (Engine)                               core process (this module)
    submit  ── ("add", id, prompt ids, params, adapter, prompt logprobs) ▶  EngineCore.add
    abort   ── ("abort", id) ──────────────────────────▶  EngineCore.abort
    stop    ── ("stop",) ──────────────────────────────▶  finish everything, then exit
            ◀─ ("step", [(id, token, logprob, finish, error), ...], stats,
                {id: prompt logprobs}) ── each step

Why a process (as vLLM v1 runs its EngineCore): the forward pass and the HTTP side are both
Python, and in one process they take turns on one interpreter lock, so every token handed
to the event loop stalls the next step and every chunk sent stalls the engine. Here the core
has a CPU core to itself and sends one message per step carrying every request's new token;
turning tokens into text, stop strings and delivery to clients stay with the frontend.

A step: drop cancelled requests (done as their messages arrive), admit waiting requests in
arrival order while a slot is free and the prefill budget lasts, give each the keys of the
longest start of its prompt that some slot holds (`prefix`), then run one forward pass
that both prefills the rest of the admitted prompts (their first token: time to first
token) and decodes one token for every running sequence, as vLLM v1 mixes prefill and
decode in a step, and sample the whole batch at once. The core ends a request at
`max_tokens`, on a stop token (eos, `<|end|>`) or when the context is full; stop strings are
found by the frontend, which then aborts the request here.

A request may name a LoRA adapter (an index into the runner's, 0 for the base): its rows get
that adapter's update in the shared pass, and it reuses only prefixes cached under the same
adapter (the keys differ).

A request may ask for its prompt's logprobs (echo; see `prompt_logprobs`): its prefill keeps
the hidden states of its own rows, scored after the pass and sent in the message of its first
token. It takes no prefix from the cache, since a reused position is never run and so could
not be scored.

A request fails alone, never its batch: one that cannot run (a prompt out of the vocabulary
or the context, sampling parameters out of range) is refused when it is added; a row whose
logits cannot be sampled fails its request only (the sampler keeps every token in range);
and if a forward pass raises, it is run again in parts, the decode rows and each admitted
prompt on its own, so only the part that fails again fails.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection
from typing import Any

import torch

from lmforge.model.llama import Transformer
from lmforge.model.sampling import Sampler, SamplingParams, TokenLogprob, validate
from lmforge.serve.adapters import ServedAdapter
from lmforge.serve.config import EngineConfig
from lmforge.serve.prefix import longest_prefix
from lmforge.serve.prompt_logprobs import score
from lmforge.serve.runner import Decode, Runner
from lmforge.serve.scheduler import Scheduler

# (request id, token id, logprob or None, finish reason or None, error or None)
Output = tuple[int, int, TokenLogprob | None, str | None, str | None]
# running, waiting, tokens made in the step, prompt tokens admitted, of them taken from the cache
Stats = tuple[int, int, int, int, int]
PACK_TOKENS = 1024  # prompt tokens prefilled in one forward (attention is quadratic in it)


class CoreRequest:
    __slots__ = ("adapter", "cached", "generated", "id", "ids", "params", "position", "prompt",
                 "prompt_logprobs", "scored_from", "slot")

    def __init__(self, rid: int, prompt: list[int], params: SamplingParams,
                 adapter: int = 0, prompt_logprobs: int | None = None,
                 scored_from: int = 1) -> None:
        self.id, self.prompt, self.params, self.adapter = rid, prompt, params, adapter
        self.prompt_logprobs = prompt_logprobs  # None: not scored; k: each token and top k
        self.scored_from = scored_from  # the first prompt token scored
        self.slot = -1
        self.position = 0  # tokens in the cache; the next input token goes here
        self.generated = 0
        self.ids = list(prompt)  # the prompt, then every token made
        self.cached = 0  # first prompt positions taken from another slot's cache

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)


class EngineCore:
    def __init__(self, model: Transformer, cfg: EngineConfig, dtype: torch.dtype,
                 stop_token_ids: frozenset[int], adapters: list[ServedAdapter] | tuple = ()
                 ) -> None:
        device = torch.device(cfg.device)
        self.device = device
        self.stop_token_ids = stop_token_ids
        self.runner = Runner(model, cfg.max_batch, dtype, device, adapters,
                             kv_int8=cfg.kv_cache_dtype == "int8")
        self.sampler = Sampler(cfg.max_batch, model.cfg.vocab, device)
        self.scheduler: Scheduler[CoreRequest] = Scheduler(cfg.max_batch,
                                                           cfg.max_prefill_tokens)
        self.requests: dict[int, CoreRequest] = {}
        self.next_tokens = torch.zeros(cfg.max_batch, dtype=torch.long, device=device)
        self.prefix_cache = cfg.prefix_cache
        self.left: list[list[int]] = [[] for _ in range(cfg.max_batch)]  # see _release
        self.left_adapter = [0] * cfg.max_batch  # the adapter those keys were made with
        self.admitted = [0, 0]  # prompt tokens admitted since the last stats, and reused
        self.refused: list[Output] = []  # requests that cannot run, told at the next step
        self.prompt_logprobs: dict[int, list[TokenLogprob]] = {}  # scored, not yet sent

    @property
    def busy(self) -> bool:
        return bool(self.requests or self.refused)

    def stats(self, tokens: int = 0) -> Stats:
        """The step's figures for the frontend (each admitted prompt counted once)."""
        (prompt, cached), self.admitted = self.admitted, [0, 0]
        return len(self.scheduler.running), self.scheduler.waiting, tokens, prompt, cached

    def add(self, rid: int, prompt: list[int], params: SamplingParams, adapter: int = 0,
            prompt_logprobs: int | None = None) -> None:
        """Queue a request, or refuse it (an error output at the next step) when it cannot
        run: checked here, it never reaches a batch. `prompt_logprobs` k: also score the
        prompt, each token with the top k there (see `take_prompt_logprobs`)."""
        try:
            self._check(rid, prompt, params)
            if type(adapter) is not int or not 0 <= adapter < len(self.runner.adapters):
                raise ValueError(f"adapter {adapter!r} is not served")
            if prompt_logprobs is not None and (type(prompt_logprobs) is not int
                                                or prompt_logprobs < 0):
                raise ValueError(f"prompt_logprobs must be an integer >= 0, got "
                                 f"{prompt_logprobs!r}")
        except (TypeError, ValueError) as e:
            self.refused.append((rid, -1, None, "error", f"invalid request: {e}"))
            return
        # scoring starts after the first real token: prompt tuning's virtual tokens (ids
        # from the vocabulary's size up) come first and are not scored
        scored_from = 1 if prompt_logprobs is None else 1 + sum(
            t >= self.sampler.vocab for t in prompt)
        req = CoreRequest(rid, prompt, params, adapter, prompt_logprobs, scored_from)
        self.requests[rid] = req
        self.scheduler.add(req)

    def _check(self, rid: int, prompt: list[int], params: SamplingParams) -> None:
        if rid in self.requests:
            raise ValueError(f"request id {rid} is already in use")
        context, vocab = self.runner.context, self.runner.embed_rows  # virtual ids too
        if not 0 < len(prompt) < context:
            raise ValueError(f"the prompt has {len(prompt)} tokens; it must have 1 to "
                             f"{context - 1} (the model's context is {context})")
        if not all(type(t) is int for t in prompt) or min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        validate(params)

    def take_prompt_logprobs(self) -> dict[int, list[TokenLogprob]]:
        """The prompt logprobs scored since the last call, by request: entry i scores token
        `scored_from + i` of the prompt the core was sent."""
        scored, self.prompt_logprobs = self.prompt_logprobs, {}
        return scored

    def abort(self, rid: int) -> None:
        req = self.requests.get(rid)
        if req is not None and not self.scheduler.remove_waiting(req):
            self._release(req)
        self.requests.pop(rid, None)

    def step(self) -> list[Output]:
        """Admit what fits, then one forward pass: a token for every running sequence and
        the first token of each admitted prompt (when the admitted prompts exceed
        PACK_TOKENS, the earlier packs are prefilled on their own first and decode here)."""
        out, self.refused = self.refused, []
        admitted = self.scheduler.admit()
        if self.prefix_cache and admitted:
            self._reuse_prefixes(admitted)
        self.admitted[0] += sum(req.prompt_len for req in admitted)
        self.admitted[1] += sum(req.cached for req in admitted)
        packs: list[list[CoreRequest]] = []
        size = 0  # new prompt tokens in the last pack
        for req in admitted:
            new = req.prompt_len - req.cached
            if not packs or size + new > PACK_TOKENS:
                packs.append([])
                size = 0
            packs[-1].append(req)
            size += new
        for pack in packs[:-1]:
            out += self._run([], pack)
        pack = packs[-1] if packs else []
        rows = self._decode_rows({req.slot for req in pack})
        if rows or pack:
            out += self._run(rows, pack)
        return out

    def _reuse_prefixes(self, admitted: list[CoreRequest]) -> None:
        """Give each admitted request the longest start of its prompt that a slot holds
        (copied before this step's forward pass; slots being filled in it offer nothing,
        except a request's own slot, whose old contents need no copy)."""
        joining = {req.slot for req in admitted}
        holdings = []  # (adapter, (slot, tokens, length))
        for slot, left in enumerate(self.left):
            if slot in joining:
                continue
            running = self.scheduler.running.get(slot)
            if running is not None:
                holdings.append((running.adapter, (slot, running.ids, running.position)))
            elif left:
                holdings.append((self.left_adapter[slot], (slot, left, len(left))))
        for req in admitted:
            if req.prompt_logprobs is not None:
                continue  # every position runs, to be scored (req.cached stays 0)
            own = (self.left_adapter[req.slot], (req.slot, self.left[req.slot],
                                                  len(self.left[req.slot])))
            same = [held for adapter, held in [*holdings, own] if adapter == req.adapter]
            slot, length = longest_prefix(req.prompt, same)
            if length and slot != req.slot:
                self.runner.copy_prefix(slot, req.slot, length)
            req.cached = length

    def _decode_rows(self, joining: set[int]) -> list[CoreRequest | None]:
        """Slots 0..highest running (None: idle, or joining in this step's pack); [] when
        none of them decodes."""
        rows = [None if req is None or req.slot in joining else req
                for req in self.scheduler.batch()]
        return rows if any(req is not None for req in rows) else []

    def _run(self, rows: list[CoreRequest | None], pack: list[CoreRequest]) -> list[Output]:
        """One forward pass over a decode batch and/or a pack of prompts; their tokens. If
        the pass raises, the parts run again on their own (see the module docstring): a
        pass only writes each row's own cache positions and mask, so it can be repeated."""
        try:
            logits, first = self._forward(rows, pack)
        except Exception as e:
            parts = ([(rows, [])] if rows else []) + [([], [req]) for req in pack]
            if len(parts) > 1:
                return [output for part in parts for output in self._run(*part)]
            return [self._fail(req, f"generation failed: {type(e).__name__}: {e}")
                    for req in [*rows, *pack] if req is not None]
        out = []
        if rows:  # before the pack's slots take their sampling state: no draws there
            out += self._sample(rows, logits, None)
        if pack:
            out += self._sample(pack, first, [req.slot for req in pack])
        return out

    def _forward(self, rows: list[CoreRequest | None], pack: list[CoreRequest]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        decode = None
        if rows:
            last = self.runner.context - 1  # idle rows: see runner's docstring
            positions = [req.position if req is not None else last for req in rows]
            decode = Decode(self.next_tokens[:len(rows)],
                            torch.tensor(positions, device=self.device),
                            max(req.position for req in rows if req is not None) + 1)
        prompts = self.runner.pack([r.slot for r in pack], [r.prompt[r.cached:] for r in pack],
                                   [r.cached for r in pack]) if pack else None
        if prompts is not None:
            prompts.keep = self._scored_rows(pack)
        adapters = None
        if len(self.runner.adapters) > 1:
            adapters = [req.adapter if req is not None else -1 for req in rows]
            adapters += [r.adapter for r in pack for _ in range(r.prompt_len - r.cached)]
        out = self.runner.step(decode, prompts, adapters)
        if prompts is not None and prompts.keep is not None:
            self._score(pack, prompts.hidden)
        return out

    def _scored_rows(self, pack: list[CoreRequest]) -> torch.Tensor | None:
        """The pack's rows whose hidden states score the next prompt token: each scored
        prompt's positions scored_from - 1 .. len - 2 (None: the pack scores nothing)."""
        if all(req.prompt_logprobs is None for req in pack):
            return None
        rows, start = [], 0
        for req in pack:
            if req.prompt_logprobs is not None:  # such a prompt has no cached part
                rows += range(start + req.scored_from - 1, start + req.prompt_len - 1)
            start += req.prompt_len - req.cached
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _score(self, pack: list[CoreRequest], hidden: torch.Tensor) -> None:
        """Each scored prompt's logprobs, from its rows of `hidden` (see _scored_rows)."""
        start = 0
        for req in pack:
            if req.prompt_logprobs is not None:
                targets = req.prompt[req.scored_from:]
                self.prompt_logprobs[req.id] = score(
                    self.runner, hidden[start:start + len(targets)], targets,
                    req.prompt_logprobs)
                start += len(targets)

    def _sample(self, rows: list[CoreRequest | None], logits: torch.Tensor,
                slots: list[int] | None) -> list[Output]:
        """Sample decode rows (slots 0..B-1, `slots` None) or the first token of each of
        a pack's prompts (which start their sampling state here)."""
        requests = [req for req in rows if req is not None]
        try:
            if slots is not None:  # penalties count real tokens, not prompt tuning's virtual
                vocab = self.sampler.vocab
                self.sampler.add(slots, [r.params for r in rows],
                                 [[t for t in r.prompt if t < vocab] for r in rows])
            tokens, logprobs = self.sampler.sample(logits, slots)
        except Exception as e:  # not expected (the sampler keeps to its ranges); these only
            return [self._fail(req, f"sampling failed: {type(e).__name__}: {e}")
                    for req in requests]
        where = slice(0, len(rows)) if slots is None else torch.tensor(slots, device=self.device)
        self.next_tokens[where] = tokens.clamp(min=0)  # idle rows too: fed at the next step
        out = []
        for i, (req, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            if req is None:
                continue
            if token < 0:
                out.append(self._fail(req, "generation failed: the model's logits for this "
                                      "sequence are not finite (nan or inf)"))
                continue
            if slots is not None:
                req.position = req.prompt_len - 1  # _emit moves it past the prompt
            out.append(self._emit(req, token, logprobs[i] if logprobs else None))
        return out

    def _emit(self, req: CoreRequest, token: int, logprob: TokenLogprob | None) -> Output:
        req.position += 1
        req.generated += 1
        req.ids.append(token)
        finish = None
        if token in self.stop_token_ids and not req.params.ignore_eos:
            finish = "stop"
        elif req.generated >= req.params.max_tokens or req.position >= self.runner.context - 1:
            finish = "length"
        if finish is not None:
            self._release(req)
            del self.requests[req.id]
        return req.id, token, logprob, finish, None

    def _fail(self, req: CoreRequest, message: str) -> Output:
        self._release(req)
        self.requests.pop(req.id, None)
        return req.id, -1, None, "error", message

    def _release(self, req: CoreRequest) -> None:
        """Free the request's slot; its cache keeps the first `position` tokens' keys
        (until the slot is reused), which later prompts may start with."""
        if req.slot >= 0 and self.scheduler.running.get(req.slot) is req:
            self.left[req.slot] = req.ids[:min(req.position, self.runner.context - 1)]
            self.left_adapter[req.slot] = req.adapter
            self.scheduler.release(req)
            self.runner.free(req.slot)
            self.sampler.remove(req.slot)


def run_core(requests: Connection, outputs: Connection, model: Transformer,
             cfg: EngineConfig, dtype: torch.dtype, stop_token_ids: frozenset[int],
             threads: int, adapters: list[ServedAdapter] | tuple = ()) -> None:
    """The core process's main loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the frontend's to handle
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            core = EngineCore(model, cfg, dtype, stop_token_ids, adapters)
    except Exception as e:
        outputs.send(("failed", f"{type(e).__name__}: {e}"))
        return
    del model
    outputs.send(("ready", None))
    try:
        with torch.inference_mode():
            _loop(core, requests, outputs)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the frontend is gone; so is the point of going on


def _loop(core: EngineCore, requests: Connection, outputs: Connection) -> None:
    stopping = False
    while True:
        if not core.busy:
            if stopping:
                return
            stopping |= _handle(core, requests.recv())  # idle: wait for work
        while requests.poll():
            stopping |= _handle(core, requests.recv())
        if not core.busy:
            outputs.send(("step", [], core.stats(), {}))  # e.g. all aborted: report idle
            continue
        out = core.step()
        outputs.send(("step", out, core.stats(len(out)), core.take_prompt_logprobs()))


def _handle(core: EngineCore, message: tuple[Any, ...]) -> bool:
    """Apply one frontend message; True for "stop"."""
    kind = message[0]
    if kind == "add":
        core.add(*message[1:])
    elif kind == "abort":
        core.abort(message[1])
    return kind == "stop"
