"""Per-key rate limits: requests per minute and tokens per minute, as token buckets.

A bucket holds up to one minute's allowance and refills continuously, so a key may burst
to its limit and then gets limit/60 per second. A request takes one request token when it
is admitted. Tokens are reserved before a generation starts: the most it can use (its
prompt plus max_tokens for every choice) is taken from the bucket, and what it did not use
is given back when it ends, however it ends (finished, failed, or the client gone). So
concurrent requests cannot spend more than the bucket holds. A refusal says how many
seconds until the bucket allows the request: the server sends that as Retry-After with a
429. A request whose most is more than a whole minute's allowance can never fit: 400.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.serve.errors import APIError


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

    def reserve(self, who: str, tokens_per_minute: int, tokens: int) -> None:
        """Take `tokens` (at most a minute's allowance) from `who`'s tokens, or raise
        RateLimited saying when they will be there."""
        with self._lock:
            bucket = self._bucket(who, "tokens", tokens_per_minute, self._clock())
            if bucket.level < tokens:
                wait = (tokens - bucket.level) * 60 / tokens_per_minute
                raise RateLimited("tokens", tokens_per_minute, wait)
            bucket.level -= tokens

    def refund(self, who: str, tokens_per_minute: int, tokens: int) -> None:
        """Give back reserved tokens that were not used (negative: charge more)."""
        with self._lock:
            bucket = self._bucket(who, "tokens", tokens_per_minute, self._clock())
            bucket.level = min(float(tokens_per_minute), bucket.level + tokens)


class TokenBudget:
    """One request's claim on its caller's tokens per minute: `reserve` the most it may
    use before it starts, `settle` with what it used when it ends (once; later calls do
    nothing). Without a tokens-per-minute limit both do nothing."""

    def __init__(self, limiter: RateLimiter, who: str, per_minute: int | None) -> None:
        self.limiter, self.who, self.per_minute = limiter, who, per_minute
        self.reserved = 0

    def reserve(self, tokens: int) -> None:
        """Raise APIError 429 (Retry-After) when the tokens are not there now, 400 when
        they never can be."""
        if self.per_minute is None:
            return
        if tokens > self.per_minute:
            raise APIError(400, f"this request may use {tokens} tokens (its prompt plus "
                           f"max_tokens for each choice), more than this key's "
                           f"{self.per_minute} tokens per minute; lower max_tokens or n",
                           "tokens_per_minute_exceeded", "max_tokens")
        try:
            self.limiter.reserve(self.who, self.per_minute, tokens)
        except RateLimited as e:
            raise APIError(429, str(e), "rate_limit_exceeded",
                           retry_after=e.retry_after) from None
        self.reserved += tokens

    def settle(self, used: int) -> None:
        if self.per_minute is None or not self.reserved:
            return
        self.limiter.refund(self.who, self.per_minute, self.reserved - used)
        self.reserved = 0
