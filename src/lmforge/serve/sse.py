"""Server-sent events of a streamed response, and waiting on work while the client is there."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from lmforge.serve.engine import Delta

DISCONNECTED = "the client disconnected"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def merge_choices(pending: list[tuple[AsyncIterator[Delta], Delta]]
                 ) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) from every choice as they come; first deltas go first."""
    for index, (_, first) in enumerate(pending):
        yield index, first
    live = [(i, it) for i, (it, first) in enumerate(pending) if first.finish_reason is None]
    if len(live) == 1:
        index, it = live[0]
        async for delta in it:
            yield index, delta
        return
    inbox: asyncio.Queue[tuple[int, Delta | None]] = asyncio.Queue()

    async def pump(index: int, it: AsyncIterator[Delta]) -> None:
        async for delta in it:
            await inbox.put((index, delta))
        await inbox.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, it)) for i, it in live]
    try:
        remaining = len(tasks)
        while remaining:
            index, delta = await inbox.get()
            if delta is None:
                remaining -= 1
            else:
                yield index, delta
    finally:
        for task in tasks:
            task.cancel()


async def unless_disconnected(request: Request, work: Any) -> str | None:
    """Await `work`; DISCONNECTED (and `work` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        return DISCONNECTED
    finally:
        watcher.cancel()
