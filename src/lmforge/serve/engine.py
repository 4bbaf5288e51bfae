"""The inference engine: one thread that prefills, decodes and samples for every request.

    engine = Engine(model, tokenizer, EngineConfig(max_batch=16))
    engine.start()
    async for delta in engine.stream(prompt_ids, SamplingParams(max_tokens=64)): ...

Requests join the running batch and leave it at step boundaries (see `scheduler`); each
step decodes one token for every running sequence in a single forward pass (see `runner`)
and hands each consumer its text delta. Consumers on an asyncio loop get one wake-up per
step for all their requests; a consumer that goes away (a disconnected client) aborts its
request, which frees the slot at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lmforge.model.llama import Transformer
from lmforge.serve.config import EngineConfig
from lmforge.serve.runner import Runner
from lmforge.serve.sampling import Sampler, SamplerState, SamplingParams, TokenLogprob
from lmforge.serve.scheduler import QueueFull, Scheduler
from lmforge.serve.textstream import TextStream

__all__ = ["ContextLengthError", "Delta", "Engine", "EngineStopped", "QueueFull"]


class ContextLengthError(ValueError):
    """The prompt, or prompt plus max_tokens, does not fit the model's context."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""


@dataclass
class Delta:
    """New output of one request since its previous delta."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | error
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def merge(self, later: Delta) -> Delta:
        return Delta(self.text + later.text, self.token_ids + later.token_ids,
                     self.logprobs + later.logprobs, later.finish_reason, later.error,
                     later.prompt_tokens, later.completion_tokens)


class EngineObserver(Protocol):
    def step(self, running: int, waiting: int, tokens: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def finished(self, seconds: float, reason: str) -> None: ...


class _NoMetrics:
    def step(self, running: int, waiting: int, tokens: int) -> None:
        pass

    def first_token(self, seconds: float) -> None:
        pass

    def finished(self, seconds: float, reason: str) -> None:
        pass


class _Sink:
    """Where a request's deltas go: an asyncio queue on its loop, or a thread queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Delta] | queue.SimpleQueue[Delta] = (
            asyncio.Queue() if loop is not None else queue.SimpleQueue())


_ids = itertools.count()


class Sequence:
    def __init__(self, prompt: list[int], params: SamplingParams, sink: _Sink,
                 stream: TextStream) -> None:
        self.id = next(_ids)
        self.prompt, self.params, self.sink, self.text = prompt, params, sink, stream
        self.slot = -1
        self.state: SamplerState | None = None
        self.next_token = 0
        self.position = 0
        self.generated = 0
        self.arrival = time.monotonic()
        self.first_token_at: float | None = None
        self.done = False

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)


