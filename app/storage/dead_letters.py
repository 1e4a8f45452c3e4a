"""Dead letters: events the flusher could not store, with the error, until a person replays them.

Only what is not transient ends here (a value PostgreSQL refuses, a bug); an outage, a deadlock
or a read-only failover is retried instead (`app.storage.db.is_transient`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import asyncpg
import orjson

from app.storage.rows import DeadLetterRow


async def add(conn: asyncpg.Connection, stream: str, events: list[Any], error: str) -> None:
    await conn.execute(
        "INSERT INTO dead_letters (stream, payload, events, error) VALUES ($1, $2, $3, $4)",
        stream,
        orjson.dumps(events, default=str),
        len(events),
        error[:4000],
    )


async def pending(
    conn: asyncpg.Connection | asyncpg.Pool, stream: str | None, limit: int
) -> list[DeadLetterRow]:
    rows = await conn.fetch(
        "SELECT id, stream, payload, events, error, created_at FROM dead_letters"
        " WHERE replayed_at IS NULL AND ($1::text IS NULL OR stream = $1) ORDER BY id LIMIT $2",
        stream,
        limit,
    )
    return [cast(DeadLetterRow, dict(r)) for r in rows]


async def mark_replayed(
    conn: asyncpg.Connection | asyncpg.Pool, ids: list[int], now: datetime
) -> None:
    await conn.execute(
        "UPDATE dead_letters SET replayed_at = $2 WHERE id = ANY($1::bigint[])", ids, now
    )
