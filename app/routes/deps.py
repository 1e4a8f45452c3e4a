"""Shared dependencies of the management API: the pool, Redis, settings and the merchant."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized
from app.settings import Settings
from app.storage import redis_client
from app.storage.merchants import Merchant, merchant_for_api_key

_bearer = HTTPBearer(auto_error=False, description="Your API key: `Authorization: Bearer rk_…`")


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker
# thread, and a thread hand-off per request cost more than the whole postback.
async def _pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


async def _redis(request: Request) -> redis_client.RedisClient:
    return request.app.state.redis


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _merchant(
    request: Request,
    pool: Annotated[asyncpg.Pool, Depends(_pool)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Merchant:
    # Authenticated at the edge (app/edge.py), before the body was read.
    known: Merchant | None = getattr(request.state, "merchant", None)
    if known is not None:
        return known
    if credentials is None:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>'", field="authorization"
        )
    merchant = await merchant_for_api_key(pool, credentials.credentials)
    if merchant is None:
        raise Unauthorized("invalid or revoked API key", field="authorization")
    return merchant


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
RedisClient = Annotated[redis_client.RedisClient, Depends(_redis)]
AppSettings = Annotated[Settings, Depends(_settings)]
CurrentMerchant = Annotated[Merchant, Depends(_merchant)]
