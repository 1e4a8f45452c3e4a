"""The management API's dependencies, one `Annotated` alias per collaborator: the runtime's
pool, Redis, settings, buffers and caches (app/runtime.py), and the merchant of the API key.
The only place (with app/runtime.py) that knows where the application keeps its state."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app import audit, scopes
from app.errors import INVALID_KEY, MISSING_KEY, Forbidden, Unauthorized
from app.pipeline.event_buffer import EventBuffer
from app.pipeline.redis_client import RedisClient
from app.runtime import Runtime
from app.security import IpAnonymizer
from app.services.intake import SecretCache
from app.settings import Settings
from app.storage.merchants import Merchant, merchant_for_api_key

_bearer = HTTPBearer(auto_error=False, description="Your API key: `Authorization: Bearer rk_…`")


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker
# thread, and a thread hand-off per request cost more than the whole postback.
async def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


AppRuntime = Annotated[Runtime, Depends(_runtime)]


async def _pool(runtime: AppRuntime) -> asyncpg.Pool:
    return runtime.pool


async def _redis(runtime: AppRuntime) -> RedisClient:
    return runtime.redis


async def _settings(runtime: AppRuntime) -> Settings:
    return runtime.settings


async def _conversion_buffer(runtime: AppRuntime) -> EventBuffer:
    return runtime.conversion_buffer


async def _secrets(runtime: AppRuntime) -> SecretCache:
    return runtime.secrets


async def _anonymizer(runtime: AppRuntime) -> IpAnonymizer:
    return runtime.anonymize_ip


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
RedisConn = Annotated[RedisClient, Depends(_redis)]
AppSettings = Annotated[Settings, Depends(_settings)]
ConversionBuffer = Annotated[EventBuffer, Depends(_conversion_buffer)]
WebhookSecrets = Annotated[SecretCache, Depends(_secrets)]
Anonymizer = Annotated[IpAnonymizer, Depends(_anonymizer)]


async def _merchant(
    request: Request,
    pool: Pool,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Merchant:
    # Authenticated at the edge (app/edge.py), before the body was read.
    merchant: Merchant | None = getattr(request.state, "merchant", None)
    if merchant is None:
        if credentials is None:
            raise Unauthorized(MISSING_KEY, field="authorization")
        merchant = await merchant_for_api_key(pool, credentials.credentials)
        if merchant is None:
            raise Unauthorized(INVALID_KEY, field="authorization")
    # What this operation needs of the key (one table: app/scopes.py).
    route = request.scope.get("route")
    scope = scopes.needed(request.method, getattr(route, "path", request.url.path))
    if not scopes.grants(merchant.scopes, scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope", field="authorization")
    if request.method not in ("GET", "HEAD") and scope not in ("read", scopes.PUBLIC):
        # A management write: the first transaction it commits records it (app/audit.py).
        body = await request.body()
        operation = f"{request.method} {getattr(route, 'path', '?')}"
        audit.current.set(audit.AuditContext(
            merchant.id, merchant.key_id, operation,
            {k: str(v) for k, v in request.path_params.items()},
            audit.describe_body(body, request.headers.get("content-type", ""), operation),
        ))  # fmt: skip
    return merchant


CurrentMerchant = Annotated[Merchant, Depends(_merchant)]
