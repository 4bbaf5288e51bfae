"""Per-key rate limits: requests per minute and tokens per minute, as token buckets.

A bucket holds up to one minute's allowance and refills continuously, so a key may burst
to its limit and then gets limit/60 per second. A request needs one request token and a
non-empty token bucket; its prompt and completion tokens are charged when it ends (the
bucket may go below zero, which delays the next request). A refusal says how many seconds
until the bucket allows a request again: the server sends that as Retry-After with a 429.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


class RateLimited(Exception):
    def __init__(self, what: str, limit: int, retry_after: float) -> None:
        super().__init__(f"rate limit of {limit} {what} per minute reached; "
                         f"retry in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class _Bucket:
    level: float
    stamp: float

    def refill(self, now: float, per_minute: int) -> None:
        self.level = min(float(per_minute), self.level + (now - self.stamp) * per_minute / 60)
        self.stamp = now


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, who: str, kind: str, per_minute: int, now: float) -> _Bucket:
        bucket = self._buckets.setdefault((who, kind), _Bucket(float(per_minute), now))
        bucket.refill(now, per_minute)
        return bucket

    def admit(self, who: str, requests_per_minute: int | None,
              tokens_per_minute: int | None) -> None:
        """Take one request from `who`'s allowance, or raise RateLimited."""
        with self._lock:
            now = self._clock()
            if tokens_per_minute is not None:
                tokens = self._bucket(who, "tokens", tokens_per_minute, now)
                if tokens.level < 1:
                    wait = (1 - tokens.level) * 60 / tokens_per_minute
                    raise RateLimited("tokens", tokens_per_minute, wait)
            if requests_per_minute is not None:
                requests = self._bucket(who, "requests", requests_per_minute, now)
                if requests.level < 1:
                    wait = (1 - requests.level) * 60 / requests_per_minute
                    raise RateLimited("requests", requests_per_minute, wait)
                requests.level -= 1

    def charge(self, who: str, tokens_per_minute: int | None, tokens: int) -> None:
        """Count the tokens a finished request used."""
        if tokens_per_minute is None or tokens <= 0:
            return
        with self._lock:
            bucket = self._bucket(who, "tokens", tokens_per_minute, self._clock())
            bucket.level -= tokens