class Engine:
    def __init__(self, model: Transformer, decode: Any, cfg: EngineConfig | None = None, *,
                 stop_token_ids: frozenset[int] = frozenset(), dtype: torch.dtype | None = None,
                 metrics: EngineObserver | None = None, name: str = "model") -> None:
        """`decode(ids) -> str` turns token ids into text (special tokens left out)."""
        self.cfg = cfg or EngineConfig()
        self.name = name
        device = torch.device(self.cfg.device)
        if device.type == "cpu":
            torch.set_num_threads(self.cfg.threads or max(1, (os.cpu_count() or 2) - 1))
        self.dtype = dtype or resolve_dtype(self.cfg.dtype, device)
        self.context = model.cfg.max_seq_len
        self.vocab = model.cfg.vocab
        self.stop_token_ids = stop_token_ids
        self._decode_text = decode
        self.runner = Runner(model, self.cfg.max_batch, self.dtype, device)
        self.sampler = Sampler(self.cfg.max_batch, self.vocab, device)
        self.scheduler: Scheduler[Sequence] = Scheduler(
            self.cfg.max_batch, self.cfg.max_queue, self.cfg.max_prefill_tokens)
        self.metrics: EngineObserver = metrics or _NoMetrics()
        self._aborts: queue.SimpleQueue[Sequence] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # ---- public API (any thread) ------------------------------------------------------

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is running and queued (up to `timeout`), then end the thread."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._abort_all("the server is shutting down")
                self._thread.join(5.0)
            self._thread = None

    @property
    def running(self) -> int:
        return len(self.scheduler.running)

    @property
    def waiting(self) -> int:
        return self.scheduler.waiting

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
               loop: asyncio.AbstractEventLoop | None = None) -> Sequence:
        """Queue a request; its deltas arrive on `seq.sink.queue`. QueueFull when the queue
        is at its limit, EngineStopped during shutdown."""
        if self._stopping:
            raise EngineStopped(f"model {self.name} is shutting down")
        if len(prompt) + params.max_tokens > self.context:
            raise ContextLengthError("prompt plus max_tokens exceed the context; use fit()")
        seq = Sequence(prompt, params, _Sink(loop),
                       TextStream(self._decode_text, prompt, params.stop))
        self.scheduler.add(seq)
        self._wake.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        if not seq.done:
            self._aborts.put(seq)
            self._wake.set()

    async def stream(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Submit and follow one request (see `deltas`)."""
        seq = self.submit(prompt, params, asyncio.get_running_loop())
        async for delta in self.deltas(seq):
            yield delta

    async def deltas(self, seq: Sequence) -> AsyncIterator[Delta]:
        """Deltas of a request submitted with this loop; what arrived together is merged
        into one delta. Leaving early (or being cancelled) aborts the request."""
        inbox: asyncio.Queue[Delta] = seq.sink.queue  # type: ignore[assignment]
        try:
            while True:
                delta = await inbox.get()
                while delta.finish_reason is None and not inbox.empty():
                    delta = delta.merge(inbox.get_nowait())
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            self.abort(seq)

    def generate(self, prompt: list[int], params: SamplingParams) -> Iterator[Delta]:
        """The same for a plain thread (the terminal chat, benchmarks)."""
        seq = self.submit(prompt, params)
        inbox: queue.SimpleQueue[Delta] = seq.sink.queue  # type: ignore[assignment]
        try:
            while True:
                delta = inbox.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            self.abort(seq)

    def complete(self, prompt: list[int], params: SamplingParams) -> Delta:
        """The whole output of one request as a single delta."""
        total = Delta()
        for delta in self.generate(prompt, params):
            total = total.merge(delta)
        return total

    # ---- the engine thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            idle = not self.scheduler.running and not self.scheduler.waiting
            if idle and self._aborts.empty():
                if self._stopping:
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            self._step()

    def _step(self) -> None:
        self._drop_aborted()
        out: list[tuple[Sequence, Delta]] = []
        tokens = 0
        for seq in self.scheduler.admit():
            tokens += self._prefill(seq, out)
        if out:  # first tokens go out now, not after the decode step (time to first token)
            self._publish(out)
            out = []
        if self.scheduler.running:
            tokens += self._decode(out)
        self.steps += 1
        self._publish(out)
        self.metrics.step(len(self.scheduler.running), self.scheduler.waiting, tokens)

    def _prefill(self, seq: Sequence, out: list[tuple[Sequence, Delta]]) -> int:
        seq.state = SamplerState.create(seq.params, seq.slot)
        try:
            logits = self.runner.prefill(seq.slot, seq.prompt)
            self.sampler.start(seq.state, seq.prompt)
            tokens, logprobs = self.sampler.sample(logits[None], [0], [seq.state])
            self.sampler.observe([seq.state], tokens)
        except Exception as e:  # one bad request must not stop the engine
            self._fail(seq, f"prefill failed: {type(e).__name__}: {e}", out)
            return 0
        seq.position = seq.prompt_len
        self._accept(seq, tokens[0], logprobs[0], out)
        return 1

    def _decode(self, out: list[tuple[Sequence, Delta]]) -> int:
        rows = self.scheduler.batch()
        live = [i for i, seq in enumerate(rows) if seq is not None]
        seqs = [rows[i] for i in live]
        try:
            logits = self.runner.decode([s.next_token if s else 0 for s in rows],
                                        [s.position if s else 0 for s in rows])
            states = [s.state for s in seqs]
            tokens, logprobs = self.sampler.sample(logits, live, states)
            self.sampler.observe(states, tokens)
        except Exception as e:  # fail this batch, keep serving
            for seq in seqs:
                self._fail(seq, f"decode failed: {type(e).__name__}: {e}", out)
            return 0
        for seq, token, logprob in zip(seqs, tokens, logprobs, strict=True):
            seq.position += 1
            self._accept(seq, token, logprob, out)
        return len(seqs)

    def _accept(self, seq: Sequence, token: int, logprob: TokenLogprob | None,
                out: list[tuple[Sequence, Delta]]) -> None:
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
            self.metrics.first_token(seq.first_token_at - seq.arrival)
        seq.generated += 1
        delta = Delta(prompt_tokens=seq.prompt_len, completion_tokens=seq.generated)
        params = seq.params
        if token in self.stop_token_ids and not params.ignore_eos:
            delta.text = seq.text.finish()
            self._finish(seq, delta, "stop", out)
            return
        delta.text = seq.text.push(token)
        delta.token_ids.append(token)
        if logprob is not None:
            delta.logprobs.append(logprob)
        seq.next_token = token
        if seq.text.stopped:
            self._finish(seq, delta, "stop", out)
        elif seq.generated >= params.max_tokens:
            delta.text += seq.text.finish()
            self._finish(seq, delta, "length", out)
        else:
            out.append((seq, delta))

    def _finish(self, seq: Sequence, delta: Delta, reason: str,
                out: list[tuple[Sequence, Delta]]) -> None:
        delta.finish_reason = reason
        seq.done = True
        self.scheduler.release(seq)
        self.runner.free(seq.slot)
        self.metrics.finished(time.monotonic() - seq.arrival, reason)
        out.append((seq, delta))

    def _fail(self, seq: Sequence, message: str, out: list[tuple[Sequence, Delta]]) -> None:
        delta = Delta(prompt_tokens=seq.prompt_len, completion_tokens=seq.generated,
                      error=message)
        self._finish(seq, delta, "error", out)

    def _drop_aborted(self) -> None:
        while not self._aborts.empty():
            seq = self._aborts.get()
            if seq.done:
                continue
            seq.done = True
            if not self.scheduler.remove_waiting(seq) and seq.slot >= 0:
                self.scheduler.release(seq)
                self.runner.free(seq.slot)

    def _abort_all(self, message: str) -> None:
        """Shutdown timed out: tell every consumer and let the loop end."""
        out: list[tuple[Sequence, Delta]] = []
        for seq in list(self.scheduler.running.values()):
            self._fail(seq, message, out)
        for seq in self.scheduler.drain_waiting():
            seq.done = True
            out.append((seq, Delta(finish_reason="error", error=message)))
        self._publish(out)

    def _publish(self, out: list[tuple[Sequence, Delta]]) -> None:
        """Hand the step's deltas to their consumers: thread queues directly, asyncio
        queues through one mailbox per event loop (see `_Mailbox`)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Delta]]] = {}
        for seq, delta in out:
            if seq.sink.loop is None:
                seq.sink.queue.put(delta)  # type: ignore[union-attr]
            else:
                by_loop.setdefault(seq.sink.loop, []).append((seq.sink.queue, delta))
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


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]
