"""Slow and greedy clients: read deadlines and a per-client connection cap, inside uvicorn's
HTTP protocol.

uvicorn has no timeout for reading a request: its keep-alive timeout runs only between
requests and stops at the first byte. So a client that sends one header byte a second
holds a connection forever, and a few hundred of them reach `limits.max_concurrency`,
after which every request, /health included, gets 503. As nginx does (client_header_timeout,
client_body_timeout, limit_conn):

- a request's headers must be complete within `header_timeout_s` of the connection opening
  (or of the previous response ending, on a kept-alive connection), else 408 and close;
- while a body arrives, at most `body_timeout_s` may pass between two reads, else the
  connection is closed (the request ends as a client disconnect, 499);
- one client address holds at most `max_connections_per_client` connections: one more is
  answered 503 at once and closed, before it can count against the server's limit.

Once a request has arrived the app takes as long as it needs: a client waiting for a long
generation is not slow. Each close is counted in lmforge_connections_closed_total{reason}.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from http import HTTPStatus
from typing import Any

from lmforge.serve.config import LimitsConfig
from lmforge.serve.errors import error_body
from lmforge.serve.metrics import Metrics

LINGER_S = 1.0  # a refused connection stays open this long so its client reads the answer
log = logging.getLogger("lmforge.serve")


def guarded_protocol(limits: LimitsConfig, metrics: Metrics | None = None) -> type:
    """uvicorn's HTTP protocol class (httptools if installed, else h11) with the guards, to
    pass as uvicorn.Config(http=...). Each call makes a class with its own per-client counts,
    so two servers in one process do not share them."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("GuardedHTTPProtocol", (_Guard, AutoHTTPProtocol), {
        "header_timeout_s": limits.header_timeout_s,
        "body_timeout_s": limits.body_timeout_s,
        "per_client": limits.max_connections_per_client,
        "open_by_client": Counter(),
        "metrics": metrics,
    })


class _Guard:
    """Mixed in before uvicorn's protocol class; uses only what its two implementations
    share: `cycle` (`more_body`, `response_complete`), `flow`, `transport`, `client`,
    `connections`, `loop` and `on_response_complete`."""

    header_timeout_s: float
    body_timeout_s: float
    per_client: int | None
    open_by_client: Counter[str]
    metrics: Metrics | None
    cycle: Any
    flow: Any
    transport: asyncio.Transport
    client: tuple[str, int] | None
    connections: set
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._timer: asyncio.TimerHandle | None = None
        self._phase = ""
        self._partial = False  # bytes of a request whose headers are not complete yet
        self._refused = False
        self._host = self.client[0] if self.client else ""
        self.open_by_client[self._host] += 1
        if self._host and self.per_client is not None and \
                self.open_by_client[self._host] > self.per_client:
            self._refuse(503, f"more than {self.per_client} open connections from one "
                         "client; close some and retry", "too_many_connections",
                         "per_client_limit")
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)  # type: ignore[misc]
        self._partial = True
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._partial = False
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.open_by_client[self._host] -= 1
        if self.open_by_client[self._host] <= 0:
            del self.open_by_client[self._host]
        super().connection_lost(exc)  # type: ignore[misc]

    def _phase_now(self) -> str:
        """headers: waiting for a request; body: reading one; app: the app has it."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return "headers"
        return "body" if cycle.more_body else "app"

    def _watch(self) -> None:
        """Arm the timer the phase needs: the header deadline runs from the start of the
        wait, the body timer from the last read."""
        if self.transport.is_closing():
            self._cancel()
            return
        phase = self._phase_now()
        if phase == self._phase and phase != "body":
            return
        self._cancel()
        self._phase = phase
        if phase == "headers":
            self._timer = self.loop.call_later(self.header_timeout_s, self._expire)
        elif phase == "body":
            self._timer = self.loop.call_later(self.body_timeout_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase_now() != self._phase:
            return
        if self._phase == "body":
            if self.flow.read_paused:  # the app has not asked for more yet: not the client
                self._timer = self.loop.call_later(self.body_timeout_s, self._expire)
                return
            self._count("body_timeout")
            self.transport.close()
        elif self._partial:
            self._refuse(408, f"the request headers did not arrive within "
                         f"{self.header_timeout_s:g} s", "request_timeout", "header_timeout")
        else:
            self._count("header_timeout")
            self.transport.close()

    def _refuse(self, status: int, message: str, code: str, reason: str) -> None:
        """Answer `status` outside the app and close; later bytes from the client are
        dropped, and the connection no longer counts against the server's limit."""
        self._count(reason)
        self._refused = True
        self._cancel()
        self.connections.discard(self)
        body = json.dumps(error_body(status, message, code)).encode()
        retry = "retry-after: 1\r\n" if status == 503 else ""
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n{retry}\r\n")
        self.transport.write(head.encode() + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _count(self, reason: str) -> None:
        log.info("closing a connection from %s: %s", self._host or "a local socket", reason)
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
