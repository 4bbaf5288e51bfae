"""ASGI middleware: per-request accounting (metrics + audit row), the body size limit, and
JSON as the body type whatever a client declared.

The body is read here, whole, before any handler runs, so one over `max_body_bytes` is a
413 whether it declared its length or came chunked (FastAPI turns an error raised while it
reads a body into a 400).

`Accounting` wraps every HTTP request: it hands the handlers an `AuditRecord` to fill in
(key, model, variant, prompt, output, tokens, filter decisions) at
`scope["lmforge.audit"]`, watches the response status, and when the response is over
(or the client is gone) counts it in the metrics and, for /v1 and /admin routes, writes
exactly one audit row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.serve.audit import AuditLog
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import Metrics

ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/feedback", "/health",
          "/ready", "/metrics", "/admin/keys", "/admin/models", "/admin/audit", "/admin/variants")
AUDITED = ("/v1/", "/admin/")
CLIENT_CLOSED = 499


@dataclass
class AuditRecord:
    request_id: str
    route: str
    client: str
    key_id: str | None = None
    model: str | None = None
    variant: str | None = None
    prompt: str | None = None
    output: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # set by a handler when it knows better (499)
    on_close: list[Callable[[], None]] = field(default_factory=list)  # run before the row


def route_label(path: str) -> str:
    """A bounded set of metric labels: known routes, else 'other'."""
    for route in ROUTES:
        if path == route or (route.startswith("/admin/") and path.startswith(route)):
            return route
    return "other"


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes; send less",
                         "request_too_large")


class Accounting:
    def __init__(self, app: ASGIApp, metrics: Metrics, audit: AuditLog | None,
                 max_body_bytes: int) -> None:
        self.app, self.metrics, self.audit = app, metrics, audit
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        client = scope.get("client") or ("", 0)
        record = AuditRecord(uuid.uuid4().hex, route_label(path), client[0])
        scope["lmforge.audit"] = record
        started = time.perf_counter()
        status = 500
        finished = False

        async def watched_send(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        scope["headers"] = _json_by_default(scope.get("headers", []))
        try:
            body, error = None, self._declared_too_large(scope)
            if error is None:
                body, error = await self._read_body(receive)
            if error is not None:
                await _send_error(watched_send, error)
            elif body is not None:
                await self.app(scope, _replay(body, receive), watched_send)
        finally:
            for callback in record.on_close:
                callback()
            if record.status is not None:
                status = record.status
            elif not finished:
                status = CLIENT_CLOSED
            self.metrics.observe_request(record.route, status, time.perf_counter() - started)
            if self.audit is not None and path.startswith(AUDITED):
                self.audit.record(_row(record, scope, status, started))

    def _declared_too_large(self, scope: Scope) -> APIError | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return BodyTooLarge(self.max_body_bytes)
                except ValueError:
                    return APIError(400, "the Content-Length header is not a number")
        return None

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, APIError | None]:
        """The whole body, or the 413 for one too large; (None, None) if the client left."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, BodyTooLarge(self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The app's receive: the body read already, then the client's own (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _json_by_default(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Every body this API takes is JSON, but `curl -d` declares a form by default: read it
    as JSON (a body that is not JSON still gets a 400 saying so)."""
    return [(name, b"application/json") if name == b"content-type"
            and value.startswith(b"application/x-www-form-urlencoded") else (name, value)
            for name, value in headers]


async def _send_error(send: Send, error: APIError) -> None:
    response = error.response()
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _row(record: AuditRecord, scope: Scope, status: int, started: float) -> dict[str, Any]:
    return {
        "request_id": record.request_id, "ts": time.time(), "key_id": record.key_id,
        "route": f"{scope['method']} {scope['path']}", "model": record.model,
        "variant": record.variant, "prompt": record.prompt, "output": record.output,
        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3), "status": status,
        "error": record.error, "filters": record.filters, "client": record.client,
    }
