"""Link changes still to be written through to Redis: a transactional outbox.

A change (disable a link, new rules changing the cookie lifetime) commits in PostgreSQL together
with its outbox row; the write-through to Redis follows, and the row is deleted once Redis has it.
If Redis refused the write, the API's relay retries it every few seconds, so Redis can never keep
saying "active" about a disabled link after it recovers.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def queue(conn: asyncpg.Connection, codes: list[str]) -> datetime:
    """Queue the codes (in the caller's transaction); returns the queueing time."""
    queued_at: datetime = await conn.fetchval("SELECT clock_timestamp()")
    await conn.execute(
        "INSERT INTO link_outbox (code, queued_at) SELECT unnest($1::text[]), $2"
        " ON CONFLICT (code) DO UPDATE SET queued_at = excluded.queued_at",
        codes,
        queued_at,
    )
    return queued_at


async def pending(
    conn: asyncpg.Connection | asyncpg.Pool, limit: int
) -> list[tuple[str, datetime]]:
    rows = await conn.fetch(
        "SELECT code, queued_at FROM link_outbox ORDER BY queued_at LIMIT $1", limit
    )
    return [(r["code"], r["queued_at"]) for r in rows]


async def done(conn: asyncpg.Connection | asyncpg.Pool, code: str, queued_at: datetime) -> None:
    """Delete the row, unless the code was queued again meanwhile (that change still waits)."""
    await conn.execute(
        "DELETE FROM link_outbox WHERE code = $1 AND queued_at = $2", code, queued_at
    )
