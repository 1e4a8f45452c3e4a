"""One error type for the whole service and the handlers that turn errors into JSON.

Every error body has the same shape: {"error": {"code", "message", "field"}}; validation errors
also list every failing field under "errors".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.pipeline.redis_client import REDIS_UNAVAILABLE

log = logging.getLogger(__name__)


# What "a backing service (PostgreSQL, Redis) is unavailable" looks like: answered 503.
BACKEND_UNAVAILABLE: tuple[type[Exception], ...] = (
    *REDIS_UNAVAILABLE,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)
UNAVAILABLE_BODY = {
    "error": {
        "code": "unavailable",
        "message": "a backing service is unavailable, retry shortly",
        "field": None,
    }
}


# The answers to a request without a usable API key (the edge's and the dependency's).
MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"
INVALID_KEY = "invalid or revoked API key"


class AppError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}

    def headers(self) -> dict[str, str] | None:
        if self.status_code == 401:
            return {"WWW-Authenticate": "Bearer"}
        if self.status_code == 503:
            return {"Retry-After": "2"}
        return None


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "insufficient_scope"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class Unavailable(AppError):
    """A promise we cannot make now (the event could not be made durable): retry shortly."""

    status_code = 503
    code = "unavailable"


class InvalidInput(AppError):
    status_code = 422
    code = "validation_error"


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self._headers = headers

    def headers(self) -> dict[str, str] | None:
        return self._headers


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def validation_body(errors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The 422 body for pydantic's errors (their `loc` already starting with body/query/…)."""
    fields = [
        {"field": _field_path(e["loc"]), "message": e["msg"], "type": e["type"]} for e in errors
    ]
    first = fields[0] if fields else {"field": None, "message": "invalid request"}
    return {
        "error": {
            "code": "validation_error",
            "message": f"{first['field']}: {first['message']}",
            "field": first["field"],
        },
        "errors": fields,
    }


class InvalidFields(InvalidInput):
    """Invalid input as pydantic reports it: the first failing field, and all of them."""

    def __init__(self, errors: Sequence[Mapping[str, Any]]) -> None:
        self._body = validation_body(errors)
        super().__init__(self._body["error"]["message"], field=self._body["error"]["field"])

    def body(self) -> dict[str, Any]:
        return self._body

    @classmethod
    def of(cls, exc: ValidationError, location: str) -> InvalidFields:
        """pydantic's errors for what was read from `location` ("body", "query"), named as
        FastAPI names them."""
        return cls([{**e, "loc": (location, *e["loc"])} for e in exc.errors(include_url=False)])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(exc.errors()), status_code=422)

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.error("dependency unavailable", extra={"error": repr(exc)})
        return JSONResponse(UNAVAILABLE_BODY, status_code=503, headers={"Retry-After": "2"})

    for exc_type in BACKEND_UNAVAILABLE:
        app.add_exception_handler(exc_type, unavailable)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8, not JSON): a 422 like any
            # other invalid input, naming the body.
            message = "the body is not valid JSON in UTF-8"
            body = {"error": {"code": "validation_error", "message": message, "field": "body"}}
            return JSONResponse(body, status_code=422)
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        headers: Mapping[str, str] | None = exc.headers
        if exc.status_code == 405:
            headers = {"Allow": _allowed_methods(app, request.scope)}
        error: dict[str, Any] = {"code": code, "message": str(exc.detail), "field": None}
        return JSONResponse(
            {"error": error}, status_code=exc.status_code, headers=dict(headers or {})
        )


def _allowed_methods(app: FastAPI, scope: MutableMapping[str, Any]) -> str:
    """Every method of every route on this path (one route per method here, and Starlette's
    own Allow names only the first route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))
