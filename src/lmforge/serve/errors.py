"""Every error the server returns has the OpenAI shape, so SDKs raise their proper classes:

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": null}}

400 bad request (bad JSON, a bad field, a prompt too long), 401 missing or bad key, 403 role
not allowed, 404 unknown model or route, 408 request not received in time, 413 body too
large, 429 rate limited (Retry-After), 499 client went away, 500 generation failed, 503
overloaded or shutting down (Retry-After).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lmforge.serve")

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error", 408: "invalid_request_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
         499: "invalid_request_error", 500: "server_error", 503: "server_error"}
MEANINGS = {400: "bad JSON, a bad field, a prompt too long or refused by a filter",
            401: "no API key, or not a valid one", 403: "the key's role may not do this",
            404: "no such model, key or route", 413: "the request body is too large",
            429: "rate limited; Retry-After says when to retry",
            500: "generation failed", 503: "overloaded or shutting down; Retry-After"}


class SafeJSONResponse(JSONResponse):
    """JSON that any text survives: a lone surrogate, which UTF-8 cannot encode, goes out
    as its backslash escape (\\ud800) instead of failing the response."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False,
                              separators=(",", ":")).encode("ascii")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the error statuses a route answers."""
    return {status: {"model": ErrorBody, "description": MEANINGS[status]}
            for status in statuses}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after + 0.999)))
        return SafeJSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(status: int, message: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """One line naming the first bad field (or saying the JSON is broken)."""
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({detail})", None
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]  # where the field was sent: the field's name is what a client needs
    if not loc and first.get("type") in ("model_attributes_type", "dict_type"):
        return "the request body must be a JSON object (Content-Type: application/json)", None
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field; remove it (see the OpenAI API reference for this route)"
    if first.get("type") == "missing":
        message = "field required"
    return (f"{param}: {message}" if param else message), param


def install(app: FastAPI) -> None:
    """Map every exception FastAPI can raise to the OpenAI error shape, and keep FastAPI's
    422 out of the OpenAPI document (a bad request is a 400 here)."""
    openapi = app.openapi

    def openapi_without_422() -> dict[str, Any]:
        spec = openapi()
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            spec.get("components", {}).get("schemas", {}).pop(name, None)
        return spec

    app.openapi = openapi_without_422

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return APIError(400, message, "invalid_value" if param else "invalid_json",
                        param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code).response()

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(500, f"internal error: {type(exc).__name__}", "internal_error").response()
