"""The management API's front door, before FastAPI reads anything: body size, API key, limits.

FastAPI parses a request's body before it resolves dependencies, so an unauthenticated request
used to be read in full (8 MiB before a 401) and validated (a 422 instead of a 401). Here, as
plain ASGI in front of FastAPI:
1. a body larger than `MAX_BODY_BYTES` is refused with 413 — from its Content-Length before
   it is read, or as soon as a chunked body grows past it;
2. management requests (`/v1/…` with an API key) are authenticated from the header alone; the
   merchant is handed to the route in `request.state.merchant`. Unknown keys are remembered in
   a bounded negative cache, so repeating one costs no query;
3. rate limits (app/ratelimits.py): per API key, per merchant for pixels and providers'
   webhooks, per IP for pixels and for failed authentication; 429 with Retry-After and
   RateLimit-* headers.
The redirect (/r/…), the signed postback (POST /v1/conversions, app/routes/postback.py) and the
order pixel (GET /t/pixel.gif, app/routes/pixel.py, which calls `limit_pixel`) never come here:
they do the same checks themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from app.caches import TtlCache
from app.errors import (
    BACKEND_UNAVAILABLE,
    INVALID_KEY,
    MISSING_KEY,
    UNAVAILABLE_BODY,
    AppError,
    Unauthorized,
)
from app.ratelimits import RateLimits, Verdict
from app.security import bearer_matches, hash_api_key
from app.storage.merchants import Merchant, merchant_for_api_key

log = logging.getLogger(__name__)

# Paths under /v1/ that do not take an API key: the signed postback and the advocate's token.
_POSTBACK = "/v1/conversions"
_ADVOCATE_PREFIX = "/v1/advocate/"
_PIXEL = "/t/pixel.gif"
_UPLOADS = "/v1/reconciliation-reports"
# Payment providers' webhooks: /v1/integrations/{provider}/{merchant_id}/events, signed by the
# provider, limited per merchant like postbacks.
_PROVIDERS = "/v1/integrations/"


def _provider_merchant(path: str) -> UUID | bool | None:
    """The merchant of a provider webhook path, None for a malformed one, False when the path
    is not one."""
    parts = path.split("/")
    if len(parts) != 6 or not path.startswith(_PROVIDERS) or parts[5] != "events":
        return False
    return _uuid(parts[4])


# What only operators read: behind OPS_TOKEN when it is set (/readyz then answers its status
# alone to anyone else: load balancers need no token).
_OPS_PATHS = frozenset({"/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})


def _error(error: AppError) -> bytes:
    """The one error body of app/errors.py, encoded once: these answers are sent before
    FastAPI (and its handlers) are reached."""
    return orjson.dumps(error.body())


TOO_LARGE = _error(AppError("the request body is too large", field="body", code="body_too_large"))
_NO_KEY = _error(Unauthorized(MISSING_KEY, field="authorization"))
_BAD_KEY = _error(Unauthorized(INVALID_KEY, field="authorization"))
_OPS_KEY = _error(Unauthorized("the ops surface needs `Authorization: Bearer <OPS_TOKEN>`",
                               field="authorization"))  # fmt: skip
UNAVAILABLE = orjson.dumps(UNAVAILABLE_BODY)
TOO_MANY = _error(AppError("too many requests: slow down (see Retry-After)", code="rate_limited"))


class _RequestIds:
    """X-Request-Id values for requests that came without one: unique, 32 hex digits like a
    random UUID's, without a system call for randomness per request (a random prefix per
    process, drawn again in a forked child, then a counter)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex().encode()
        self._counter = itertools.count()

    def __call__(self) -> bytes:
        return b"%s%016x" % (self._prefix, next(self._counter))


new_request_id = _RequestIds()


class _BodyTooLarge(Exception):
    pass


@dataclass
class GuardRuntime:
    pool: asyncpg.Pool
    limits: RateLimits
    lookups: asyncio.Semaphore  # PostgreSQL lookups that untrusted input can cause, bounded
    trust_forwarded_for: bool
    ops_token: str | None = None  # when set, the ops surface asks for it (OPS_TOKEN)


