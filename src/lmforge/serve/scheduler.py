"""Who runs next: a bounded FIFO of waiting requests and a fixed set of cache slots.

Continuous batching in the style of vLLM's scheduler, without paging: at every step
boundary the engine first lets finished or cancelled sequences go (their slots free up),
then admits waiting requests in arrival order while a slot is free and the step's prefill
budget lasts, then decodes one token for everything running. A request that does not fit
waits; a full queue refuses new requests at once (the server answers 503) instead of
growing without bound. A new sequence takes the lowest free slot, so the running batch
stays packed at the front of the cache.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from typing import Generic, Protocol, TypeVar


class QueueFull(Exception):
    """The waiting queue is at its limit."""


class Schedulable(Protocol):
    slot: int
    prompt_len: int


S = TypeVar("S", bound=Schedulable)


class Scheduler(Generic[S]):
    def __init__(self, slots: int, max_queue: int, max_prefill_tokens: int) -> None:
        self.max_queue, self.max_prefill_tokens = max_queue, max_prefill_tokens
        self._free = list(range(slots))
        self._waiting: deque[S] = deque()
        self._lock = threading.Lock()
        self.running: dict[int, S] = {}  # slot -> sequence; touched by the engine thread only

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def add(self, seq: S) -> None:
        """Queue a request (any thread); QueueFull when the queue is at its limit."""
        with self._lock:
            # requests that will find a free slot at the next step are not really waiting
            queued = len(self._waiting) - len(self._free)
            if queued >= self.max_queue:
                raise QueueFull(f"{max(queued, 0)} requests are already waiting")
            self._waiting.append(seq)

    def remove_waiting(self, seq: S) -> bool:
        with self._lock:
            try:
                self._waiting.remove(seq)
            except ValueError:
                return False
            return True

    def drain_waiting(self) -> list[S]:
        """Take every waiting request out of the queue (shutdown)."""
        with self._lock:
            drained = list(self._waiting)
            self._waiting.clear()
        return drained

    def admit(self) -> list[S]:
        """Waiting requests that start now, each given a slot (engine thread, step boundary)."""
        admitted: list[S] = []
        budget = self.max_prefill_tokens
        with self._lock:
            while self._waiting and self._free:
                seq = self._waiting[0]
                if admitted and seq.prompt_len > budget:
                    break  # the budget is spent; a long prompt still runs when first in line
                self._waiting.popleft()
                budget -= seq.prompt_len
                seq.slot = heapq.heappop(self._free)
                self.running[seq.slot] = seq
                admitted.append(seq)
        return admitted

    def release(self, seq: S) -> None:
        """Free a running sequence's slot (engine thread)."""
        if self.running.pop(seq.slot, None) is not None:
            with self._lock:
                heapq.heappush(self._free, seq.slot)

    def batch(self) -> list[S | None]:
        """Slots 0..highest running, a sequence or None (an idle slot in between)."""
        if not self.running:
            return []
        rows: list[S | None] = [None] * (max(self.running) + 1)
        for slot, seq in self.running.items():
            rows[slot] = seq
        return rows
