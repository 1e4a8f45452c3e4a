"""What PostgreSQL knows that points at an advocate: the owner of a typed referral code, the click
a click id names, every click of one browser. Read by conversion processing; plain SQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple
from uuid import UUID

import asyncpg

from app.attribution.model import Click, Referrer
from app.codes import normalize_referral_code
from app.pipeline.events import click_time
from app.storage.fraud import ClickDetails

# How far back a browser's clicks are looked up (the longest window a program may have).
LOOKBACK = timedelta(days=366)

_CLICK_COLUMNS = (
    "c.click_id, c.clicked_at, c.link_id, c.is_bot, c.visitor_id,"
    " a.id AS advocate_id, a.program_id, a.external_id, a.email_hash"
)


def _click(row: asyncpg.Record) -> Click:
    advocate = Referrer(
        row["advocate_id"], row["program_id"], row["external_id"], row["email_hash"]
    )
    return Click(row["click_id"], row["clicked_at"], row["link_id"], advocate, row["is_bot"])


async def advocate_by_code(conn: asyncpg.Connection, merchant: UUID, code: str) -> Referrer | None:
    row = await conn.fetchrow(
        "SELECT id, program_id, external_id, email_hash FROM advocates"
        " WHERE merchant_id = $1 AND referral_code = $2",
        merchant,
        normalize_referral_code(code),
    )
    if row is None:
        return None
    return Referrer(row["id"], row["program_id"], row["external_id"], row["email_hash"])


async def advocates_by_codes(
    conn: asyncpg.Connection, merchant: UUID, codes: list[str]
) -> dict[str, Referrer]:
    """The owners of the (normalized) codes that have one, by code."""
    rows = await conn.fetch(
        "SELECT referral_code, id, program_id, external_id, email_hash FROM advocates"
        " WHERE merchant_id = $1 AND referral_code = ANY($2::text[])",
        merchant,
        codes,
    )
    return {
        r["referral_code"]: Referrer(r["id"], r["program_id"], r["external_id"], r["email_hash"])
        for r in rows
    }


async def click_by_id(
    conn: asyncpg.Connection, merchant: UUID, click_id: str
) -> tuple[Click, UUID | None] | None:
    """The click and its browser (visitor id)."""
    row = await conn.fetchrow(
        f"SELECT {_CLICK_COLUMNS} FROM clicks c JOIN advocates a ON a.id = c.advocate_id"
        " WHERE c.merchant_id = $1 AND c.click_id = $2 AND c.clicked_at = $3",
        merchant,
        UUID(click_id),
        click_time(click_id),
    )
    return (_click(row), row["visitor_id"]) if row else None


class ClickFound(NamedTuple):
    """A click as attribution sees it, with what the fraud rules read of it."""

    click: Click
    details: ClickDetails


_DETAIL_COLUMNS = ", c.ip_hash, c.ip_prefix, c.user_agent, c.ad_click_param"


def _found(row: asyncpg.Record) -> ClickFound:
    details = ClickDetails(
        row["link_id"], row["clicked_at"], row["visitor_id"], row["ip_hash"], row["ip_prefix"],
        row["user_agent"], row["ad_click_param"],
    )  # fmt: skip
    return ClickFound(_click(row), details)


async def clicks_by_ids(
    conn: asyncpg.Connection, merchant: UUID, click_ids: list[str]
) -> dict[str, ClickFound]:
    """`click_by_id` of many (those found, by click id), with their details, in one query."""
    # Each click by its primary key, in its partition (OFFSET 0 keeps the lookup per id: joined
    # instead, PostgreSQL may read every click of the merchant to hash them).
    rows = await conn.fetch(
        f"SELECT {_CLICK_COLUMNS}{_DETAIL_COLUMNS}"
        " FROM unnest($2::uuid[], $3::timestamptz[]) AS t(click_id, clicked_at)"
        " CROSS JOIN LATERAL (SELECT * FROM clicks WHERE click_id = t.click_id"
        "  AND clicked_at = t.clicked_at OFFSET 0) AS c"
        " JOIN advocates a ON a.id = c.advocate_id"
        " WHERE c.merchant_id = $1",
        merchant, [UUID(c) for c in click_ids], [click_time(c) for c in click_ids],
    )  # fmt: skip
    return {r["click_id"].hex: _found(r) for r in rows}


async def browsers_clicks(
    conn: asyncpg.Connection, merchant: UUID, visitors: list[UUID], since: datetime
) -> dict[UUID, list[ClickFound]]:
    """`browser_clicks` of many browsers since one time, with their details, in one query: each
    browser's clicks in the order of their time."""
    rows = await conn.fetch(
        f"SELECT {_CLICK_COLUMNS}{_DETAIL_COLUMNS} FROM unnest($2::uuid[]) AS v(visitor_id)"
        " CROSS JOIN LATERAL (SELECT * FROM clicks WHERE visitor_id = v.visitor_id"
        "  AND clicked_at >= $3 OFFSET 0) AS c"  # on the browser's index, as `clicks_by_ids`
        " JOIN advocates a ON a.id = c.advocate_id"
        " WHERE c.merchant_id = $1 ORDER BY c.clicked_at, c.click_id",
        merchant, visitors, since,
    )  # fmt: skip
    out: dict[UUID, list[ClickFound]] = {v: [] for v in visitors}
    for r in rows:
        out[r["visitor_id"]].append(_found(r))
    return out


async def browser_clicks(
    conn: asyncpg.Connection, merchant: UUID, visitor: UUID, until: datetime
) -> tuple[Click, ...]:
    rows = await conn.fetch(
        f"SELECT {_CLICK_COLUMNS} FROM clicks c JOIN advocates a ON a.id = c.advocate_id"
        " WHERE c.merchant_id = $1 AND c.visitor_id = $2 AND c.clicked_at >= $3"
        " ORDER BY c.clicked_at, c.click_id",
        merchant,
        visitor,
        until - LOOKBACK,
    )
    return tuple(_click(r) for r in rows)
