"""The merchant dashboard's use cases: signing in with an API key (exchanged for a session
stored as a hash, ending when the key is revoked), the CSRF token of a session, and each page's
data, gathered from the same services the API uses (so a page and its endpoint agree)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app import scopes
from app.charts import daily_svg
from app.errors import InvalidInput, NotFound
from app.keyring import Keyring
from app.pipeline.redis_client import RedisClient
from app.services import intake, programs, review
from app.services import links as links_service
from app.services import payouts as payouts_service
from app.services import stats as stats_service
from app.services import webhooks as webhooks_service
from app.services.tx import transaction
from app.storage import dashboard as repo
from app.storage import stats as stats_repo
from app.storage.merchants import Merchant, merchant_for_api_key

SESSION_HOURS = 12


@dataclass(frozen=True, slots=True)
class Session:
    merchant: Merchant
    token: str

    @property
    def can_write(self) -> bool:
        """Whether the key may decide reviews and pay out (a read-only key sees no buttons)."""
        return scopes.grants(self.merchant.scopes, "rewards:write")


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def csrf_token(keyring: Keyring, session_token: str) -> str:
    """Bound to the session (a form from another session, or none, is refused)."""
    _, mac = keyring.sign(b"csrf:" + session_token.encode())
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_ok(keyring: Keyring, session_token: str, given: str) -> bool:
    return hmac.compare_digest(csrf_token(keyring, session_token).encode(), given.encode())


async def sign_in(pool: asyncpg.Pool, api_key: str, now: datetime) -> str | None:
    """A session token for a live API key (None: not one)."""
    merchant = await merchant_for_api_key(pool, api_key.strip()) if api_key else None
    if merchant is None or merchant.key_id is None:
        return None
    token = "ds_" + secrets.token_urlsafe(32)
    async with transaction(pool) as conn:
        await repo.insert_session(conn, _hash(token), merchant.id, merchant.key_id,
                                  now + timedelta(hours=SESSION_HOURS))  # fmt: skip
    return token


async def session_of(pool: asyncpg.Pool, token: str | None, now: datetime) -> Session | None:
    if not token:
        return None
    row = await repo.session(pool, _hash(token), now)
    if row is None:
        return None
    return Session(Merchant(row["merchant_id"], row["name"], row["key_id"],
                            tuple(row["scopes"])), token)  # fmt: skip


async def sign_out(pool: asyncpg.Pool, token: str) -> None:
    async with transaction(pool) as conn:
        await repo.end_session(conn, _hash(token))


# -- Pages ---------------------------------------------------------------------------------------


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "—"


async def program_page(
    pool: asyncpg.Pool, redis: RedisClient, merchant: UUID, program: UUID, today: date,
    start: date | None = None, end: date | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The funnel (all time), and for the chosen period (default: the last 30 days) its
    totals, the daily chart and the breakdown by channel."""
    found = await programs.get_program(pool, merchant, program)  # the page's one tenancy check
    try:
        start, end = stats_service.period(start, end, today)
    except InvalidInput:  # a period backwards or too long: the default one
        start, end = stats_service.period(None, None, today)
    funnel = await stats_repo.program_funnel(pool, redis, merchant, program)
    days = await stats_repo.program_daily(pool, merchant, program, start, end)
    channels = await stats_repo.program_channels(pool, merchant, program, start, end)
    period = {name: sum(d[name] for d in days) for name in ("clicks", "signups", "purchases")}
    steps = [("Clicks", funnel["clicks"]), ("Unique visitors", funnel["unique_visitors"] or 0),
             ("Signups", funnel["signups"]), ("Purchases", funnel["purchases"])]  # fmt: skip
    # Visitors as a share of clicks; signups and purchases as a share of visitors (a purchase
    # needs no signup first, so "of the step before" would mislead).
    visitors = steps[1][1]
    rows = [(steps[0][0], steps[0][1], ""),
            (steps[1][0], visitors, _rate(visitors, steps[0][1]) + " of clicks"),
            *((name, value, _rate(value, visitors) + " of visitors")
              for name, value in steps[2:])]  # fmt: skip
    chart = daily_svg([d["day"] for d in days], [d["clicks"] for d in days],
                      [d["signups"] + d["purchases"] + d["renewals"] for d in days])  # fmt: skip
    return {"program": found, "funnel": funnel, "steps": rows, "chart": chart,
            "period": {**period, "start": start, "end": end,
                       "purchase_rate": _rate(period["purchases"], period["clicks"])},
            "channels": channels,
            "top": await repo.top_advocates(pool, merchant, program),
            "advocates": await repo.advocates_of(pool, merchant, program)}  # fmt: skip


async def advocate_page(pool: asyncpg.Pool, merchant: UUID, advocate: UUID) -> dict[str, Any]:
    found, links = await links_service.get_advocate(pool, merchant, advocate)
    funnel = await stats_repo.advocate_funnel(pool, merchant, advocate)
    return {"advocate": found, "links": links, "funnel": funnel,
            "conversions": await repo.advocate_conversions(pool, merchant, advocate)}  # fmt: skip


async def conversion_page(pool: asyncpg.Pool, redis: RedisClient, stream: str, merchant: UUID,
                          conversion: UUID) -> dict[str, Any]:  # fmt: skip
    found = await intake.read_conversion(pool, redis, stream, merchant, conversion)
    return {"conversion": dict(found)}


async def review_page(pool: asyncpg.Pool, merchant: UUID) -> dict[str, Any]:
    page = await review.list_items(pool, merchant, status="open", program=None, advocate=None,
                                   rule=None, cursor=None, limit=100)  # fmt: skip
    return {"items": page["items"]}


async def payouts_page(pool: asyncpg.Pool, merchant: UUID) -> dict[str, Any]:
    return {"batches": await payouts_service.list_batches(pool, merchant, 50)}


async def webhooks_page(pool: asyncpg.Pool, merchant: UUID) -> dict[str, Any]:
    endpoints = await webhooks_service.list_endpoints(pool, merchant)
    attempts = {e["id"]: await webhooks_service.deliveries(pool, merchant, e["id"], 20, None)
                for e in endpoints}  # fmt: skip
    return {"endpoints": endpoints, "attempts": attempts}


def not_found(what: str) -> NotFound:
    return NotFound(f"{what} not found", field="path")
