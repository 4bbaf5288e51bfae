"""Who runs next: a FIFO of waiting requests and a fixed set of cache slots.

Continuous batching in the style of vLLM's scheduler, without paging: at every step
boundary the engine core first lets finished or cancelled sequences go (their slots free
up), then admits waiting requests in arrival order while a slot is free and the step's
prefill budget lasts, then decodes one token for everything running. A request that does
not fit waits. A new sequence takes the lowest free slot, so the running batch stays packed
at the front of the cache. (The queue's length limit is kept by the engine's frontend,
which answers "queue full" before a request is ever sent here.)
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, Protocol, TypeVar


class Schedulable(Protocol):
    slot: int
    prompt_len: int


S = TypeVar("S", bound=Schedulable)


class Scheduler(Generic[S]):
    def __init__(self, slots: int, max_prefill_tokens: int) -> None:
        self.max_prefill_tokens = max_prefill_tokens
        self._free = list(range(slots))
        self._waiting: deque[S] = deque()
        self.running: dict[int, S] = {}  # slot -> sequence

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def add(self, seq: S) -> None:
        self._waiting.append(seq)

    def remove_waiting(self, seq: S) -> bool:
        try:
            self._waiting.remove(seq)
        except ValueError:
            return False
        return True

    def admit(self) -> list[S]:
        """Waiting requests that start now, each given a slot (at a step boundary)."""
        admitted: list[S] = []
        budget = self.max_prefill_tokens
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
        """Free a running sequence's slot."""
        if self.running.pop(seq.slot, None) is not None:
            heapq.heappush(self._free, seq.slot)

    def batch(self) -> list[S | None]:
        """Slots 0..highest running, a sequence or None (an idle slot in between)."""
        if not self.running:
            return []
        rows: list[S | None] = [None] * (max(self.running) + 1)
        for slot, seq in self.running.items():
            rows[slot] = seq
        return rows
