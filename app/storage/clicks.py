"""The click log in PostgreSQL: batched, idempotent writes and simple reads."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from app.attribution.bots import bot_reason
from app.events import (
    CLICK_ID,
    IP_HASH,
    IP_PREFIX,
    LINK_ID,
    METHOD,
    PURPOSE,
    REFERER,
    USER_AGENT,
    VISITOR_ID,
    ClickRow,
    click_time,
)

STREAM_KIND = "clicks"

_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS click_staging (
    click_id uuid, clicked_at timestamptz, link_id uuid, visitor_id uuid, ip_hash bytea,
    ip_prefix text, user_agent text, referer text, method text, is_bot boolean, bot_reason text
) ON COMMIT DELETE ROWS
"""

# Merchant, program and advocate come from the link, so the redirect never needs to know them.
# A click delivered twice hits the primary key and is skipped.
_INSERT_FROM_STAGING = """
INSERT INTO clicks (click_id, clicked_at, link_id, merchant_id, program_id, advocate_id,
                    visitor_id, ip_hash, ip_prefix, user_agent, referer, method, is_bot, bot_reason)
SELECT s.click_id, s.clicked_at, s.link_id, l.merchant_id, l.program_id, l.advocate_id,
       s.visitor_id, s.ip_hash, s.ip_prefix, s.user_agent, s.referer, s.method, s.is_bot,
       s.bot_reason
FROM click_staging s JOIN links l ON l.id = s.link_id
ON CONFLICT DO NOTHING
"""


def click_row(event: list[Any]) -> ClickRow:
    """Turn one encoded click (see app.events) into the row to store, classifying bots here,
    off the hot path."""
    method = "HEAD" if event[METHOD] == "H" else "GET"
    reason = bot_reason(event[USER_AGENT], event[PURPOSE], method)
    ip_hash = event[IP_HASH]
    return ClickRow(
        click_id=event[CLICK_ID],
        clicked_at=click_time(event[CLICK_ID]),
        link_id=event[LINK_ID],
        visitor_id=event[VISITOR_ID],
        ip_hash=bytes.fromhex(ip_hash) if ip_hash else None,
        ip_prefix=event[IP_PREFIX],
        user_agent=event[USER_AGENT],
        referer=event[REFERER],
        method=method,
        is_bot=reason is not None,
        bot_reason=reason,
    )


async def prepare_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_STAGING_DDL)


async def store_clicks(conn: asyncpg.Connection, events: list[list[Any]]) -> int:
    """Store a batch of encoded clicks in one transaction. Returns how many were new."""
    rows = [click_row(e) for e in events]
    async with conn.transaction():
        await conn.copy_records_to_table("click_staging", records=rows, columns=ClickRow._fields)
        status = await conn.execute(_INSERT_FROM_STAGING)
    return int(status.rsplit(" ", 1)[-1])


async def ensure_partitions(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT ensure_click_partitions(now() - interval '1 month', 4)")


async def count_link_clicks(pool: asyncpg.Pool, merchant_id: UUID, link_id: UUID) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE NOT is_bot) AS human, count(*) FILTER (WHERE is_bot) AS bot"
        " FROM clicks WHERE merchant_id = $1 AND link_id = $2",
        merchant_id,
        link_id,
    )
    return {"human": row["human"], "bot": row["bot"]}