class EdgeGuard:
    def __init__(self, app: Any, max_body_bytes: int, max_upload_bytes: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max(max_upload_bytes, max_body_bytes)
        self.runtime: GuardRuntime | None = None  # set by the lifespan
        # Unknown keys, remembered a minute: repeating one costs no query.
        self.unknown_keys: TtlCache[bytes, bool] = TtlCache(max_entries=50_000, ttl=60.0)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        runtime = self.runtime
        if scope["type"] != "http" or runtime is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path: str = scope["path"]
        # Uploads are larger; their body, like every other, is read only after the key is known.
        limit = self.max_upload_bytes if path == _UPLOADS else self.max_body_bytes
        if declared_too_large(headers, limit):
            await respond(send, 413, TOO_LARGE)
            return
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if (runtime.ops_token and path in _OPS_PATHS
                and not bearer_matches(authorization, runtime.ops_token)):  # fmt: skip
            await respond(send, 401, _OPS_KEY, [(b"www-authenticate", b"Bearer")])
            return
        ip = self._client_ip(scope, headers)
        verdict: Verdict | None = None
        if path.startswith("/v1/") or path == _PIXEL:
            if (refused := runtime.limits.blocked(ip)) is not None:
                await respond(send, 429, TOO_MANY, refused.headers())
                return
            provider_merchant = _provider_merchant(path) if scope["method"] == "POST" else False
            if path == _POSTBACK and scope["method"] == "POST":
                pass  # the postback endpoint (app/routes/postback.py) limits it with its batch
            elif provider_merchant is not False:
                if isinstance(provider_merchant, UUID):
                    verdict = await runtime.limits.hit(runtime.limits.postbacks, "postbacks",
                                                       str(provider_merchant))  # fmt: skip
            elif path == _PIXEL:
                verdict = await limit_pixel(runtime.limits, scope, ip)
            elif not path.startswith(_ADVOCATE_PREFIX):
                outcome = await self._authenticate(runtime, headers, ip)
                if outcome is UNAVAILABLE:
                    await respond(send, 503, outcome, [(b"retry-after", b"2")])
                    return
                if isinstance(outcome, bytes):
                    await respond(send, 401, outcome, [(b"www-authenticate", b"Bearer")])
                    return
                merchant, key_hash = outcome
                scope.setdefault("state", {})["merchant"] = merchant
                verdict = await runtime.limits.hit(runtime.limits.api_key, "key", key_hash.hex())
            if verdict is not None and not verdict.allowed:
                await respond(send, 429, TOO_MANY, verdict.headers())
                return
        await self._forward(scope, receive, send, runtime, ip, verdict, limit)

    async def _forward(
        self, scope: dict[str, Any], receive: Any, send: Any, runtime: GuardRuntime, ip: str,
        verdict: Verdict | None, limit: int,
    ) -> None:  # fmt: skip
        received = 0
        overflowed = False
        status = 0

        async def bounded_receive() -> Any:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    raise _BodyTooLarge
            return message

        async def observed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if overflowed:
                # FastAPI turns any error while reading the body into its own 400: answer
                # 413 in its place, once.
                if message["type"] == "http.response.start":
                    status = 413
                    await respond(send, 413, TOO_LARGE)
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                if verdict is not None and verdict.limit:
                    message["headers"] = [*message.get("headers", []), *verdict.headers()]
            await send(message)

        try:
            await self.app(scope, bounded_receive, observed_send)
        except _BodyTooLarge:
            if status:
                return
            await respond(send, 413, TOO_LARGE)
            return
        if status == 401:
            # A bad signature, an unknown merchant, a bad advocate token: guessing is limited.
            await runtime.limits.failed_authentication(ip)

    async def _authenticate(
        self, runtime: GuardRuntime, headers: dict[bytes, bytes], ip: str
    ) -> tuple[Merchant, bytes] | bytes:
        """(merchant, key hash) of the request's API key, or the 401 body."""
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _NO_KEY
        key_hash = hash_api_key(token)
        if key_hash in self.unknown_keys:
            await runtime.limits.failed_authentication(ip)
            return _BAD_KEY
        async with runtime.lookups:
            try:
                merchant = await merchant_for_api_key(runtime.pool, token)
            except BACKEND_UNAVAILABLE:
                log.exception("api key lookup failed")
                return UNAVAILABLE
        if merchant is None:
            self.unknown_keys.put(key_hash, True)
            await runtime.limits.failed_authentication(ip)
            return _BAD_KEY
        return merchant, key_hash

    def _client_ip(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> str:
        runtime = self.runtime
        return client_ip(scope, headers, runtime is not None and runtime.trust_forwarded_for)


async def limit_pixel(limits: RateLimits, scope: dict[str, Any], ip: str) -> Verdict:
    """The pixel's limits: per IP, then per merchant (named by the `m` parameter)."""
    per_ip = await limits.hit(limits.pixels_per_ip, "pixels-ip", ip)
    if not per_ip.allowed:
        return per_ip
    query = scope.get("query_string", b"").decode("latin-1")
    merchant = next((_uuid(p[2:]) for p in query.split("&") if p.startswith("m=")), None)
    if merchant is None:
        return per_ip
    return await limits.hit(limits.pixels_per_merchant, "pixels", str(merchant))


def client_ip(scope: dict[str, Any], headers: dict[bytes, bytes], trust_forwarded_for: bool) -> str:
    """The client's address: the last X-Forwarded-For hop when the proxy in front is trusted."""
    forwarded = headers.get(b"x-forwarded-for")
    if forwarded and trust_forwarded_for:
        return forwarded.decode("latin-1").rsplit(",", 1)[-1].strip()[:64]
    client = scope.get("client")
    return str(client[0]) if client else ""


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def declared_too_large(headers: dict[bytes, bytes], limit: int) -> bool:
    """Refused before it is read: a Content-Length over `limit`, or not a number. (A chunked
    body is bounded as it is read.)"""
    length = headers.get(b"content-length", b"0")
    return not length.isdigit() or int(length) > limit


def failure(exc: Exception, extra: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """The hot-path endpoints' answer to an AppError (its status, body and headers, as
    FastAPI's handler gives them) or to a backend that is down (503, Retry-After); `extra`
    receives the headers."""
    if isinstance(exc, AppError):
        extra += [(k.lower().encode(), v.encode()) for k, v in (exc.headers() or {}).items()]
        return exc.status_code, orjson.dumps(exc.body())
    log.error("dependency unavailable", extra={"error": repr(exc)})
    extra.append((b"retry-after", b"2"))
    return 503, UNAVAILABLE


async def respond(
    send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:  # fmt: skip
    """A whole answer in two ASGI messages: the edge's, and the hot paths' own."""
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
