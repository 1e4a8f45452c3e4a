"""Statistics for merchants and for advocates themselves (the queries: app/storage/stats.py),
and the advocate's signed, expiring dashboard link."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app.errors import Unauthorized
from app.pipeline.redis_client import RedisClient
from app.security import InvalidToken, advocate_token, read_advocate_token
from app.services.programs import get_program
from app.services.tenancy import found
from app.services.tx import transaction
from app.settings import Settings
from app.storage import advocates as advocates_repo
from app.storage import stats as stats_repo
from app.storage.rows import AdvocateRow


async def _advocate(
    pool: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID, advocate_id: UUID
) -> AdvocateRow:
    advocate = await advocates_repo.get_advocate(pool, merchant_id, advocate_id)
    return found(advocate, "advocate", "advocate_id")


async def program_stats(
    pool: asyncpg.Pool, redis: RedisClient, merchant_id: UUID, program_id: UUID
) -> dict[str, Any]:
    await get_program(pool, merchant_id, program_id)
    return await stats_repo.program_funnel(pool, redis, merchant_id, program_id)


async def advocate_stats(
    pool: asyncpg.Pool, merchant_id: UUID, advocate_id: UUID
) -> dict[str, Any]:
    await _advocate(pool, merchant_id, advocate_id)
    return await stats_repo.advocate_funnel(pool, merchant_id, advocate_id)


async def dashboard_token(
    pool: asyncpg.Pool, settings: Settings, merchant_id: UUID, advocate_id: UUID, days: int,
    now: datetime,
) -> dict[str, Any]:  # fmt: skip
    """A link to hand to the advocate: it shows their own statistics only, until it expires."""
    async with transaction(pool) as conn:  # the token is stateless; its issue is recorded
        await _advocate(conn, merchant_id, advocate_id)
    expires = now + timedelta(days=days)
    token = advocate_token(settings.secret_bytes, merchant_id, advocate_id, expires)
    url = f"{settings.public_base_url.rstrip('/')}/v1/advocate/stats?token={token}"
    return {"token": token, "expires_at": expires, "url": url}


async def own_stats(
    pool: asyncpg.Pool, settings: Settings, token: str, now: datetime
) -> dict[str, Any]:
    try:
        merchant_id, advocate_id = read_advocate_token(settings.secret_bytes, token, now)
    except InvalidToken as exc:
        raise Unauthorized(f"invalid dashboard token: {exc}", field="query.token") from None
    return await stats_repo.advocate_funnel(pool, merchant_id, advocate_id)
