"""The inference engine as the server sees it: submit requests, receive text deltas.

    engine = Engine(model, tokenizer.decode, EngineConfig(max_batch=16)).start()
    async for delta in engine.stream(prompt_ids, SamplingParams(max_tokens=64)): ...

The forward passes run in the engine core, a process of its own (see `core`). This side
keeps what belongs to each request: the queue limit (a full queue raises QueueFull before
anything is sent), the token-to-text stream with its stop strings (see `textstream`), and
the consumer the deltas go to. One reader thread takes the core's per-step messages and
turns them into deltas; consumers on an asyncio loop get one wake-up per step for all their
requests (see `_Mailbox`), and what piled up meanwhile is merged into one delta. A consumer
that goes away (a disconnected client) aborts its request, which frees its slot at the
core's next step. If the core process dies, every request in flight ends with an error and
new ones fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from lmforge.errors import UserError
from lmforge.model.llama import Transformer
from lmforge.model.prompt_tuning import prompt_prefix
from lmforge.model.sampling import SamplingParams, TokenLogprob
from lmforge.serve.adapters import ServedAdapter
from lmforge.serve.config import EngineConfig
from lmforge.serve.core import Output, Stats, run_core
from lmforge.serve.textstream import TextStream

__all__ = ["ContextLengthError", "Delta", "Engine", "EngineRequest", "EngineStopped", "QueueFull"]
log = logging.getLogger("lmforge.serve")
START_TIMEOUT_S = 300.0


class ContextLengthError(ValueError):
    """The prompt, or prompt plus max_tokens, does not fit the model's context."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""


class QueueFull(Exception):
    """The waiting queue is at its limit."""


