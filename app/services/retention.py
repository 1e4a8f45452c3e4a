"""Retention: clicks older than `CLICK_RETENTION_DAYS` keep what statistics and the ledger need
(link, advocate, program, time, browser pseudonym, bot and flood flags) and lose user agent,
referer and IP data (hash and prefix). A monthly partition is stripped once, when its whole month
is past the age; each in its own transaction, so a large one does not hold the others."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from app.services.tx import transaction
from app.storage import retention as repo


async def strip_old_clicks(pool: asyncpg.Pool, now: datetime, days: int) -> dict[str, int]:
    """Rows changed per partition stripped now (an empty dict: nothing was due)."""
    cutoff = now - timedelta(days=days)
    done: dict[str, int] = {}
    for name, end in await repo.monthly_partitions(pool):
        if end <= cutoff:
            async with transaction(pool) as conn:
                done[name] = await repo.strip_partition(conn, name)
    async with transaction(pool) as conn:
        stray = await repo.strip_default(conn, cutoff)
    if stray:
        done["clicks_default"] = stray
    return done
