"""The event log in SQL: announcing (the `announce` function writes the event and its
deliveries), reading the feed, and expiring old events."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson


async def announce(conn: asyncpg.Connection, merchant: UUID, event_type: str,
                   data: dict[str, Any]) -> int:  # fmt: skip
    seq: int = await conn.fetchval(
        "SELECT announce($1, $2, $3::jsonb)",
        merchant, event_type, orjson.dumps(data, default=str).decode(),
    )  # fmt: skip
    return seq


async def announce_by_statement(conn: asyncpg.Connection) -> None:
    """Until `announce_written`, the rows this transaction writes to conversions and to the
    ledger are not announced by their triggers: the caller announces them itself, in a
    statement for many (migration 0018)."""
    await conn.execute("SELECT set_config('referral.announce', 'by_statement', true)")


async def announce_written(
    conn: asyncpg.Connection, conversions: list[UUID], rewards: list[UUID]
) -> None:
    """Announce these conversions, then these rewards' creation (their first ledger entries),
    as their triggers would, in one statement each; rows written after this are announced by
    their triggers again."""
    await conn.execute("SELECT announce_conversions($1::uuid[])", conversions)
    await conn.execute(
        "SELECT announce_reward_entries(ARRAY(SELECT id FROM reward_entries"
        "  WHERE reward_id = ANY($1::uuid[]) AND from_state IS NULL ORDER BY id)),"
        " set_config('referral.announce', '', true)",
        rewards,
    )


async def announce_to(conn: asyncpg.Connection, merchant: UUID, endpoint: UUID, event_type: str,
                      data: dict[str, Any]) -> int:  # fmt: skip
    """An event for one endpoint only (a test event): logged, delivered there alone."""
    seq: int = await conn.fetchval(
        "WITH e AS (INSERT INTO events (merchant_id, type, data) VALUES ($1, $3, $4::jsonb)"
        "  RETURNING seq)"
        " INSERT INTO webhook_deliveries (merchant_id, endpoint_id, event_seq)"
        " SELECT $1, $2, seq FROM e RETURNING event_seq",
        merchant, endpoint, event_type, orjson.dumps(data, default=str).decode(),
    )  # fmt: skip
    return seq


async def feed(
    db: asyncpg.Pool, merchant: UUID, after: int, types: list[str] | None, limit: int
) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT seq, id, type, data, created_at FROM events WHERE merchant_id = $1 AND seq > $2"
        " AND ($3::text[] IS NULL OR type = ANY($3)) ORDER BY seq LIMIT $4",
        merchant, after, types, limit,
    )  # fmt: skip
    return [{**dict(r), "data": orjson.loads(r["data"])} for r in rows]


async def expire(conn: asyncpg.Connection, before: datetime) -> int:
    """Events older than the feed keeps, with their deliveries and attempts (cascade)."""
    status = await conn.execute("DELETE FROM events WHERE created_at < $1", before)
    return int(status.split()[-1])
