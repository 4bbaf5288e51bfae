"""Admin endpoints (admin keys only): keys, model reload, variant state, audit queries.

    POST   /admin/keys                 {"role": "user", "name": "...", "requests_per_minute": 60}
    GET    /admin/keys                 every key (never the secrets)
    DELETE /admin/keys/{key_id}        revoke
    POST   /admin/models/{name}/reload reload the model's variants from disk
    GET    /admin/variants             per-variant load state, health and queue
    GET    /admin/audit?key_id=&route=&status=&since=&limit=&table=requests|shadow

Numbers are checked against what SQLite can store, so a huge one is a 400, not a 500.
/admin/audit waits a bounded time for queued rows to be written; `complete: false` in its
answer says some were still waiting (the audit log is failing or very busy), and a 503 says
the log cannot be read at all.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from lmforge.errors import UserError
from lmforge.serve.auth import MAX_RATE
from lmforge.serve.errors import APIError, responses

if TYPE_CHECKING:
    from lmforge.serve.app import ServerState

AUDIT_FLUSH_S = 5.0  # longest /admin/audit waits for queued rows


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "developer", "admin"]
    name: str | None = Field(None, max_length=200)
    requests_per_minute: int | None = Field(None, ge=1, le=MAX_RATE)
    tokens_per_minute: int | None = Field(None, ge=1, le=MAX_RATE)


def admin_router(state: ServerState, authorize: Callable) -> APIRouter:
    router = APIRouter(prefix="/admin", dependencies=[Depends(authorize("admin"))],
                       responses=responses(400, 401, 403, 404, 413, 429))

    def key_store():
        if state.keys is None:
            raise APIError(400, "access control is off, so there are no keys; start the "
                           "server with --auth DB", "auth_disabled")
        return state.keys

    @router.get("/keys")
    async def list_keys() -> dict:
        return {"object": "list", "data": [k.as_dict() for k in key_store().list()]}

    @router.post("/keys")
    async def create_key(body: NewKey) -> dict:
        key, secret = key_store().create(body.role, body.name, body.requests_per_minute,
                                         body.tokens_per_minute)
        return {**key.as_dict(), "key": secret}

    @router.delete("/keys/{key_id}")
    async def revoke_key(key_id: str) -> dict:
        if not key_store().revoke(key_id):
            raise APIError(404, f"no active key with id {key_id!r}", "key_not_found", "key_id")
        return {"id": key_id, "revoked": True}

    @router.post("/models/{name:path}/reload")
    async def reload_model(name: str) -> dict:
        if state.registry.get(name) is None:
            raise APIError(404, f"the model {name!r} does not exist", "model_not_found")
        try:
            await asyncio.to_thread(state.registry.reload, name)
        except UserError as e:
            raise APIError(400, f"reload failed, the old weights stay in service: {e}",
                           "reload_failed") from None
        return {"model": name, "reloaded": True, **state.registry.get(name).state()}

    @router.get("/variants")
    async def variants() -> dict:
        return {"object": "list", "data": [g.state() for g in state.registry.groups.values()]}

    @router.get("/audit", responses=responses(503))
    async def audit(key_id: str | None = None, route: str | None = None,
                    status: Annotated[int | None, Query(ge=100, le=599)] = None,
                    since: float | None = None, limit: int = 100,
                    table: Literal["requests", "shadow"] = "requests") -> dict:
        if state.audit is None:
            raise APIError(400, "the audit log is off (serve.audit.enabled: false)",
                           "audit_disabled")
        if not 1 <= limit <= 1000:
            raise APIError(400, "limit must be between 1 and 1000", "invalid_value", "limit")
        complete = await asyncio.to_thread(state.audit.flush, AUDIT_FLUSH_S)
        filters = {"since": since}
        if table == "requests":
            filters.update(key_id=key_id, route=route, status=status)
        try:
            rows = await asyncio.to_thread(state.audit.query, table, limit, **filters)
        except sqlite3.Error as e:
            raise APIError(503, f"the audit log cannot be read ({e}); see the server log",
                           "audit_unavailable", retry_after=5) from None
        return {"object": "list", "data": rows, "complete": complete}

    return router
