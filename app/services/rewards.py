"""Moving rewards through the ledger on a schedule: approval once the hold is over.

Safe with any number of schedulers (replicas) and flushers at once: each batch locks its rewards
first, then reads their balances, so a pending amount is approved once, and an amount rejected
or reversed meanwhile is not approved at all.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.storage import rewards as rewards_repo

APPROVAL_BATCH = 500


async def approve_due(pool: asyncpg.Pool, now: datetime) -> int:
    """Approve every pending amount whose hold period has passed. Returns rewards approved."""
    approved = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            due = await rewards_repo.lock_due(conn, now, APPROVAL_BATCH)
            if due:
                approved += await rewards_repo.approve_pending(conn, due)
        if len(due) < APPROVAL_BATCH:
            return approved
