"""The FastAPI application: OpenAI routes, health, readiness, metrics, admin.

    app = build_app(ServeConfig(models=[ModelSpec(name="demo", path="runs/demo")]))

`build_app` loads every model before it returns (so a bad path fails before the port is
opened). Shutdown (uvicorn's, after in-flight requests finished) drains mirrored shadow
requests, stops the engines and closes the audit log with every row written. /ready answers
503 while the server drains, a model is not loaded or the audit log cannot write. The
OpenAPI document (/openapi.json) lists each route's error statuses in the OpenAI shape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from lmforge.serve import errors
from lmforge.serve import openai_schema as api
from lmforge.serve.audit import AuditLog
from lmforge.serve.auth import ApiKey, KeyStore
from lmforge.serve.config import ServeConfig
from lmforge.serve.errors import APIError, SafeJSONResponse, responses
from lmforge.serve.generation import Generation
from lmforge.serve.metrics import Metrics
from lmforge.serve.middleware import Accounting, AuditRecord
from lmforge.serve.ratelimit import RateLimited, RateLimiter, TokenBudget
from lmforge.serve.variants import Registry


@dataclass
class ServerState:
    cfg: ServeConfig
    metrics: Metrics
    registry: Registry
    keys: KeyStore | None
    audit: AuditLog | None
    limiter: RateLimiter
    generation: Generation
    draining: bool = False


@dataclass
class Caller:
    key: ApiKey | None
    who: str  # the rate-limited identity: key id, else client address


def build_app(cfg: ServeConfig) -> FastAPI:
    metrics = Metrics()
    registry = Registry(cfg.models, cfg.engine, cfg.fallback, metrics)
    registry.load()
    keys = KeyStore(cfg.auth_db) if cfg.auth_db is not None else None
    audit = _audit_log(cfg, metrics) if cfg.audit.enabled else None
    state = ServerState(cfg, metrics, registry, keys, audit, RateLimiter(),
                        Generation(cfg, registry, metrics, audit))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.draining = True
        await state.generation.drain_shadows(cfg.shutdown_timeout_s)
        await asyncio.to_thread(registry.stop, cfg.shutdown_timeout_s)
        if audit is not None:
            await asyncio.to_thread(audit.close, cfg.shutdown_timeout_s)
        if keys is not None:
            keys.close()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None,
                  default_response_class=SafeJSONResponse)
    app.state.lmforge = state
    errors.install(app)
    app.add_middleware(Accounting, metrics=metrics, audit=audit,
                       max_body_bytes=cfg.limits.max_body_bytes)
    _routes(app, state)
    from lmforge.serve.admin import admin_router

    app.include_router(admin_router(state, authorize))
    return app


def _audit_log(cfg: ServeConfig, metrics: Metrics) -> AuditLog:
    redactor = None
    if cfg.audit.redact_prompts:
        from lmforge.text.pii import PIIRedactor

        redactor = PIIRedactor()
    return AuditLog(cfg.audit_path(), cfg.audit.retention_days, redactor, metrics)


def authorize(action: str):
    """A dependency: the caller's key (401 without a valid one, 403 for the wrong role)
    after its rate limit (429). With access control off every caller may do everything."""

    async def dependency(request: Request) -> Caller:
        state: ServerState = request.app.state.lmforge
        record: AuditRecord = request.scope["lmforge.audit"]
        key = None
        if state.keys is not None:
            header = request.headers.get("authorization", "")
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise APIError(401, "missing API key; send the header 'Authorization: Bearer "
                               "<key>' (keys come from `lmforge keys create`)", "invalid_api_key")
            key = state.keys.verify(secret.strip())
            if key is None:
                raise APIError(401, "invalid or revoked API key", "invalid_api_key")
            record.key_id = key.id
            if not key.allows(action):
                raise APIError(403, f"a {key.role} key may not use {action}; ask an admin "
                               "for a key with a broader role", "forbidden")
        limits = state.cfg.limits
        rpm = key.requests_per_minute if key and key.requests_per_minute else \
            limits.requests_per_minute
        tpm = key.tokens_per_minute if key and key.tokens_per_minute else \
            limits.tokens_per_minute
        who = key.id if key is not None else record.client
        try:
            state.limiter.admit(who, rpm, tpm)
        except RateLimited as e:
            raise APIError(429, str(e), "rate_limit_exceeded",
                           retry_after=e.retry_after) from None
        request.state.budget = TokenBudget(state.limiter, who, tpm)
        return Caller(key, who)

    return dependency


GENERATION_ERRORS = responses(400, 401, 403, 404, 413, 429, 500, 503)
ModelsCaller = Annotated[Caller, Depends(authorize("models"))]
ChatCaller = Annotated[Caller, Depends(authorize("chat"))]
CompletionsCaller = Annotated[Caller, Depends(authorize("completions"))]


def _routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses=responses(503))
    async def ready() -> JSONResponse:
        reason = _not_ready(state)
        if reason is not None:
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready", "models": list(state.registry.groups)})

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text format"},
                        **responses(401, 403, 429)})
    async def metrics(request: Request) -> Response:
        if not state.cfg.metrics_public:
            await authorize("admin")(request)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models", responses=responses(401, 403, 429))
    async def list_models(_: ModelsCaller) -> dict:
        return {"object": "list", "data": [_card(g) for g in state.registry.groups.values()]}

    @app.get("/v1/models/{model:path}", responses=responses(401, 403, 404, 429))
    async def get_model(model: str, _: ModelsCaller) -> dict:
        group = state.registry.get(model)
        if group is None:
            raise APIError(404, f"the model {model!r} does not exist", "model_not_found",
                           "model")
        return _card(group)

    @app.post("/v1/completions", responses=GENERATION_ERRORS)
    async def completions(body: api.CompletionRequest, request: Request,
                          caller: CompletionsCaller):
        _check_logprobs(caller, body.logprobs is not None)
        return await state.generation.handle(body, request, _user(caller, body),
                                             request.state.budget)

    @app.post("/v1/feedback", responses=responses(400, 401, 403, 404, 429))
    async def feedback(body: api.FeedbackRequest, caller: ChatCaller) -> dict:
        return await _feedback(state, body, caller)

    @app.post("/v1/chat/completions", responses=GENERATION_ERRORS)
    async def chat_completions(body: api.ChatCompletionRequest, request: Request,
                               caller: ChatCaller):
        _check_logprobs(caller, body.logprobs)
        return await state.generation.handle(body, request, _user(caller, body),
                                             request.state.budget)


async def _feedback(state: ServerState, body: api.FeedbackRequest, caller: Caller) -> dict:
    """Record a score for an answered request; the request must be in the audit log."""
    if state.audit is None:
        raise APIError(404, "feedback is stored in the audit log, which is off on this server; "
                       "set serve.audit.enabled", "not_found")
    request_id = api.request_of(body.id)
    audit = state.audit

    def known() -> bool:
        if request_id is None:
            return False
        if audit.query("requests", limit=1, request_id=request_id):
            return True
        audit.flush(2.0)  # the row may still be queued for the writer
        return bool(audit.query("requests", limit=1, request_id=request_id))

    if not await asyncio.to_thread(known):
        raise APIError(404, f"no response {body.id!r} in the audit log; send the id of a "
                       "completion this server returned", "not_found", "id")
    audit.record_feedback({"request_id": request_id, "key_id": caller.key.id if caller.key
                           else None, "score": body.score, "comment": body.comment})
    return {"object": "feedback", "id": body.id, "recorded": True}


def _not_ready(state: ServerState) -> str | None:
    if state.draining:
        return "shutting down"
    if not state.registry.ready():
        return "a model is not loaded"
    if state.audit is not None and not state.audit.healthy:
        return "the audit log cannot write"
    return None


def _card(group) -> dict:
    primary = group.primary
    return api.model_card(group.name, primary.loaded_at, primary.engine.context, group.parent)


def _check_logprobs(caller: Caller, wanted: bool) -> None:
    if wanted and caller.key is not None and not caller.key.allows("logprobs"):
        raise APIError(403, f"a {caller.key.role} key may not request logprobs; ask an admin "
                       "for a developer key", "forbidden", "logprobs")


def _user(caller: Caller, body: api.CompletionRequest | api.ChatCompletionRequest) -> str:
    """Whom A/B routing sticks to: the key, else the request's `user`, else the address."""
    if caller.key is not None:
        return caller.key.id
    return body.user or caller.who
