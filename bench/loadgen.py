"""A load generator for OpenAI-compatible streaming endpoints (used by bench_serve_load).

    results, wall = asyncio.run(run_load(url, body, concurrency=16, requests_per_client=8))
    print(summarize(results, wall))

Each of `concurrency` clients sends its requests back to back over its own connection and
reads the server-sent events as they arrive. Per request it records the status, the time
to the first token (the first chunk that carries text), the total latency and the
completion tokens the final usage chunk reports; any non-200 answer, broken stream or
missing [DONE] counts as an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx


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


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                      headers: dict[str, str]) -> Result:
    start = time.perf_counter()
    ttft, tokens, done = None, 0, False
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                return Result(response.status_code, time.perf_counter() - start,
                              error=response.text[:200])
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    return Result(200, time.perf_counter() - start, ttft, tokens,
                                  event["error"]["message"])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                if ttft is None and any(_text(c) for c in event.get("choices", [])):
                    ttft = time.perf_counter() - start
    except httpx.HTTPError as e:
        return Result(0, time.perf_counter() - start, ttft, tokens, f"{type(e).__name__}: {e}")
    error = None if done else "the stream ended without [DONE]"
    return Result(200, time.perf_counter() - start, ttft, tokens, error)


def _text(choice: dict[str, Any]) -> str:
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def run_load(url: str, body: dict[str, Any], concurrency: int,
                   requests_per_client: int,
                   headers: dict[str, str] | None = None) -> tuple[list[Result], float]:
    """All results and the wall time from the first request to the last answer."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(30.0, read=600.0)
    results: list[Result] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def client_loop() -> None:
            for _ in range(requests_per_client):
                results.append(await one_request(client, url, body, headers or {}))

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return results, wall


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
