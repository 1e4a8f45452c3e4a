"""Statistics for merchants and for advocates themselves (the queries: app/storage/stats.py),
and the advocate's own page, behind an opaque, revocable, expiring token."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app.attribution.payouts import format_amount
from app.errors import InvalidInput, NotFound, Unauthorized
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


def period(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """A chosen period of UTC days (by default the last 30), of at most 367 days."""
    end = end or today
    start = start or end - timedelta(days=29)
    if start > end:
        raise InvalidInput("start must not be after end", field="query.start")
    if (end - start).days > 366:
        raise InvalidInput("at most 367 days at a time", field="query.start")
    return start, end


async def program_daily(
    pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID, start: date | None,
    end: date | None, today: date,
) -> dict[str, Any]:  # fmt: skip
    """The program's days (the charts' series): by default the last 30."""
    start, end = period(start, end, today)
    await get_program(pool, merchant_id, program_id)
    days = await stats_repo.program_daily(pool, merchant_id, program_id, start, end)
    return {"start": start, "end": end, "days": days}


async def program_channels(
    pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID, start: date | None,
    end: date | None, today: date,
) -> dict[str, Any]:  # fmt: skip
    """The program's clicks and conversions by channel over a period (by default 30 days)."""
    start, end = period(start, end, today)
    await get_program(pool, merchant_id, program_id)
    channels = await stats_repo.program_channels(pool, merchant_id, program_id, start, end)
    return {"start": start, "end": end, "channels": channels}


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
    url = f"{settings.public_base_url.rstrip('/')}/advocate?token={new.token}"
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


async def _holder(pool: asyncpg.Pool, settings: Settings, token: str,
                  now: datetime) -> dict[str, Any]:  # fmt: skip
    try:
        token_hash = check_advocate_token(settings.keyring, token)
    except InvalidToken as exc:
        raise Unauthorized(f"invalid dashboard token: {exc}", field="query.token") from None
    holder = await tokens_repo.holder(pool, token_hash, now)
    if holder is None:
        raise Unauthorized("invalid dashboard token: expired, revoked or unknown",
                           field="query.token")  # fmt: skip
    return holder


async def _figures(pool: asyncpg.Pool, holder: dict[str, Any]) -> dict[str, Any]:
    """What the token's holder may see of their funnel: counts and their own rewards;
    friends' amounts only when the program shows them."""
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


async def own_stats(
    pool: asyncpg.Pool, settings: Settings, token: str, now: datetime
) -> dict[str, Any]:
    """The advocate's page as JSON (see `_figures`)."""
    return await _figures(pool, await _holder(pool, settings, token, now))


async def own_page(
    pool: asyncpg.Pool, settings: Settings, token: str, now: datetime
) -> dict[str, Any]:
    """What the advocate's own web page shows: their link and code, the share text, their
    friends' counts and their own rewards by state (amounts written in each currency's
    decimals). Nothing of any other advocate, and no customer's personal data."""
    holder = await _holder(pool, settings, token, now)
    figures = await _figures(pool, holder)
    links = await advocates_repo.active_links(pool, holder["merchant_id"], holder["advocate_id"])
    base = settings.public_base_url.rstrip("/")
    link_url = f"{base}/r/{links[0]}" if links else ""
    shown = ("pending", "approved", "paid", "reversed")
    balances = [
        (currency, [format_amount(states.get(s, 0), currency) for s in shown])
        for currency, states in sorted(figures["rewards_minor"].items())
    ]
    return {
        "program_name": holder["program_name"],
        "referral_code": holder["referral_code"],
        "link_url": link_url,
        "share_text": holder["share_text"].replace("{link}", link_url),
        "subject": f"{holder['program_name']}: a gift for you",
        "page": figures,
        "states": shown,
        "balances": balances,
        "expires_on": holder["expires_at"].date().isoformat(),
    }
