"""Statistics for merchants and for advocates themselves (the queries: app/storage/stats.py),
and the advocate's own page, behind an opaque, revocable, expiring token."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app.errors import NotFound, Unauthorized
from app.pipeline.redis_client import RedisClient
from app.security import InvalidToken, check_advocate_token, new_advocate_token
from app.services.programs import get_program
from app.services.tenancy import found
from app.services.tx import transaction
from app.settings import Settings
from app.storage import advocate_tokens as tokens_repo
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
    """A link to hand to the advocate: it shows their own page only, until it expires or is
    revoked. The token is shown once; only its hash is kept."""
    new = new_advocate_token(settings.keyring)
    async with transaction(pool) as conn:
        await _advocate(conn, merchant_id, advocate_id)
        row = await tokens_repo.insert_token(conn, merchant_id, advocate_id, new.hash,
                                             now + timedelta(days=days))  # fmt: skip
    url = f"{settings.public_base_url.rstrip('/')}/v1/advocate/stats?token={new.token}"
    return {**row, "token": new.token, "url": url}


async def list_dashboard_tokens(
    pool: asyncpg.Pool, merchant_id: UUID, advocate_id: UUID
) -> list[dict[str, Any]]:
    await _advocate(pool, merchant_id, advocate_id)
    return await tokens_repo.list_tokens(pool, merchant_id, advocate_id)


async def revoke_dashboard_token(
    pool: asyncpg.Pool, merchant_id: UUID, advocate_id: UUID, token_id: UUID
) -> None:
    """The token stops working at once (every replica reads it from PostgreSQL). Idempotent."""
    async with transaction(pool) as conn:
        if not await tokens_repo.revoke_token(conn, merchant_id, advocate_id, token_id):
            raise NotFound("dashboard token not found", field="token_id")


async def own_stats(
    pool: asyncpg.Pool, settings: Settings, token: str, now: datetime
) -> dict[str, Any]:
    """The advocate's page: counts and their own rewards; friends' amounts only when the
    program shows them."""
    try:
        token_hash = check_advocate_token(settings.keyring, token)
    except InvalidToken as exc:
        raise Unauthorized(f"invalid dashboard token: {exc}", field="query.token") from None
    holder = await tokens_repo.holder(pool, token_hash, now)
    if holder is None:
        raise Unauthorized("invalid dashboard token: expired, revoked or unknown",
                           field="query.token")  # fmt: skip
    page = await stats_repo.advocate_page(pool, holder["merchant_id"], holder["advocate_id"])
    shown = holder["advocate_sees_amounts"]
    return {
        "clicks": page["clicks"],
        "unique_visitors": page["unique_visitors"],
        "signups": page["signups"],
        "purchases": page["purchases"],
        "renewals": page["renewals"],
        "refunds": page["refunds"],
        "rewards_minor": page["rewards_minor"],
        "revenue_minor": page["revenue_minor"] if shown else None,
        "friend_rewards_minor": page["friend_rewards_minor"] if shown else None,
    }
