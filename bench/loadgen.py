"""A load generator for OpenAI-compatible streaming endpoints (used by bench_serve_load).

    results, wall = asyncio.run(run_load(url, body, concurrency=16, requests_per_client=8))
    print(summarize(results, wall))

Each of `concurrency` clients sends its requests back to back over its own keep-alive
connection and reads the server-sent events as they arrive. Per request it records the
status, the time to the first token (the first chunk that carries text), the total latency
and the completion tokens the final usage chunk reports; any non-200 answer, broken stream
or missing [DONE] counts as an error.

The client is asyncio streams plus httptools (the C HTTP parser uvicorn uses) rather than
httpx: the load generator shares the machine with the server it measures, and per streamed
chunk httpx's pure-Python HTTP/1.1 stack costs about as much CPU as the server's own work
for the chunk (0.07 ms of client CPU per token at 16 clients), which a server on a 2-core
machine then does not get.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools


@dataclass
class Result:
    status: int
    latency: float
    ttft: float | None = None
    tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


class _Response:
    """httptools callbacks for one response: status, body split into SSE events."""

    def __init__(self, start: float) -> None:
        self.start, self.parser = start, httptools.HttpResponseParser(self)
        self.buffer, self.text = b"", b""
        self.complete = self.done = False
        self.ttft: float | None = None
        self.tokens, self.error = 0, None

    def on_body(self, body: bytes) -> None:
        if self.parser.get_status_code() != 200:
            self.text += body
            return
        events = (self.buffer + body).split(b"\n\n")
        self.buffer = events.pop()
        for event in events:
            if not event.startswith(b"data: "):
                continue
            if event == b"data: [DONE]":
                self.done = True
                continue
            payload = json.loads(event[6:])
            if "error" in payload:
                self.error = payload["error"]["message"]
            if payload.get("usage"):
                self.tokens = payload["usage"]["completion_tokens"]
            if self.ttft is None and any(_text(c) for c in payload.get("choices", [])):
                self.ttft = time.perf_counter() - self.start

    def on_message_complete(self) -> None:
        self.complete = True


class Connection:
    """One keep-alive HTTP/1.1 connection that sends JSON POSTs and reads streamed replies."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     f"Content-Type: application/json\r\n{extra}")
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> Result:
        start = time.perf_counter()
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.streams
            writer.write(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            response = _Response(start)
            while not response.complete:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                response.parser.feed_data(data)
        except (OSError, httptools.HttpParserError) as e:
            self.close()
            return Result(0, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")
        latency = time.perf_counter() - start
        status = response.parser.get_status_code()
        if not response.parser.should_keep_alive():
            self.close()
        if status != 200:
            return Result(status, latency, error=response.text[:200].decode("utf-8", "replace"))
        error = response.error or (None if response.done else "the stream ended without [DONE]")
        return Result(200, latency, response.ttft, response.tokens, error)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def _text(choice: dict[str, Any]) -> str:
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def run_load(url: str, body: dict[str, Any], concurrency: int,
                   requests_per_client: int,
                   headers: dict[str, str] | None = None) -> tuple[list[Result], float]:
    """All results and the wall time from the first request to the last answer."""
    payload = json.dumps(body).encode()
    results: list[Result] = []

    async def client_loop() -> None:
        connection = Connection(url, headers or {})
        try:
            for _ in range(requests_per_client):
                results.append(await connection.post(payload))
        finally:
            connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return results, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(results: list[Result], wall: float) -> dict[str, float]:
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    latencies = [r.latency for r in ok]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "requests_per_s": len(ok) / wall,
        "tokens_per_s": sum(r.tokens for r in ok) / wall,
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
        "latency_p50_ms": percentile(latencies, 50) * 1e3,
        "latency_p99_ms": percentile(latencies, 99) * 1e3,
    }
