"""Looking at and replaying dead letters: events the flusher set aside with their error.

Replaying puts the events back on their stream as they were; the flusher then stores them like
any other (each event's derived id makes a second replay harmless). Each row is marked replayed
only after Redis took it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from app.pipeline.events import EVENTS_FIELD
from app.pipeline.redis_client import RedisClient
from app.storage import dead_letters as dead_letters_repo
from app.storage.rows import DeadLetterRow


async def list_dead_letters(
    pool: asyncpg.Pool, stream: str | None = None, limit: int = 100
) -> list[DeadLetterRow]:
    return await dead_letters_repo.pending(pool, stream, limit)


async def replay_dead_letters(
    pool: asyncpg.Pool,
    redis: RedisClient,
    *,
    stream: str | None = None,
    ids: list[int] | None = None,
    limit: int = 1000,
) -> int:
    """Put pending dead letters (all of `stream`, or those named by `ids`) back on their
    streams. Returns the rows replayed."""
    rows = await dead_letters_repo.pending(pool, stream, limit)
    if ids is not None:
        rows = [r for r in rows if r["id"] in set(ids)]
    for row in rows:
        await redis.xadd(row["stream"], {EVENTS_FIELD: bytes(row["payload"])})
        await dead_letters_repo.mark_replayed(pool, [row["id"]], datetime.now(UTC))
    return len(rows)