@dataclass
class Delta:
    """New output of one request since its previous delta."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text_ends: list[int] = field(default_factory=list)  # per logprob: its text's end offset
    finish_reason: str | None = None  # stop | length | error
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # with the first delta of a request that asked for them: prompt[1:]'s logprobs
    prompt_logprobs: list[TokenLogprob] | None = None

    def merge(self, later: Delta) -> Delta:
        prompt = later.prompt_logprobs if self.prompt_logprobs is None else self.prompt_logprobs
        return Delta(self.text + later.text, self.token_ids + later.token_ids,
                     self.logprobs + later.logprobs, self.text_ends + later.text_ends,
                     later.finish_reason, later.error, later.prompt_tokens,
                     later.completion_tokens, prompt)


class EngineObserver(Protocol):
    def step(self, running: int, waiting: int, tokens: int, prompt_tokens: int,
             cached_tokens: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def finished(self, seconds: float, reason: str) -> None: ...


class _NoMetrics:
    def step(self, running: int, waiting: int, tokens: int, prompt_tokens: int,
             cached_tokens: int) -> None:
        pass

    def first_token(self, seconds: float) -> None:
        pass

    def finished(self, seconds: float, reason: str) -> None:
        pass


_ids = itertools.count()


class EngineRequest:
    """One submitted request: its text stream and where its deltas go (an asyncio queue on
    `loop`, or a thread queue)."""

    def __init__(self, prompt: list[int], params: SamplingParams, stream: TextStream,
                 loop: asyncio.AbstractEventLoop | None, scored: bool = False) -> None:
        self.id = next(_ids)
        self.prompt_len, self.params, self.text = len(prompt), params, stream
        self.scored = scored  # its prompt's logprobs were asked for (see Engine.submit)
        self.loop = loop
        self.inbox: asyncio.Queue[Delta] | queue.SimpleQueue[Delta] = (
            asyncio.Queue() if loop is not None else queue.SimpleQueue())
        self.generated = 0
        self.arrival = time.monotonic()
        self.first_token_at: float | None = None
        self.done = False

    def accept(self, token: int, logprob: TokenLogprob | None, finish: str | None,
               error: str | None) -> Delta:
        """The delta for one token from the core (sets `done` when it is the last)."""
        if error is not None:
            self.done = True
            return Delta(finish_reason="error", error=error, prompt_tokens=self.prompt_len,
                         completion_tokens=self.generated)
        if self.params.max_tokens == 0:  # the prompt only: the core's one token is dropped
            self.done = True
            return Delta(finish_reason="length", prompt_tokens=self.prompt_len)
        self.generated += 1
        delta = Delta(prompt_tokens=self.prompt_len, completion_tokens=self.generated)
        if finish == "stop":  # a stop token: not part of the text
            delta.text = self.text.finish()
            if logprob is not None and self.scored:
                delta.logprobs.append(logprob)
                delta.text_ends.append(len(self.text.text))
        else:
            delta.text = self.text.push(token)
            delta.token_ids.append(token)
            if logprob is not None:
                delta.logprobs.append(logprob)
                delta.text_ends.append(len(self.text.text))
            if self.text.stopped:
                finish = "stop"
            elif finish == "length":
                delta.text += self.text.finish()
        delta.finish_reason = finish
        self.done = finish is not None
        return delta


class Engine:
    def __init__(self, model: Transformer, decode, cfg: EngineConfig | None = None, *,
                 stop_token_ids: frozenset[int] = frozenset(), dtype: torch.dtype | None = None,
                 metrics: EngineObserver | None = None, name: str = "model",
                 adapters: list[ServedAdapter] | tuple = ()) -> None:
        """`decode(ids) -> str` turns token ids into text (special tokens left out);
        `adapters`: LoRA adapters served over the model's weights (see `adapters`)."""
        self.cfg = cfg or EngineConfig()
        self.name = name
        self.dtype = dtype or resolve_dtype(self.cfg.dtype, visible_device(self.cfg.device))
        self.prefix = prompt_prefix(model)  # prompt tuning's virtual tokens, before each prompt
        self.context = model.cfg.max_seq_len - len(self.prefix)
        self.vocab = model.cfg.vocab
        self.stop_token_ids = stop_token_ids
        self.metrics: EngineObserver = metrics or _NoMetrics()
        self._model: Transformer | None = model
        self._adapters = list(adapters)
        self.adapter_ids = {a.name: i + 1 for i, a in enumerate(self._adapters)}
        self._decode_text = decode
        self._requests: dict[int, EngineRequest] = {}
        self._lock = threading.Lock()  # guards _requests and the request pipe
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        self._process: multiprocessing.process.BaseProcess | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.dead: str | None = None  # why the core is gone, if it died
        self.running = self.waiting = 0  # as of the core's last step

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> Engine:
        """Start the core process and wait until it has built the model."""
        if self._process is not None:
            return self
        ctx = multiprocessing.get_context("spawn")
        from_core, to_frontend = ctx.Pipe(duplex=False)
        from_frontend, self._to_core = ctx.Pipe(duplex=False)
        threads = self.cfg.threads or max(1, torch.get_num_threads() - 1)
        self._process = ctx.Process(
            target=run_core, name=f"lmforge-engine-{self.name}", daemon=True,
            args=(from_frontend, to_frontend, self._model, self.cfg, self.dtype,
                  self.stop_token_ids, threads, self._adapters))
        self._process.start()
        from_frontend.close()
        to_frontend.close()
        self._model, self._adapters = None, []
        self._from_core = from_core
        if not from_core.poll(START_TIMEOUT_S):
            self._process.kill()
            raise RuntimeError(f"the engine for {self.name} did not start")
        try:
            kind, detail = from_core.recv()
        except EOFError:
            kind, detail = "failed", f"its process exited with {self._process.exitcode}"
        if kind != "ready":
            self._process.join(5.0)
            raise RuntimeError(f"the engine for {self.name} failed to start: {detail}")
        self._reader = threading.Thread(target=self._read, name=f"engine-{self.name}",
                                        daemon=True)
        self._reader.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is running and queued (up to `timeout`), then end the core."""
        if self._process is None or self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError), self._lock:
            self._to_core.send(("stop",))
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5.0)
        if self._reader is not None:
            self._reader.join(5.0)

    @property
    def pid(self) -> int | None:
        """The core process (None before start)."""
        return self._process.pid if self._process is not None else None

    # ---- requests (any thread) ---------------------------------------------------------

    def fit(self, prompt: list[int], max_tokens: int | None,
            truncate: int | None = None) -> tuple[list[int], int]:
        """The prompt (kept to its last `truncate` tokens if asked) and max_tokens, checked
        against the context; ContextLengthError says what does not fit."""
        if truncate is not None:
            prompt = prompt[-truncate:] if truncate > 0 else []
        if not prompt:
            raise ContextLengthError("the prompt is empty; send at least one token of text")
        if len(prompt) >= self.context:
            raise ContextLengthError(
                f"this model's maximum context length is {self.context} tokens, but the "
                f"prompt has {len(prompt)}; shorten it or set truncate_prompt_tokens")
        room = self.context - len(prompt)
        if max_tokens is None:
            return prompt, room
        if max_tokens > room:
            raise ContextLengthError(
                f"this model's maximum context length is {self.context} tokens, but "
                f"{len(prompt) + max_tokens} were requested ({len(prompt)} in the prompt, "
                f"{max_tokens} in max_tokens); reduce max_tokens to {room} or less")
        return prompt, max_tokens

    def submit(self, prompt: list[int], params: SamplingParams,
               loop: asyncio.AbstractEventLoop | None = None,
               adapter: str | None = None, prompt_logprobs: int | None = None
               ) -> EngineRequest:
        """Queue a request (on `adapter`, one of `adapter_ids`, or the base); its deltas go
        to `loop` (for `deltas`) or a thread queue (for `follow`). QueueFull when the queue
        is at its limit, EngineStopped during shutdown; on a dead engine the request ends
        at once with an error delta.

        `prompt_logprobs` k (echo): the first delta also carries the logprobs of prompt[1:]
        with the top k alternatives of each, and a stop token keeps its logprob entry, so
        the logprobs cover every token of the sequence (as OpenAI's legacy completions).
        max_tokens 0 asks for the prompt only: as vLLM does, the core makes one token, which
        is dropped, and the request ends with "length"."""
        if self._stopping or self._process is None:
            raise EngineStopped(f"model {self.name} is shutting down")
        if adapter is not None and adapter not in self.adapter_ids:
            raise ValueError(f"adapter {adapter!r} is not served by {self.name}")
        if len(prompt) + params.max_tokens > self.context:
            raise ContextLengthError("prompt plus max_tokens exceed the context; use fit()")
        stream = TextStream(self._decode_text, prompt, params.stop)
        req = EngineRequest(prompt, params, stream, loop, prompt_logprobs is not None)
        core_params = replace(params, max_tokens=1) if params.max_tokens == 0 else params
        with self._lock:
            # requests that will find a free slot at the next step are not really waiting
            queued = len(self._requests) - self.cfg.max_batch
            if queued >= self.cfg.max_queue:
                raise QueueFull(f"{max(queued, 0)} requests are already waiting")
            if self.dead is None:
                self._requests[req.id] = req
                with contextlib.suppress(OSError):  # a dead core: the reader fails it
                    self._to_core.send(("add", req.id, self.prefix + prompt, core_params,
                                        self.adapter_ids.get(adapter, 0), prompt_logprobs))
        if req.id not in self._requests and not req.done:
            self._deliver([(req, req.accept(-1, None, "error", self.dead))])
        return req

    def abort(self, req: EngineRequest) -> None:
        """Cancel a request (a no-op once it finished)."""
        with self._lock:
            if self._requests.pop(req.id, None) is None:
                return
            req.done = True
            if self.dead is None:
                with contextlib.suppress(OSError):
                    self._to_core.send(("abort", req.id))

    async def stream(self, prompt: list[int], params: SamplingParams,
                     adapter: str | None = None) -> AsyncIterator[Delta]:
        """Submit and follow one request (see `deltas`)."""
        req = self.submit(prompt, params, asyncio.get_running_loop(), adapter)
        async for delta in self.deltas(req):
            yield delta

    async def deltas(self, req: EngineRequest) -> AsyncIterator[Delta]:
        """Deltas of a request submitted with this loop; what arrived together is merged
        into one delta. Leaving early (or being cancelled) aborts the request."""
        inbox: asyncio.Queue[Delta] = req.inbox  # type: ignore[assignment]
        try:
            while True:
                delta = await inbox.get()
                while delta.finish_reason is None and not inbox.empty():
                    delta = delta.merge(inbox.get_nowait())
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            self.abort(req)

    def follow(self, req: EngineRequest) -> Iterator[Delta]:
        """The same for a request submitted without a loop (a plain thread)."""
        inbox: queue.SimpleQueue[Delta] = req.inbox  # type: ignore[assignment]
        try:
            while True:
                delta = inbox.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            self.abort(req)

    def wait(self, req: EngineRequest) -> Delta:
        """The whole output of a request submitted without a loop, as one delta."""
        total = Delta()
        for delta in self.follow(req):
            total = total.merge(delta)
        return total

    def generate(self, prompt: list[int], params: SamplingParams) -> Iterator[Delta]:
        """Submit and follow one request from a plain thread (the terminal chat)."""
        yield from self.follow(self.submit(prompt, params))

    def complete(self, prompt: list[int], params: SamplingParams,
                 adapter: str | None = None) -> Delta:
        return self.wait(self.submit(prompt, params, adapter=adapter))

    # ---- the reader thread -------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                _, outputs, stats, prompts = self._from_core.recv()
            except (EOFError, OSError):
                break
            self._apply(outputs, stats, prompts)
        self._core_gone()

    def _apply(self, outputs: list[Output], stats: Stats | None,
               prompts: dict[int, list[TokenLogprob]]) -> None:
        """Turn one step's tokens (and prompt logprobs) into deltas and hand them out."""
        deliveries = []
        for rid, token, logprob, finish, error in outputs:
            req = self._requests.get(rid)
            if req is None:
                continue  # aborted meanwhile
            try:
                delta = req.accept(token, logprob, finish, error)
            except Exception as e:  # e.g. a tokenizer that cannot decode: end this one only
                log.exception("request %d failed in detokenization", rid)
                delta = req.accept(-1, None, "error", f"{type(e).__name__}: {e}")
                finish = None  # the core still runs it: abort it there
            delta.prompt_logprobs = prompts.get(rid)
            if req.first_token_at is None and error is None:
                req.first_token_at = time.monotonic()
                self.metrics.first_token(req.first_token_at - req.arrival)
            if req.done:
                self._finished(req, delta.finish_reason, core_knows=finish is not None)
            deliveries.append((req, delta))
        if stats is not None:
            self.running, self.waiting = stats[0], stats[1]
            self.metrics.step(*stats)
        self._deliver(deliveries)

    def _finished(self, req: EngineRequest, reason: str, core_knows: bool) -> None:
        with self._lock:
            self._requests.pop(req.id, None)
            if not core_knows:  # a stop string: the core would go on
                with contextlib.suppress(OSError):
                    self._to_core.send(("abort", req.id))
        self.metrics.finished(time.monotonic() - req.arrival, reason)

    def _core_gone(self) -> None:
        """The core exited: end every request still in flight with an error."""
        with self._lock:
            if self._stopping:
                self.dead = "the server is shutting down"
            else:
                self.dead = (f"the engine process of {self.name} died (exit code "
                             f"{self._process.exitcode})")
                log.error("%s; requests to it fail until the model is reloaded", self.dead)
            orphans, self._requests = list(self._requests.values()), {}
        self.running = self.waiting = 0
        self._deliver([(req, req.accept(-1, None, "error", self.dead)) for req in orphans])

    def _deliver(self, deliveries: list[tuple[EngineRequest, Delta]]) -> None:
        """Thread queues directly, asyncio queues through one mailbox per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Delta]]] = {}
        for req, delta in deliveries:
            if req.loop is None:
                req.inbox.put(delta)  # type: ignore[union-attr]
            else:
                by_loop.setdefault(req.loop, []).append((req.inbox, delta))
        for loop, items in by_loop.items():
            mailbox = self._mailboxes.get(loop)
            if mailbox is None:
                mailbox = self._mailboxes[loop] = _Mailbox(loop)
            mailbox.post(items)


class _Mailbox:
    """Deltas waiting for one event loop. Only the first post after a drain wakes the loop
    (a write to its self-pipe); while the loop is busy, later steps just add to the pile,
    so a loaded server does fewer wake-ups and its consumers get merged deltas."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, Delta]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, items: list[tuple[asyncio.Queue, Delta]]) -> None:
        with self._lock:
            self._items += items
            wake, self._scheduled = not self._scheduled, True
        if wake:
            with contextlib.suppress(RuntimeError):  # a closed loop: its consumers are gone
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for inbox, delta in items:
            inbox.put_nowait(delta)


def visible_device(name: str) -> torch.device:
    """The engine's device; a GPU that is asked for but not there is the user's to fix."""
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"serve device {name} is not visible (this machine has "
                        f"{torch.cuda.device_count()} CUDA GPUs); use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]
