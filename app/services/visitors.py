"""Rebuilding the programs' unique-visitor HyperLogLogs from the clicks in PostgreSQL (after
Redis lost them): `referral rebuild-visitor-counts`. The counting itself: app/storage/visitors.py.
"""

from __future__ import annotations

import asyncpg

from app.pipeline import keys
from app.pipeline.redis_client import RedisClient
from app.services.tx import transaction


async def rebuild_visitor_counts(
    pool: asyncpg.Pool, redis: RedisClient, chunk: int = 50_000
) -> int:
    """Recompute every program's HyperLogLog from the stored human clicks; returns the programs.

    Runs beside live flushers safely: what they add meanwhile is added to the new key as well.
    """
    programs = [r["id"] for r in await pool.fetch("SELECT id FROM programs")]
    for program_id in programs:
        await redis.delete(keys.program_visitors(program_id))
        async with transaction(pool) as conn:
            cursor = conn.cursor(
                "SELECT DISTINCT replace(visitor_id::text, '-', '') AS v FROM clicks"
                " WHERE program_id = $1 AND NOT is_bot AND visitor_id IS NOT NULL",
                program_id,
            )
            ids: list[str] = []
            async for row in cursor:
                ids.append(row["v"])
                if len(ids) >= chunk:
                    await redis.pfadd(keys.program_visitors(program_id), *ids)
                    ids.clear()
            if ids:
                await redis.pfadd(keys.program_visitors(program_id), *ids)
    return len(programs)
